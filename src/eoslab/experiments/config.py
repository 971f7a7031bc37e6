"""Typed experiment configs: frozen dataclasses, validated, saved with every run.

An `Experiment` says what to train (a `problem`), how (a `rule`: one of `eoslab.rules`, whose
fields are its config), what to run beside it in lockstep (``compare``: processes from
`eoslab.dynamics`, keyed by name), for how long, and what to measure (`eoslab.runner.Probes`) and
when to stop (`eoslab.runner.Stop`). Each of those classes is the one place its defaults and
validation live; the CLI is generated from them (tyro). A config round-trips through plain
JSON/YAML dicts (`to_dict` / `from_dict`); a union field is a dict with a ``kind`` key, and a rule
also records its display ``name``, ``threshold_formula`` and ``threshold`` (derived: ignored on
loading, except that a ``threshold`` must be the rule's own). `from_dict` is strict: an unknown
key, a missing ``kind`` or a value of the wrong type or range raises `ConfigError` naming the
field (``rule.lr``), before any work starts. No config text is evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

import tyro

from ..data import registry as data_registry
from ..dynamics.central_flow import CentralFlow, SDPCentralFlow
from ..dynamics.gradient_flow import GradientFlow
from ..dynamics.limiting_flow import ProjectedLimitingFlow, RetractedLimitingFlow
from ..dynamics.rules import GD, RULES, Rule
from ..dynamics.self_stabilization import ProjectedGD, SelfStabilization
from ..errors import ConfigError, check_positive
from ..models.registry import int_option_names
from ..runner import Probes, Stop

__all__ = [
    "ModelProblem",
    "QuadraticProblem",
    "ToyMLPProblem",
    "ValleyProblem",
    "Problem",
    "CompareProcess",
    "Probes",
    "Stop",
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
    """Model name (see eoslab.models)."""
    dataset: str = "mnist1d"
    """Dataset name (see eoslab data list)."""
    n: Annotated[int | None, tyro.conf.arg(metavar="INT")] = 4000
    """Number of training examples (null in a config file: all)."""
    subset: Literal["first", "balanced"] = "first"
    """How the n examples are chosen: the first n (Cohen et al.) or class-balanced (seeded)."""
    scaling: Literal["per-feature", "global"] = "per-feature"
    """Input scaling after centring each feature: its own std, or one std for all features (a
    pixel that few images touch is then not blown up; docs/data.md)."""
    loss: Literal["mse_half", "mse_sum", "cross_entropy"] = "mse_half"
    """Training loss; mse_half = mean over examples of 1/2 sum_c (f_c - y_c)^2."""
    data_dir: Annotated[
        str | None, tyro.conf.arg(metavar="DIR", help_behavior_hint="(default: $EOSLAB_DATA)")
    ] = None
    """Where on-disk datasets live."""
    model_options: Annotated[
        dict[str, int], tyro.conf.arg(help_behavior_hint="(default: none, the family's own)")
    ] = dataclasses.field(default_factory=dict)
    """Integer options of the model family over its defaults (transformer: d_model, n_heads,
    n_layers, d_mlp; see eoslab.models.create), e.g. --problem.model-options d_model 64."""

    if_missing: Literal["error", "synthetic"] = "error"
    """When an on-disk dataset (cifar10, text-T256) is not found: stop with an error, or run on
    its synthetic stand-in of the same shapes (a warning, and synthetic_data in the manifest)."""

    kind: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        if self.n is not None:
            _check_int("n", self.n, 1)
        if self.if_missing == "synthetic" and data_registry.synthetic_twin(self.dataset) is None:
            raise ConfigError(
                "if_missing",
                "synthetic",
                "'error': only " + ", ".join(data_registry.SYNTHETIC_TWINS) + " have a synthetic "
                f"stand-in, not {self.dataset!r}",
            )
        if not isinstance(self.model_options, dict):
            raise ConfigError("model_options", self.model_options, "a mapping of names to ints")
        accepted = int_option_names(self.model)
        for name, value in self.model_options.items():
            if accepted is not None and name not in accepted:
                raise ConfigError(
                    f"model_options.{name}",
                    value,
                    f"an integer option of {self.model!r}: " + ", ".join(accepted)
                    if accepted
                    else f"no options ({self.model!r} has no integer options)",
                )
            _check_int(f"model_options.{name}", value, 1)

    def examples(self) -> int | None:
        """The number of training examples (None when the dataset is unknown here)."""
        if self.n is not None:
            return self.n
        spec = data_registry.DATASETS.get(self.dataset)
        return None if spec is None else spec.train_size


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


@dataclasses.dataclass(frozen=True)
class ValleyProblem:
    """The paper's valley L = (1 + x^2) y^2 (+ extra normal directions 0.3 z_i^2): a manifold of
    minimizers {y = z = 0} with lambda_1 = 2 (1 + x^2) on it; w0 = (x0, y0, y0, ...)."""

    x0: float = 2.0
    """Start: the coordinate along the manifold."""
    y0: float = 0.3
    """Start: the distance from the manifold in each normal direction."""
    extra: int = 0
    """Extra normal directions with curvature 0.6 (lambda_2 = 0.6 when extra >= 1)."""

    kind: ClassVar[str] = "valley"

    def __post_init__(self) -> None:
        _check_int("extra", self.extra, 0)


Problem = Union[ModelProblem, QuadraticProblem, ToyMLPProblem, ValleyProblem]  # noqa: UP007

CompareProcess = Union[  # noqa: UP007
    GradientFlow,
    CentralFlow,
    SDPCentralFlow,
    ProjectedLimitingFlow,
    RetractedLimitingFlow,
    ProjectedGD,
    SelfStabilization,
]
"""Processes that run in lockstep beside the optimizer (`eoslab.dynamics`)."""

_RULE = Union[tuple(RULES.values())]  # noqa: UP007
"""The rules a config can name: the registry `eoslab.rules.RULES`, one class per ``kind``."""


# ------------------------------------------------------------------------------ experiment
@dataclasses.dataclass(frozen=True)
class Experiment:
    """One run: a problem, an update rule, the processes beside it, budget, probes, stopping."""

    problem: Annotated[Problem, tyro.conf.AvoidSubcommands] = ModelProblem()
    """What to train."""
    rule: Annotated[_RULE, tyro.conf.AvoidSubcommands] = dataclasses.field(default_factory=GD)
    """The update rule and its hyperparameters (its process is named after its kind)."""
    compare: dict[str, Annotated[CompareProcess, tyro.conf.AvoidSubcommands]] = dataclasses.field(
        default_factory=dict
    )
    """Processes run in lockstep beside the optimizer, from the same start, keyed by name; each
    one's lr must equal the rule's (one step of each is one step of the optimizer)."""
    steps: int = 2000
    """Step budget (at least 1 step)."""
    probe_every: int = 10
    """Probe (curvature, distances, ...) every this many steps."""
    log_every: int = 1
    """Keep loss / gradient norm / effective LR every this many steps."""
    probes: Probes = Probes()
    """What to measure at probed steps."""
    stop: Stop = Stop()
    """Early stopping (divergence always stops a run)."""
    accuracy: bool = True
    """Measure training accuracy at probed steps (classification problems)."""
    seed: int = 0
    """Seed of the initialization, data subset and eigen-solver starts."""
    dtype: Literal["float32", "float64"] = "float32"
    """Parameter dtype (float64 runs inside jax.enable_x64; nothing global changes)."""
    matmul_dtype: Literal["param", "bfloat16"] = "param"
    """The model's matrix products: "param" in the parameter dtype, "bfloat16" mixed
    precision as on GPUs (bfloat16 operands, sums and parameters in dtype); bounds then carry
    bfloat16's rounding, so probes.tol must be >= 0.125 (eoslab.precision)."""
    flush_seconds: float = 10.0
    """Write metrics and a checkpoint at least this often (seconds)."""
    description: Annotated[
        str,
        tyro.conf.arg(
            help_behavior_hint="(default: the preset's or config file's; from the effective "
            "config when an override changes the run)"
        ),
    ] = ""
    """A note saved with the run (config.json, report.md)."""
    devices: int = 1
    """Shard the training examples over this many devices (eoslab.parallel)."""
    shard_params: bool = False
    """Also split the flat parameter vector over the same devices (FSDP: all-gathered inside
    the loss; gradients, Hessian products, eigenvectors and optimizer state in shards). Needs
    devices >= 2 and a parameter count divisible by devices."""
    microbatch: Annotated[
        int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: off, one batch)")
    ] = None
    """Accumulate loss, gradient and HVPs over micro-batches of this many examples."""
    batch_size: Annotated[
        int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: full batch)")
    ] = None
    """Mini-batches of b examples: the rule steps on the batch loss
    L_B = 1/b sum_{i in B} l_i, batches drawn by epochs without replacement from seed
    (eoslab.dynamics.MiniBatch: SGD for rule gd); rows add batch_loss and batch_grad_norm, while
    loss and grad_norm stay those of the full batch."""
    batch_sharpness: bool = True
    """With batch_size: at probed steps, the batch sharpness E_B[g_B^T H_B g_B / |g_B|^2] over
    random batches of batch_size (Andreyev & Beneventano find SGD holds it at 2/lr;
    eoslab.runner.BatchSharpness, one HVP of a batch loss per batch). Full-batch runs
    never measure it."""
    batch_sharpness_rel_err: float = 0.02
    """Random batches are drawn (10 to 1000) until the standard error of the batch sharpness is
    at most this fraction of it (columns batch_sharpness_stderr, batch_sharpness_batches)."""

    def __post_init__(self) -> None:
        _check_int("devices", self.devices, 1)
        if self.matmul_dtype not in ("param", "bfloat16"):
            raise ConfigError("matmul_dtype", self.matmul_dtype, "'param' or 'bfloat16'")
        if not isinstance(self.shard_params, bool):
            raise ConfigError("shard_params", self.shard_params, "True or False")
        if self.shard_params and self.devices < 2:
            raise ConfigError(
                "shard_params",
                True,
                f"False with devices={self.devices} (parameters are split over devices >= 2)",
            )
        if self.microbatch is not None:
            _check_int("microbatch", self.microbatch, 1)
        check_positive("batch_sharpness_rel_err", self.batch_sharpness_rel_err)
        if self.batch_size is not None:
            self._check_batch_size()
        _check_int("steps", self.steps, 1)
        _check_int("probe_every", self.probe_every, 1)
        _check_int("log_every", self.log_every, 1)
        _check_int("seed", self.seed, 0)
        check_positive("flush_seconds", self.flush_seconds, allow_zero=True)
        if self.stop.loss_below is not None:
            check_positive("stop.loss_below", self.stop.loss_below, allow_zero=True)
        acc = self.stop.accuracy_above
        if acc is not None and not (isinstance(acc, (int, float)) and 0 <= acc <= 1):
            raise ConfigError("stop.accuracy_above", acc, "a number in [0, 1]")
        for name, proc in self.compare.items():
            if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError("compare", name, "names of letters, digits, '-' and '_'")
            if name == self.rule.kind:
                raise ConfigError("compare", name, f"a name other than the rule's ({name!r})")
            lr = getattr(proc, "lr", None)
            if lr is not None and lr != self.rule.lr:
                raise ConfigError(
                    f"compare.{name}.lr",
                    lr,
                    f"the rule's lr ({self.rule.lr:g}): processes in lockstep share one step "
                    f"(set --compare.{name}.lr too)",
                )

    def _check_batch_size(self) -> None:
        b, p = self.batch_size, self.problem
        if not isinstance(p, ModelProblem):
            raise ConfigError(
                "batch_size",
                b,
                f"None (full batch): a {p.kind!r} problem is no mean over examples; mini-batches "
                "need a problem of kind 'model'",
            )
        n = p.examples()
        accepted = "None (full batch) or an integer from 1 to " + (
            f"n = {n} (the training examples)" if n is not None else "n (the training examples)"
        )
        if isinstance(b, bool) or not isinstance(b, int) or b < 1 or (n is not None and b > n):
            raise ConfigError("batch_size", b, accepted)
        if self.compare:
            raise ConfigError(
                "compare",
                ", ".join(self.compare),
                "no processes beside a mini-batch run (batch_size set): the flows follow "
                "full-batch GD; drop --batch-size, or compare with a full-batch run",
            )


# ------------------------------------------------------------------------------ (de)serialize
def to_dict(cfg: Any) -> Any:
    """A JSON-ready dict; union members carry their ``kind``, a rule its record
    (`eoslab.rules.Rule.describe`: its fields, display name and threshold)."""
    if isinstance(cfg, Rule):
        return cfg.describe()
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out: dict[str, Any] = {}
        if _is_union_member(type(cfg)):
            out["kind"] = _kind(type(cfg))
        for f in dataclasses.fields(cfg):
            out[f.name] = to_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, tuple):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _union_args(tp: Any) -> tuple:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return ()


def _kind(cls: type) -> str:
    kind = getattr(cls, "kind", None)
    return kind if isinstance(kind, str) else cls.__name__


def _is_union_member(cls: type) -> bool:
    return any(cls in _union_args(u) for u in (Problem, _RULE, CompareProcess))


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
            kinds = {_kind(m): m for m in dcs}
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
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping of names to entries")
        return {str(k): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        item = args[0]
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
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
    recorded = None
    if issubclass(cls, Rule):  # its name and threshold are recorded, not read back
        recorded = value.get("threshold")
        value = {k: v for k, v in value.items() if k not in Rule.derived_keys}
    hints = typing.get_type_hints(cls)
    hints = {k: v for k, v in hints.items() if typing.get_origin(v) is not ClassVar}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
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
        out = cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.field}", e.value, e.accepted) from None
    if recorded is not None:
        _check_recorded_threshold(out, recorded, path)
    return out


def _check_recorded_threshold(rule: Rule, recorded: Any, path: str) -> None:
    """A ``threshold`` in a config must be the rule's own (it is derived, never set)."""
    own = rule.threshold()
    ok = isinstance(recorded, (int, float)) and not isinstance(recorded, bool)
    if not (ok and own is not None and math.isclose(recorded, own, rel_tol=1e-9)):
        raise ConfigError(
            f"{path}.threshold" if path else "threshold",
            recorded,
            f"{own!r}, the rule's own ({rule.threshold_formula}), or no threshold key: it is "
            "derived from the rule's fields",
        )


def from_dict(value: Any, cls: type = Experiment) -> Any:
    """Build a config from a plain dict (parsed JSON/YAML), strictly: see the module docstring."""
    return _from_dict_cls(cls, value, "")


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace`, re-raising validation errors with the field's name."""
    return dataclasses.replace(cfg, **changes)
