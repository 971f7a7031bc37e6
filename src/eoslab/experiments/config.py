"""Typed experiment configs: frozen dataclasses, validated, saved with every run.

An `Experiment` says what to train (a `problem`), how (a `rule`), for how long, and what to measure.
It round-trips through plain JSON/YAML dicts (`to_dict` / `from_dict`); a union field (``problem``,
``rule``) is a dict with a ``kind`` key. `from_dict` is strict: an unknown key, a missing ``kind``
or a value of the wrong type or range raises `ConfigError` naming the field (``rule.lr``), before
any work starts. No config text is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, Literal, Union

from ..dynamics import rules as _rules
from ..errors import ConfigError, check_positive

__all__ = [
    "ModelProblem",
    "QuadraticProblem",
    "ToyMLPProblem",
    "Problem",
    "GD",
    "NormalizedGD",
    "SqrtLossGD",
    "HeavyBall",
    "Nesterov",
    "RMSProp",
    "Adam",
    "RuleConfig",
    "ProbeConfig",
    "StopConfig",
    "Experiment",
    "to_dict",
    "from_dict",
]


def _check_int(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(field, value, f"an integer >= {low}")


# ------------------------------------------------------------------------------ problems
@dataclasses.dataclass(frozen=True)
class ModelProblem:
    """A network from the model zoo on a dataset, full batch (needs eoslab.models, eoslab.data)."""

    model: str = "fc-tanh"
    """Model name (see `eoslab.models`)."""
    dataset: str = "mnist1d"
    """Dataset name (see ``eoslab data list``)."""
    n: int | None = 4000
    """Number of training examples (None: all)."""
    subset: Literal["first", "balanced"] = "first"
    """How the n examples are chosen: the first n (Cohen et al.) or class-balanced (seeded)."""
    loss: Literal["mse_half", "mse_sum", "cross_entropy"] = "mse_half"
    """Training loss; mse_half = mean over examples of 1/2 sum_c (f_c - y_c)^2."""
    data_dir: str | None = None
    """Where on-disk datasets live (default: $EOSLAB_DATA)."""

    kind: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        if self.n is not None:
            _check_int("n", self.n, 1)


@dataclasses.dataclass(frozen=True)
class QuadraticProblem:
    """L(w) = 1/2 sum_i h_i w_i^2 with h log-spaced from `top` down to `bottom`; w0 = ones.

    A problem with known answers: GD is stable iff lr * top < 2.
    """

    dim: int = 10
    """Number of parameters."""
    top: float = 20.0
    """The largest curvature h_1 (the sharpness)."""
    bottom: float = 1.0
    """The smallest curvature."""

    kind: ClassVar[str] = "quadratic"

    def __post_init__(self) -> None:
        _check_int("dim", self.dim, 1)
        check_positive("top", self.top)
        check_positive("bottom", self.bottom)
        if self.bottom > self.top:
            raise ConfigError("bottom", self.bottom, f"a number <= top (= {self.top})")


@dataclasses.dataclass(frozen=True)
class ToyMLPProblem:
    """A 1-hidden-layer tanh net fitting a random tanh teacher on Gaussian inputs (synthetic)."""

    n: int = 64
    """Number of examples."""
    din: int = 5
    """Input dimension."""
    width: int = 16
    """Hidden width."""
    dout: int = 1
    """Output dimension."""

    kind: ClassVar[str] = "toy-mlp"

    def __post_init__(self) -> None:
        for name in ("n", "din", "width", "dout"):
            _check_int(name, getattr(self, name), 1)


Problem = Union[ModelProblem, QuadraticProblem, ToyMLPProblem]  # noqa: UP007


# ------------------------------------------------------------------------------ rules
def _check_lr(lr: float) -> None:
    check_positive("lr", lr)


def _check_beta(name: str, b: float) -> None:
    ok = isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
    if not (ok and 0 <= b < 1):
        raise ConfigError(name, b, "a number in [0, 1)")


@dataclasses.dataclass(frozen=True)
class GD:
    """Gradient descent; stable while sharpness < 2/lr."""

    lr: float = 0.1
    """Learning rate."""
    kind: ClassVar[str] = "gd"

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.gd(self.lr)


@dataclasses.dataclass(frozen=True)
class NormalizedGD:
    """Normalized GD (steps of length exactly lr); effective LR lr/|g|."""

    lr: float = 0.01
    """Step length."""
    kind: ClassVar[str] = "normalized_gd"

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.normalized_gd(self.lr)


@dataclasses.dataclass(frozen=True)
class SqrtLossGD:
    """GD on sqrt(L - loss_min); effective LR lr/(2 sqrt(L - loss_min))."""

    lr: float = 0.1
    """Learning rate on sqrt(L - loss_min)."""
    kind: ClassVar[str] = "sqrt_loss_gd"

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.sqrt_loss_gd(self.lr, loss_min=loss_min)


@dataclasses.dataclass(frozen=True)
class HeavyBall:
    """Polyak momentum; stable while sharpness < (2 + 2 beta)/lr."""

    lr: float = 0.01
    """Learning rate."""
    beta: float = 0.9
    """Momentum."""
    kind: ClassVar[str] = "heavy_ball"

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_beta("beta", self.beta)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.heavy_ball(self.lr, self.beta)


@dataclasses.dataclass(frozen=True)
class Nesterov:
    """Nesterov momentum; stable while sharpness < (2 + 2 beta)/((1 + 2 beta) lr)."""

    lr: float = 0.01
    """Learning rate."""
    beta: float = 0.9
    """Momentum."""
    kind: ClassVar[str] = "nesterov"

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_beta("beta", self.beta)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.nesterov(self.lr, self.beta)


@dataclasses.dataclass(frozen=True)
class RMSProp:
    """RMSProp; preconditioned sharpness stable below 2/lr."""

    lr: float = 1e-3
    """Learning rate."""
    beta2: float = 0.99
    """Decay of the squared-gradient average."""
    eps: float = 1e-8
    """Added to the root of the average."""
    bias_correction: bool = True
    """Divide the average by 1 - beta2^t."""
    kind: ClassVar[str] = "rmsprop"

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.rmsprop(self.lr, self.beta2, self.eps, self.bias_correction)


@dataclasses.dataclass(frozen=True)
class Adam:
    """Adam; preconditioned sharpness stable below (2 + 2 beta1)/((1 - beta1) lr)."""

    lr: float = 1e-3
    """Learning rate."""
    beta1: float = 0.9
    """First-moment decay."""
    beta2: float = 0.999
    """Second-moment decay."""
    eps: float = 1e-8
    """Added to the root of the second moment."""
    kind: ClassVar[str] = "adam"

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_beta("beta1", self.beta1)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def build(self, loss_min: float = 0.0) -> _rules.Rule:
        return _rules.adam(self.lr, self.beta1, self.beta2, self.eps)


RuleConfig = Union[GD, NormalizedGD, SqrtLossGD, HeavyBall, Nesterov, RMSProp, Adam]  # noqa: UP007


# ------------------------------------------------------------------------------ probes, stop
@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """What is measured every `probe_every` steps."""

    k: int = 1
    """How many top Hessian eigenvalues to track (the `eigs` column)."""
    tol: float = 1e-3
    """Relative tolerance of the eigenvalues."""
    effective: bool = True
    """For adaptive rules, also track the preconditioned sharpness lambda_1(P^-1 H)."""
    alignment: bool = True
    """Measure g^T H g / (|g|^2 lambda_1)."""
    stableness: bool = False
    """Measure the stableness S_L(w, lr_eff) (5 eigen-solves per probe)."""
    accuracy: bool = True
    """Measure training accuracy (classification problems)."""

    def __post_init__(self) -> None:
        _check_int("k", self.k, 1)
        check_positive("tol", self.tol)


@dataclasses.dataclass(frozen=True)
class StopConfig:
    """Early stopping (checked at probed steps); divergence always stops a run."""

    loss_below: float | None = None
    """Stop once the loss is at or below this."""
    accuracy_above: float | None = None
    """Stop once the training accuracy is at or above this."""

    def __post_init__(self) -> None:
        if self.loss_below is not None:
            check_positive("loss_below", self.loss_below, allow_zero=True)
        if self.accuracy_above is not None and not (
            isinstance(self.accuracy_above, (int, float)) and 0 <= self.accuracy_above <= 1
        ):
            raise ConfigError("accuracy_above", self.accuracy_above, "a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One full-batch training run: problem, update rule, budget, probes, stopping rules."""

    problem: Problem = ModelProblem()
    """What to train."""
    rule: RuleConfig = GD()
    """The update rule and its hyperparameters."""
    steps: int = 2000
    """Step budget."""
    probe_every: int = 10
    """Measure curvature every this many steps."""
    log_every: int = 1
    """Keep loss / gradient norm / effective LR every this many steps."""
    probes: ProbeConfig = ProbeConfig()
    """What to measure."""
    stop: StopConfig = StopConfig()
    """Early stopping."""
    seed: int = 0
    """Seed of the initialization, data subset and eigen-solver starts."""
    dtype: Literal["float32", "float64"] = "float32"
    """Parameter dtype (float64 turns on jax_enable_x64 for the run)."""
    flush_seconds: float = 10.0
    """Write metrics and a checkpoint at least this often (seconds)."""
    description: str = ""
    """A note saved with the run."""
    devices: int = 1
    """Shard the training examples over this many devices (`eoslab.parallel`)."""
    microbatch: int | None = None
    """Accumulate loss, gradient and HVPs over micro-batches of this many examples."""

    def __post_init__(self) -> None:
        _check_int("devices", self.devices, 1)
        if self.microbatch is not None:
            _check_int("microbatch", self.microbatch, 1)
        _check_int("steps", self.steps, 0)
        _check_int("probe_every", self.probe_every, 1)
        _check_int("log_every", self.log_every, 1)
        _check_int("seed", self.seed, 0)
        check_positive("flush_seconds", self.flush_seconds, allow_zero=True)


# ------------------------------------------------------------------------------ (de)serialize
def to_dict(cfg: Any) -> Any:
    """A JSON-ready dict; union members carry their ``kind``."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, Any] = {}
        kind = getattr(type(cfg), "kind", None)
        if isinstance(kind, str) and _is_union_member(type(cfg)):
            out["kind"] = kind
        for f in dataclasses.fields(cfg):
            out[f.name] = to_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, tuple):
        return [to_dict(x) for x in cfg]
    return cfg


def _union_args(tp: Any) -> tuple:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return ()


def _is_union_member(cls: type) -> bool:
    return cls in _union_args(Problem) or cls in _union_args(RuleConfig)


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    if isinstance(tp, str):  # postponed annotation
        raise TypeError(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict_cls(tp, value, path)
    members = _union_args(tp)
    if members:
        dcs = [m for m in members if dataclasses.is_dataclass(m)]
        if dcs:
            if not isinstance(value, dict):
                raise ConfigError(path, value, "a mapping with a 'kind' key")
            kinds = {m.kind: m for m in dcs}
            kind = value.get("kind")
            if kind not in kinds:
                raise ConfigError(f"{path}.kind", kind, "one of " + ", ".join(map(repr, kinds)))
            rest = {k: v for k, v in value.items() if k != "kind"}
            return _from_dict_cls(kinds[kind], rest, path)
        errors = []
        for m in members:
            try:
                return _convert(m, value, path)
            except ConfigError as e:
                errors.append(e.accepted)
        raise ConfigError(path, value, " or ".join(errors))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, value, "null")
    if typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(path, value, _describe(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, value, "a string")
    raise ConfigError(path, value, _describe(tp))


def _from_dict_cls(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(path or "config", value, f"a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in fields:
            accepted = ", ".join(fields)
            raise ConfigError(
                f"{prefix}{key}", value[key], f"a known key ({cls.__name__} accepts: {accepted})"
            )
    kwargs = {
        name: _convert(hints[name], value[name], f"{prefix}{name}")
        for name in fields
        if name in value
    }
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.field}", e.value, e.accepted) from None


def from_dict(value: Any, cls: type = Experiment) -> Any:
    """Build a config from a plain dict (parsed JSON/YAML), strictly: see the module docstring."""
    return _from_dict_cls(cls, value, "")


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace`, re-raising validation errors with the field's name."""
    return dataclasses.replace(cfg, **changes)
