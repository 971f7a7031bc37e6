"""The description saved with a run (``config.json``'s ``description``), built from the effective
config, after every override.

A preset's description states what its own settings do ("GD lr 0.1: ... 2/lr = 20"). It is kept
only while the run follows the preset's trajectory: a changed budget, probe or stopping rule
keeps it, a changed rule, problem, process, seed or dtype replaces it by the changes and the
effective config in words (`eoslab.report.run_info.describe_config`). A description the user
gave (``--description``) is theirs and kept as given.
"""

from __future__ import annotations

from typing import Any

from ..dynamics.rules import Rule
from ..report.run_info import describe_config
from .config import Experiment, to_dict

__all__ = ["SAME_TRAJECTORY", "changed_fields", "saved_description"]

SAME_TRAJECTORY = (
    "steps",
    "probe_every",
    "log_every",
    "flush_seconds",
    "accuracy",
    "probes",
    "stop",
    "description",
)
"""Fields that change how long a run lasts or what is measured, never the points it visits."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_fields(base: Experiment, exp: Experiment) -> dict[str, tuple[Any, Any]]:
    """The fields of ``exp`` that differ from ``base``, by dotted name (``rule.lr``): ``(base's
    value, exp's value)``; a field one of them lacks is None there. What a rule records beside
    its fields (its name and threshold, `Rule.derived_keys`) follows from them: not a field."""
    derived = {f"rule.{k}" for k in Rule.derived_keys}
    a, b = _flat(to_dict(base)), _flat(to_dict(exp))
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in derived]
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else "null" if v is None else str(v)


def saved_description(exp: Experiment, base: Experiment, source: str) -> str:
    """The description to save with ``exp``, made from ``base`` (a preset, or a config file)
    named ``source`` (``"preset eos-gd"``) by overrides.

    - ``exp.description`` differs from ``base``'s: the user's own note, kept.
    - only fields of `SAME_TRAJECTORY` changed: ``base.description``.
    - otherwise: ``"{source} with rule.lr = 0.2 (was 0.1): "`` and the effective config in
      words, e.g. ``GD, lr = 0.2 (threshold 2/lr = 10); fc-tanh on mnist1d (n = 4,000), loss
      MSE/2``; the budget is left out (``eoslab resume --steps`` changes it).
    """
    if exp.description != base.description:
        return exp.description
    changes = {
        k: v for k, v in changed_fields(base, exp).items() if k.split(".")[0] not in SAME_TRAJECTORY
    }
    if not changes:
        return base.description
    shown = [f"{k} = {_fmt(new)} (was {_fmt(old)})" for k, (old, new) in changes.items()]
    if len(shown) > 4:
        shown = [*shown[:3], f"{len(shown) - 3} more fields"]
    words = describe_config(to_dict(exp), budget=False)
    return f"{source} with {', '.join(shown)}: {words}"
