"""What a figure says about a run, in words: its problem, rule, threshold and how it ended.

Read from a run directory's ``config.json`` and ``manifest.json`` only (`eoslab.rundir`), for
titles, legends and axis labels. Written by `eoslab.experiments` (an ``Experiment``'s fields) or by
``eoslab.train`` / ``eoslab.runner.run`` (the processes' descriptions).
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
    "RULE_NAMES",
    "RunInfo",
    "describe_config",
    "describe_hyper",
    "describe_problem",
    "describe_rule",
    "read_run_info",
    "threshold_formula",
    "threshold_label",
    "threshold_value",
]

LOSS_NAMES = {
    "mse_half": "MSE/2",
    "mse_sum": "MSE",
    "cross_entropy": "cross-entropy",
}
"""Short names of `eoslab.losses` for axis labels (``mse_half``: mean of 1/2 |f - y|^2)."""

RULE_NAMES = {
    "gd": "GD",
    "normalized_gd": "normalized GD",
    "sqrt_loss_gd": "GD on sqrt(L)",
    "heavy_ball": "heavy ball",
    "nesterov": "Nesterov",
    "rmsprop": "RMSProp",
    "adam": "Adam",
}
"""Display names of the update rules (``kind`` in a config)."""

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


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run directory's description for figures.

    Attributes:
        path: the run directory.
        problem: the objective in words (model, dataset, n; or the synthetic problem).
        loss: the training loss's short name (for the loss axis).
        rule: the optimizer's kind (``gd``, ``adam``, ...; None if unknown).
        hyper: the rule's hyperparameters (``lr``, ``beta``, ...).
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
    rule: str | None
    hyper: dict[str, Any]
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
    def rule_text(self) -> str:
        """The rule with its hyperparameters, e.g. ``GD, lr = 0.1``."""
        return describe_rule(self.rule, self.hyper)

    @property
    def title(self) -> str:
        """Problem, loss, rule and the processes beside it on one line, e.g. ``fc-tanh on mnist1d
        (n = 1,000), loss MSE/2; GD, lr = 0.1 beside gf (gradient flow) and cf (central flow)``."""
        beside = _and([f"{n} ({what})" for n, what in self.processes.items()])
        rule = f"{self.rule_text} beside {beside}" if beside else self.rule_text
        return f"{self.problem}, loss {self.loss}; {rule}"

    def process_words(self, name: str) -> str:
        """What a process of the run is: the optimizer with its hyperparameters (``GD, lr =
        0.1``), another by its kind (``central flow``); its name when unknown."""
        if name in self.processes:
            return self.processes[name]
        if name == self.rule:
            return self.rule_text
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


def describe_rule(kind: str | None, hyper: dict[str, Any]) -> str:
    """``kind`` and its hyperparameters in words, e.g. ``Adam, lr = 0.001, β1 = 0.9``."""
    name = RULE_NAMES.get(kind or "", kind or "unknown rule")
    return ", ".join(p for p in (name, describe_hyper(hyper)) if p)


def threshold_formula(kind: str | None) -> str | None:
    r"""The stability threshold's formula for a rule (``None`` if not known).

    GD and RMSProp $2/\eta$; heavy ball $(2+2\beta)/\eta$; Nesterov $(2+2\beta)/((1+2\beta)\eta)$;
    Adam $(2+2\beta_1)/((1-\beta_1)\eta)$ (preconditioned sharpness for RMSProp and Adam);
    normalized GD and GD on $\sqrt L$: $2/\eta_t$ with the step's effective LR $\eta_t$.
    """
    return {
        "gd": "2/lr",
        "rmsprop": "2/lr",
        "heavy_ball": "(2+2β)/lr",
        "nesterov": "(2+2β)/((1+2β) lr)",
        "adam": "(2+2β1)/((1-β1) lr)",
        "normalized_gd": "2/lr_eff = 2|∇L|/lr",
        "sqrt_loss_gd": "2/lr_eff = 4 sqrt(L)/lr",
    }.get(kind or "")


def threshold_value(kind: str | None, hyper: dict[str, Any]) -> float | None:
    """A rule's constant stability threshold from its hyperparameters (the formulas of
    `threshold_formula`); None when it changes from step to step or is unknown."""
    lr = hyper.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        return None
    beta = hyper.get("beta", 0.9)
    beta1 = hyper.get("beta1", 0.9)
    if kind in ("gd", "rmsprop"):
        return 2 / lr
    if kind == "heavy_ball":
        return (2 + 2 * beta) / lr
    if kind == "nesterov":
        return (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    if kind == "adam":
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    return None


def describe_config(cfg: dict, *, budget: bool = True) -> str:
    """A recorded config (``config.json``'s ``config``) in words, all from its fields: the rule
    with its hyperparameters and threshold, the processes beside it, the problem and loss, and
    (``budget``) the steps and probing period. E.g. ``GD, lr = 0.2 (threshold 2/lr = 10);
    fc-tanh on mnist1d (n = 4,000), loss MSE/2; 2,500 steps, probed every 10``."""
    problem, loss = describe_problem(cfg)
    kind, hyper = _rule_of(cfg)
    formula, value = threshold_formula(kind), threshold_value(kind, hyper)
    if formula is None:
        rule = describe_rule(kind, hyper)
    else:
        rule = f"{describe_rule(kind, hyper)} (threshold {threshold_label(kind, value)})"
    beside = _and([f"{n} ({what})" for n, what in _processes_of(cfg).items()])
    text = f"{rule}{f' beside {beside}' if beside else ''}; {problem}, loss {loss}"
    steps, every = cfg.get("steps"), cfg.get("probe_every")
    if budget and isinstance(steps, int):
        text += f"; {steps:,} steps"
        if isinstance(every, int):
            text += ", probed every step" if every == 1 else f", probed every {every:,}"
    return text


def threshold_label(kind: str | None, value: float | None) -> str:
    """The threshold's legend text: its formula and value, e.g. ``2/lr = 20``.

    ``value`` is the recorded (constant) threshold, or None when it changes from step to step
    (then the formula alone). An unknown rule gives ``threshold = value``.
    """
    formula = threshold_formula(kind)
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


def _rule_of(cfg: dict) -> tuple[str | None, dict[str, Any]]:
    rule = cfg.get("rule")
    if isinstance(rule, dict):
        hyper = {k: v for k, v in rule.items() if k != "kind"}
        return rule.get("kind"), hyper
    for proc in (cfg.get("processes") or {}).values():  # a run made by train / runner.run
        if isinstance(proc, dict) and proc.get("kind") == "optimizer":
            hyper = {k: v for k, v in proc.items() if k not in ("kind", "rule")}
            return proc.get("rule"), hyper
    return None, {}


def _processes_of(cfg: dict) -> dict[str, str]:
    """The processes beside the optimizer: ``compare`` of an experiment, or the non-optimizer
    ``processes`` of a run made in Python; name -> display name."""
    procs = cfg.get("compare")
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
        algorithm = p.get("algorithm")  # the limiting flows: of which rule
        if isinstance(algorithm, str):
            what += f" of {RULE_NAMES.get(algorithm, algorithm)}"
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
    kind, hyper = _rule_of(cfg)
    step = man.get("step")
    return RunInfo(
        path=path,
        problem=problem,
        loss=loss,
        rule=kind,
        hyper=hyper,
        steps=cfg.get("steps") if isinstance(cfg.get("steps"), int) else None,
        probe_every=cfg.get("probe_every") if isinstance(cfg.get("probe_every"), int) else None,
        status=str(man.get("status", "unknown")),
        stop_step=int(step) if isinstance(step, int) else None,
        message=str(man.get("message", "")),
        processes=_processes_of(cfg),
    )
