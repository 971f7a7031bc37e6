"""What a figure says about a run, in words: its problem, rule, threshold and how it ended.

Read from a run directory's ``config.json`` and ``manifest.json`` only (`eoslab.rundir`), for
titles, legends and axis labels. Written by `eoslab.experiments` (an ``Experiment``'s fields) or by
``eoslab.train`` / ``eoslab.runner.run`` (the processes' descriptions). The rule's display name,
threshold formula and constant threshold are the ones it recorded (`eoslab.rules.Rule.describe`);
nothing here re-derives them. A config.json written before rules recorded them shows the rule's
``kind`` as its name and the threshold by its value alone (``threshold = 20``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import EoslabError
from ..rundir import read_config, read_manifest

__all__ = [
    "LOSS_NAMES",
    "PROCESS_NAMES",
    "RuleRecord",
    "RunInfo",
    "describe_config",
    "describe_hyper",
    "describe_problem",
    "read_run_info",
    "rule_record",
    "threshold_label",
]

LOSS_NAMES = {
    "mse_half": "MSE/2",
    "mse_sum": "MSE",
    "cross_entropy": "cross-entropy",
}
"""Short names of `eoslab.losses` for axis labels (``mse_half``: mean of 1/2 |f - y|^2)."""

PROCESS_NAMES = {
    "GradientFlow": "gradient flow",
    "CentralFlow": "central flow",
    "SDPCentralFlow": "central flow (SDCP)",
    "ProjectedLimitingFlow": "limiting flow",
    "RetractedLimitingFlow": "limiting flow (retracted)",
    "ProjectedGD": "projected GD",
    "SelfStabilization": "self-stabilization",
}
"""Display names of the processes run beside the optimizer (their ``kind`` in a config)."""

_HYPER_NAMES = {"lr": "lr", "beta": "β", "beta1": "β1", "beta2": "β2"}

_DERIVED = ("name", "threshold_formula", "threshold")  # what a rule records beside its fields


@dataclasses.dataclass(frozen=True)
class RuleRecord:
    """A rule as a run recorded it (``config.json``).

    Attributes:
        kind: its short name (``gd``, ``adam``; None if the run has no rule).
        hyper: its hyperparameters (``lr``, ``beta``, ...).
        name: its display name (``GD``); the kind for a record that lacks it.
        threshold_formula: its stability threshold in words (``2/lr``; None if not recorded).
        threshold: its constant threshold (None when it changes every step or is not recorded).
    """

    kind: str | None = None
    hyper: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str | None = None
    threshold_formula: str | None = None
    threshold: float | None = None

    @property
    def text(self) -> str:
        """The rule and its hyperparameters in words, e.g. ``Adam, lr = 0.001, β1 = 0.9``."""
        name = self.name or self.kind or "unknown rule"
        return ", ".join(p for p in (name, describe_hyper(self.hyper)) if p)

    @property
    def label(self) -> str:
        """The threshold's legend text when constant, e.g. ``2/lr = 20`` (`threshold_label`)."""
        return threshold_label(self.threshold_formula, self.threshold)


def rule_record(record: Any) -> RuleRecord:
    """A `RuleRecord` from a recorded rule (a config's ``rule``; `eoslab.rules.Rule.describe`)."""
    if not isinstance(record, dict):
        return RuleRecord()
    kind = record.get("kind")
    name, formula, thr = (record.get(k) for k in _DERIVED)
    value = thr if isinstance(thr, (int, float)) and not isinstance(thr, bool) else None
    return RuleRecord(
        kind=kind if isinstance(kind, str) else None,
        hyper={k: v for k, v in record.items() if k not in ("kind", *_DERIVED)},
        name=name if isinstance(name, str) else kind if isinstance(kind, str) else None,
        threshold_formula=formula if isinstance(formula, str) else None,
        threshold=float(value) if value is not None else None,
    )


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run directory's description for figures.

    Attributes:
        path: the run directory.
        problem: the objective in words (model, dataset, n; or the synthetic problem).
        loss: the training loss's short name (for the loss axis).
        rule: the optimizer's rule as recorded: kind, hyperparameters, display name, threshold
            (`RuleRecord`; its kind is None when unknown).
        steps: the step budget; probe_every: the probing period (None if unknown).
        status: how the run ended (``manifest.json``; ``unknown`` if unreadable).
        stop_step: the step the run stopped at (its last step).
        message: the manifest's one-line account.
        processes: the processes beside the optimizer, name -> what it is (``{"cf": "central
            flow"}``; empty for a lone optimizer).
    """

    path: Path
    problem: str
    loss: str
    rule: RuleRecord
    steps: int | None
    probe_every: int | None
    status: str
    stop_step: int | None
    message: str
    processes: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def title(self) -> str:
        """Problem, loss, rule and the processes beside it on one line, e.g. ``fc-tanh on mnist1d
        (n = 1,000), loss MSE/2; GD, lr = 0.1 beside gf (gradient flow) and cf (central flow)``."""
        beside = _and([f"{n} ({what})" for n, what in self.processes.items()])
        rule = f"{self.rule.text} beside {beside}" if beside else self.rule.text
        return f"{self.problem}, loss {self.loss}; {rule}"

    def process_words(self, name: str) -> str:
        """What a process of the run is: the optimizer with its hyperparameters (``GD, lr =
        0.1``), another by its kind (``central flow``); its name when unknown."""
        if name in self.processes:
            return self.processes[name]
        if name == self.rule.kind:
            return self.rule.text
        return name

    def process_label(self, name: str) -> str:
        """A process by its name and what it is, e.g. ``gd (GD, lr = 0.1)``, ``cf (central
        flow)``."""
        words = self.process_words(name)
        return f"{name} ({words})" if words != name else name


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) <= 2 else ", ".join(items[:-1]) + " and " + items[-1]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_problem(cfg: dict) -> tuple[str, str]:
    """``(problem, loss)`` in words for a run's recorded config (``config.json``'s ``config``)."""
    p = cfg.get("problem")
    if not isinstance(p, dict):  # a run made in Python: an objective of its own
        sqrt = cfg.get("transform") == "sqrt"
        dim = f"{cfg['dim']:,} parameters" if isinstance(cfg.get("dim"), int) else "custom"
        return f"custom objective ({dim})", "L, trained on sqrt(L)" if sqrt else "L"
    kind = p.get("kind")
    if kind == "model":
        n = p.get("n")
        n_text = "all examples" if n is None else f"n = {n:,}"
        loss = LOSS_NAMES.get(p.get("loss", ""), str(p.get("loss", "?")))
        return f"{p.get('model', '?')} on {p.get('dataset', '?')} ({n_text})", loss
    if kind == "quadratic":
        return (
            f"quadratic, {p.get('dim', '?')} parameters, curvatures {_fmt(p.get('top'))} "
            f"down to {_fmt(p.get('bottom'))}",
            "1/2 Σ h_i w_i^2",
        )
    if kind == "toy-mlp":
        shape = f"{p.get('din', '?')}-{p.get('width', '?')}-{p.get('dout', '?')}"
        return f"toy tanh net {shape} on a synthetic teacher (n = {p.get('n', '?')})", "MSE/2"
    if kind == "valley":
        extra = p.get("extra", 0)
        tail = f" + 0.3 Σ z_i^2 ({extra} z)" if extra else ""
        return f"valley (1 + x^2) y^2{tail} from x0 = {_fmt(p.get('x0'))}", "L"
    return str(kind or "unknown problem"), "loss"


def describe_hyper(hyper: dict[str, Any]) -> str:
    """The learning rate and momenta of a rule, e.g. ``lr = 0.001, β1 = 0.9``."""
    return ", ".join(
        f"{_HYPER_NAMES[k]} = {_fmt(v)}" for k, v in hyper.items() if k in _HYPER_NAMES
    )


def describe_config(cfg: dict, *, budget: bool = True) -> str:
    """A recorded config (``config.json``'s ``config``) in words, all from its fields: the rule
    with its hyperparameters and threshold, the processes beside it, the problem and loss, and
    (``budget``) the steps and probing period. E.g. ``GD, lr = 0.2 (threshold 2/lr = 10);
    fc-tanh on mnist1d (n = 4,000), loss MSE/2; 2,500 steps, probed every 10``."""
    problem, loss = describe_problem(cfg)
    rec = _rule_of(cfg)
    if rec.threshold_formula is None and rec.threshold is None:
        rule = rec.text
    else:
        rule = f"{rec.text} (threshold {rec.label})"
    beside = _and([f"{n} ({what})" for n, what in _processes_of(cfg).items()])
    text = f"{rule}{f' beside {beside}' if beside else ''}; {problem}, loss {loss}"
    steps, every = cfg.get("steps"), cfg.get("probe_every")
    if budget and isinstance(steps, int):
        text += f"; {steps:,} steps"
        if isinstance(every, int):
            text += ", probed every step" if every == 1 else f", probed every {every:,}"
    return text


def threshold_label(formula: str | None, value: float | None) -> str:
    """The threshold's legend text: its formula (as the rule recorded it, `eoslab.rules.Rule`'s
    ``threshold_formula``) and value, e.g. ``2/lr = 20``.

    ``value`` is the (constant) threshold, or None when it changes from step to step (then the
    formula alone). Without a formula: ``threshold = value``.
    """
    if value is None or not math.isfinite(value):
        return formula or "threshold"
    shown = f"{float(f'{value:.4g}'):g}"  # 4 significant digits, 38000 rather than 3.8e+04
    return f"{formula or 'threshold'} = {shown}"


def _record(path: Path) -> dict:
    """The run record, or {} when it is missing or damaged (a figure then says less)."""
    try:
        data = read_config(path)
    except EoslabError:
        return {}
    return data if isinstance(data, dict) else {}


def _rule_of(cfg: dict) -> RuleRecord:
    rule = cfg.get("rule")
    if isinstance(rule, dict):
        return rule_record(rule)
    for proc in (cfg.get("processes") or {}).values():  # a run made by train / runner.run
        if isinstance(proc, dict) and proc.get("kind") == "optimizer":
            rest = {k: v for k, v in proc.items() if k not in ("kind", "rule")}
            return rule_record({"kind": proc.get("rule"), **rest})
    return RuleRecord()


def _processes_of(cfg: dict) -> dict[str, str]:
    """The processes beside the optimizer: ``compare`` of an experiment, or the non-optimizer
    ``processes`` of a run made in Python; name -> display name."""
    procs = cfg.get("compare")
    rec = _rule_of(cfg)
    if not isinstance(procs, dict):
        procs = {
            n: p
            for n, p in (cfg.get("processes") or {}).items()
            if isinstance(p, dict) and p.get("kind") not in ("optimizer", "minibatch")
        }
    out = {}
    for n, p in procs.items():
        if not isinstance(p, dict):
            continue
        what = PROCESS_NAMES.get(str(p.get("kind")), str(p.get("kind", "?")))
        algorithm = p.get("algorithm")  # the limiting flows: of which rule (the run's, usually)
        if isinstance(algorithm, str):
            what += f" of {rec.name if algorithm == rec.kind and rec.name else algorithm}"
        out[str(n)] = what
    return out


def read_run_info(path: str | Path) -> RunInfo:
    """A run directory's `RunInfo`; a missing or damaged file leaves its fields unknown."""
    path = Path(path)
    cfg = _record(path).get("config", {})
    cfg = cfg if isinstance(cfg, dict) else {}
    man = read_manifest(path)
    if "damaged" in man:  # missing or unreadable: nothing is known of how the run ended
        man = {}
    problem, loss = describe_problem(cfg)
    rec = _rule_of(cfg)
    step = man.get("step")
    return RunInfo(
        path=path,
        problem=problem,
        loss=loss,
        rule=rec,
        steps=cfg.get("steps") if isinstance(cfg.get("steps"), int) else None,
        probe_every=cfg.get("probe_every") if isinstance(cfg.get("probe_every"), int) else None,
        status=str(man.get("status", "unknown")),
        stop_step=int(step) if isinstance(step, int) else None,
        message=str(man.get("message", "")),
        processes=_processes_of(cfg),
    )
