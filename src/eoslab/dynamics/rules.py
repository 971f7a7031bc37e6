r"""Update rules: one equinox Module per rule, on a flat parameter vector.

Every rule is (a special case of) preconditioned GD with momentum,

.. math:: w_{t+1} = w_t - \eta_t\, P_t^{-1} m_t ,

and reports, for each step, its effective learning rate $\eta_t$ (``lr_eff``) and the stability
threshold $\tau$ that the (effective) sharpness is compared with: GD is stable on a quadratic
while $\lambda_1(H) < 2/\eta$, heavy ball while $\lambda_1 < (2+2\beta)/\eta$, Nesterov while
$\lambda_1 < (2+2\beta)/((1+2\beta)\eta)$, and RMSProp/Adam while the *preconditioned* sharpness
$\lambda_1(P^{-1}H)$ is below $2/\eta$ and $(2+2\beta_1)/((1-\beta_1)\eta)$ (Cohen et al., 2022).
Adaptive rules expose $P$ (a diagonal, as a vector) through ``rule.preconditioner(state)``; it is
the preconditioner of the step that produced ``state``.

A rule is one class, a subclass of the abstract `Rule` (an equinox Module, so a frozen
dataclass): its fields are its hyperparameters, checked when it is made (`ConfigError` naming the
field), and the same object steps, is the CLI's config (tyro; a field's docstring is its help)
and is recorded in ``config.json``::

    rule = GD(lr=0.1)
    state = rule.init(w)
    w, state, info = rule.step(w, state, g, loss)   # info: StepInfo(lr_eff, threshold)

``g`` is $\nabla L(w)$ and ``loss`` is $L(w) - L_{\min}$, the loss above its minimum: the
processes (`eoslab.dynamics.Optimizer`, `MiniBatch`) subtract the objective's ``loss_min`` (0
unless set); only sqrt-loss GD reads it. Where optax implements exactly the same update (GD, heavy
ball, Nesterov, RMSProp, Adam), the rule runs optax inside; `OptaxRule` runs any optax
transformation. Each rule states its display ``name``, its ``threshold_formula`` and, when it is
constant, its ``threshold()``; `Rule.describe` records them beside the fields. `RULES` maps each
``kind`` to its class, derived from the subclasses of `Rule` whose kind is a class constant.

>>> import jax.numpy as jnp
>>> r = GD(lr=0.1)
>>> w, s, info = r.step(jnp.ones(2), r.init(jnp.ones(2)), jnp.array([1.0, 2.0]), jnp.array(0.5))
>>> [round(float(x), 4) for x in w], round(float(info.threshold), 4), r.threshold_formula
([0.9, 0.8], 20.0, '2/lr')
"""

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError, check_positive

if TYPE_CHECKING:
    import optax

__all__ = [
    "Rule",
    "StepInfo",
    "GD",
    "NormalizedGD",
    "SqrtLossGD",
    "HeavyBall",
    "Nesterov",
    "RMSProp",
    "Adam",
    "OptaxRule",
    "RULES",
]


class StepInfo(NamedTuple):
    """What a step reports besides the new point (scalars, same dtype as ``w``)."""

    lr_eff: Float[Array, ""]  # the step's effective learning rate eta_t
    threshold: Float[Array, ""]  # stability threshold for the (effective) sharpness


class Rule(eqx.Module):
    """An update rule (abstract; each concrete rule is a final subclass).

    A subclass gives its hyperparameters as fields (checked in ``__check_init__``), its
    ``kind``, ``name``, ``threshold_formula`` and ``adaptive`` (class constants, or fields or
    properties where they depend on the instance), and the methods `init`, `step`,
    `preconditioner` and `threshold`.
    """

    kind: eqx.AbstractVar[str]
    """Short name: a config's ``kind`` and the process's default name (``gd``, ``adam``)."""
    name: eqx.AbstractVar[str]
    """Display name, for figures and reports (``GD``, ``normalized GD``)."""
    threshold_formula: eqx.AbstractVar[str]
    """The stability threshold in words (``2/lr``, ``(2+2β)/lr``)."""
    adaptive: eqx.AbstractVar[bool]
    r"""Whether the rule has a preconditioner (then its threshold is for $\lambda_1(P^{-1}H)$)."""

    derived_keys: ClassVar[tuple[str, ...]] = ("name", "threshold_formula", "threshold")
    """The keys `describe` adds to the fields: recorded for readers, recomputed on loading."""

    @abc.abstractmethod
    def init(self, w: Float[Array, " d"]) -> Any:
        """The rule's state at $w_0$ (a pytree of arrays)."""

    @abc.abstractmethod
    def step(
        self, w: Float[Array, " d"], state: Any, g: Float[Array, " d"], loss: Float[Array, ""]
    ) -> tuple[Float[Array, " d"], Any, StepInfo]:
        r"""One step: ``(w_new, state_new, StepInfo)`` from $w$, $\nabla L(w)$ and
        $L(w) - L_{\min}$; pure and jit-able."""

    @abc.abstractmethod
    def preconditioner(self, state: Any) -> Float[Array, " d"] | None:
        """The diagonal $P$ of the step that produced ``state``; None without one ($P = I$)."""

    @abc.abstractmethod
    def threshold(self) -> float | None:
        """The stability threshold from the hyperparameters; None when it changes every step
        (then each step reports it in its `StepInfo`)."""

    def describe(self) -> dict[str, Any]:
        """The record of the rule (``config.json``): its ``kind``, its fields (plain values), its
        display ``name``, ``threshold_formula`` and constant ``threshold`` (None if none)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain = (bool, int, float, str, type(None))
        hyper = {k: v for k, v in fields.items() if k != "kind" and isinstance(v, plain)}
        return {
            "kind": self.kind,
            **hyper,
            "name": self.name,
            "threshold_formula": self.threshold_formula,
            "threshold": self.threshold(),
        }


def _check_beta(name: str, beta: float) -> None:
    ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta)
    if not (ok and 0.0 <= beta < 1.0):
        raise ConfigError(name, beta, "a number in [0, 1)")


def _scalar(x: float, like: Array) -> Array:
    return jnp.asarray(x, dtype=like.dtype)


def _optax_step(
    tx: "optax.GradientTransformation", w: Array, state: Any, g: Array, lr: float, thr: float
) -> tuple[Array, Any, StepInfo]:
    r"""$w + u$ with $(u, s') =$ ``tx.update(g, s, w)``, reporting ``lr`` and ``thr``."""
    updates, state = tx.update(g, state, w)
    return w + updates.astype(w.dtype), state, StepInfo(_scalar(lr, w), _scalar(thr, w))


class _Empty(NamedTuple):
    pass


class GD(Rule):
    r"""Gradient descent, $w_{t+1} = w_t - \eta\nabla L(w_t)$; stable while $\lambda_1 < 2/\eta$."""

    lr: float = 0.1
    """Learning rate eta."""

    kind: ClassVar[str] = "gd"
    name: ClassVar[str] = "GD"
    threshold_formula: ClassVar[str] = "2/lr"
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)

    def threshold(self) -> float:
        return 2.0 / self.lr

    def init(self, w):
        return self._transform().init(w)

    def step(self, w, state, g, loss):
        del loss
        return _optax_step(self._transform(), w, state, g, self.lr, self.threshold())

    def preconditioner(self, state) -> None:
        return None

    def _transform(self) -> "optax.GradientTransformation":
        import optax

        return optax.sgd(self.lr)


class NormalizedGD(Rule):
    r"""Normalized GD, $w_{t+1} = w_t - \eta\,\nabla L/\|\nabla L\|$: steps of length $\eta$.

    Effective LR $\eta_t = \eta/\|\nabla L(w_t)\|$, threshold $2/\eta_t = 2\|\nabla L\|/\eta$.
    At a zero gradient the step is zero.
    """

    lr: float = 0.01
    """Step length eta."""

    kind: ClassVar[str] = "normalized_gd"
    name: ClassVar[str] = "normalized GD"
    threshold_formula: ClassVar[str] = "2/lr_eff = 2|∇L|/lr"
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)

    def threshold(self) -> None:
        return None

    def init(self, w):
        return _Empty()

    def step(self, w, state, g, loss):
        del loss
        norm = jnp.linalg.norm(g)
        safe = jnp.where(norm > 0, norm, 1.0)
        lr_eff = jnp.where(norm > 0, self.lr / safe, 0.0).astype(w.dtype)
        thr = jnp.where(norm > 0, 2.0 * norm / self.lr, jnp.inf).astype(w.dtype)
        return w - lr_eff * g, state, StepInfo(lr_eff, thr)

    def preconditioner(self, state) -> None:
        return None


class SqrtLossGD(Rule):
    r"""GD on $\sqrt{L - L_{\min}}$: $w_{t+1} = w_t - \eta\,\nabla L / (2\sqrt{L - L_{\min}})$.

    Effective LR $\eta_t = \eta / (2\sqrt{L(w_t) - L_{\min}})$ on $L$, threshold $2/\eta_t$ for
    $\lambda_1(\nabla^2 L)$. At or below $L_{\min}$ the step is zero (the subgradient of the
    safe square root). ``loss`` passed to ``step`` is $L - L_{\min}$ (the processes subtract the
    objective's ``loss_min``), not its square root.
    """

    lr: float = 0.1
    """Learning rate eta on sqrt(L - L_min)."""

    kind: ClassVar[str] = "sqrt_loss_gd"
    name: ClassVar[str] = "GD on sqrt(L)"
    threshold_formula: ClassVar[str] = "2/lr_eff = 4 sqrt(L)/lr"
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)

    def threshold(self) -> None:
        return None

    def init(self, w):
        return _Empty()

    def step(self, w, state, g, loss):
        u = jnp.asarray(loss, w.dtype)
        pos = u > 0
        root = jnp.sqrt(jnp.where(pos, u, 1.0))
        lr_eff = jnp.where(pos, self.lr / (2.0 * root), 0.0).astype(w.dtype)
        thr = jnp.where(pos, 4.0 * root / self.lr, jnp.inf).astype(w.dtype)
        return w - lr_eff * g, state, StepInfo(lr_eff, thr)

    def preconditioner(self, state) -> None:
        return None


class HeavyBall(Rule):
    r"""Polyak heavy ball, $m_t = \beta m_{t-1} + \nabla L(w_t)$, $w_{t+1} = w_t - \eta m_t$.

    Equivalently $w_{t+1} = w_t - \eta\nabla L(w_t) + \beta(w_t - w_{t-1})$; threshold
    $(2 + 2\beta)/\eta$ (``optax.sgd(lr, momentum=beta)``).
    """

    lr: float = 0.01
    """Learning rate eta."""
    beta: float = 0.9
    """Momentum beta, in [0, 1)."""

    kind: ClassVar[str] = "heavy_ball"
    name: ClassVar[str] = "heavy ball"
    threshold_formula: ClassVar[str] = "(2+2β)/lr"
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta", self.beta)

    def threshold(self) -> float:
        return (2.0 + 2.0 * self.beta) / self.lr

    def init(self, w):
        return self._transform().init(w)

    def step(self, w, state, g, loss):
        del loss
        return _optax_step(self._transform(), w, state, g, self.lr, self.threshold())

    def preconditioner(self, state) -> None:
        return None

    def _transform(self) -> "optax.GradientTransformation":
        import optax

        if self.beta > 0:
            return optax.sgd(self.lr, momentum=self.beta)
        return optax.sgd(self.lr)


class Nesterov(Rule):
    r"""Nesterov momentum, $m_t = \beta m_{t-1} + g_t$, $w_{t+1} = w_t - \eta(g_t + \beta m_t)$.

    Threshold $(2 + 2\beta)/((1 + 2\beta)\eta)$ (``optax.sgd(lr, momentum=beta, nesterov=True)``).
    """

    lr: float = 0.01
    """Learning rate eta."""
    beta: float = 0.9
    """Momentum beta, in [0, 1)."""

    kind: ClassVar[str] = "nesterov"
    name: ClassVar[str] = "Nesterov"
    threshold_formula: ClassVar[str] = "(2+2β)/((1+2β) lr)"
    adaptive: ClassVar[bool] = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta", self.beta)

    def threshold(self) -> float:
        return (2.0 + 2.0 * self.beta) / ((1.0 + 2.0 * self.beta) * self.lr)

    def init(self, w):
        return self._transform().init(w)

    def step(self, w, state, g, loss):
        del loss
        return _optax_step(self._transform(), w, state, g, self.lr, self.threshold())

    def preconditioner(self, state) -> None:
        return None

    def _transform(self) -> "optax.GradientTransformation":
        import optax

        if self.beta > 0:
            return optax.sgd(self.lr, momentum=self.beta, nesterov=True)
        return optax.sgd(self.lr)


class RMSProp(Rule):
    r"""RMSProp, $\nu_t = \beta_2\nu_{t-1} + (1-\beta_2) g_t^2$, $w_{t+1} = w_t - \eta g_t / P_t$.

    $P_t = \sqrt{\hat\nu_t} + \epsilon$ with $\hat\nu_t = \nu_t/(1-\beta_2^t)$ when
    ``bias_correction`` (else $\nu_t$). Threshold $2/\eta$ for $\lambda_1(P_t^{-1}H)$.
    (``optax.scale_by_rms(beta2, eps, eps_in_sqrt=False, bias_correction=...)``.)
    """

    lr: float = 1e-3
    """Learning rate eta."""
    beta2: float = 0.99
    """Decay of the squared-gradient average, in [0, 1)."""
    eps: float = 1e-8
    """Added to the root of the average."""
    bias_correction: bool = True
    """Divide the average by 1 - beta2^t."""

    kind: ClassVar[str] = "rmsprop"
    name: ClassVar[str] = "RMSProp"
    threshold_formula: ClassVar[str] = "2/lr"
    adaptive: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def threshold(self) -> float:
        return 2.0 / self.lr

    def init(self, w):
        return self._transform().init(w)

    def step(self, w, state, g, loss):
        del loss
        return _optax_step(self._transform(), w, state, g, self.lr, self.threshold())

    def preconditioner(self, state):
        rms = state[0]
        nu = rms.nu
        if self.bias_correction:
            nu = nu / (1.0 - self.beta2 ** rms.count.astype(nu.dtype))
        return jnp.sqrt(nu) + self.eps

    def _transform(self) -> "optax.GradientTransformation":
        import optax

        rms = optax.scale_by_rms(
            decay=self.beta2,
            eps=self.eps,
            eps_in_sqrt=False,
            bias_correction=bool(self.bias_correction),
        )
        return optax.chain(rms, optax.scale(-self.lr))


class Adam(Rule):
    r"""Adam: $m_t = \beta_1 m_{t-1} + (1-\beta_1)g_t$,
    $\nu_t = \beta_2\nu_{t-1} + (1-\beta_2)g_t^2$, $w_{t+1} = w_t - \eta\,\hat m_t / P_t$,
    $P_t = \sqrt{\hat\nu_t} + \epsilon$ (bias-corrected).

    Threshold $(2 + 2\beta_1)/((1-\beta_1)\eta)$ for the preconditioned sharpness
    $\lambda_1(P_t^{-1}H)$ (Cohen et al., 2022). Runs ``optax.adam``.
    """

    lr: float = 1e-3
    """Learning rate eta."""
    beta1: float = 0.9
    """First-moment decay, in [0, 1)."""
    beta2: float = 0.999
    """Second-moment decay, in [0, 1)."""
    eps: float = 1e-8
    """Added to the root of the second moment."""

    kind: ClassVar[str] = "adam"
    name: ClassVar[str] = "Adam"
    threshold_formula: ClassVar[str] = "(2+2β1)/((1-β1) lr)"
    adaptive: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta1", self.beta1)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def threshold(self) -> float:
        return (2.0 + 2.0 * self.beta1) / ((1.0 - self.beta1) * self.lr)

    def init(self, w):
        return self._transform().init(w)

    def step(self, w, state, g, loss):
        del loss
        return _optax_step(self._transform(), w, state, g, self.lr, self.threshold())

    def preconditioner(self, state):
        st = state[0]
        nu_hat = st.nu / (1.0 - self.beta2 ** st.count.astype(st.nu.dtype))
        return jnp.sqrt(nu_hat) + self.eps

    def _transform(self) -> "optax.GradientTransformation":
        import optax

        return optax.adam(self.lr, b1=self.beta1, b2=self.beta2, eps=self.eps)


class OptaxRule(Rule):
    r"""Any optax transformation as a rule: $w_{t+1} = w_t + u_t$, $(u_t, s_{t+1}) =$
    ``tx.update(g_t, s_t, w_t)``. ``lr`` and ``threshold_value`` are only reported (NaN when
    None); ``precondition(state)``, if given, is the diagonal $P$ of the step that produced
    ``state``. Its ``kind`` is its own (not a config choice: a transformation is no JSON value).

    >>> import jax.numpy as jnp, optax
    >>> r = OptaxRule(optax.sgd(0.5), kind="sgd", lr=0.5, threshold_value=4.0)
    >>> float(r.step(jnp.array([2.0]), r.init(jnp.zeros(1)), jnp.array([1.0]), 0.0)[0][0])
    1.5
    """

    tx: "optax.GradientTransformation"
    """The transformation; its updates are added to w."""
    kind: str = "optax"
    """Short name (the process's default name)."""
    lr: float | None = None
    """The learning rate to report as lr_eff (None: NaN)."""
    threshold_value: float | None = None
    """The stability threshold to report (None: NaN, unknown)."""
    threshold_formula: str = "threshold"
    """The threshold in words, for figures."""
    precondition: Callable[[Any], Array] | None = None
    """P(state) for adaptive transformations (None: P = I)."""

    def __check_init__(self) -> None:
        if not (isinstance(self.kind, str) and self.kind):
            raise ConfigError("kind", self.kind, "a non-empty string")
        if self.lr is not None:
            check_positive("lr", self.lr)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def adaptive(self) -> bool:
        return self.precondition is not None

    def threshold(self) -> float | None:
        return self.threshold_value

    def init(self, w):
        return self.tx.init(w)

    def step(self, w, state, g, loss):
        del loss
        lr = math.nan if self.lr is None else self.lr
        thr = math.nan if self.threshold_value is None else self.threshold_value
        return _optax_step(self.tx, w, state, g, lr, thr)

    def preconditioner(self, state):
        return None if self.precondition is None else self.precondition(state)


def _config_rules() -> dict[str, type[Rule]]:
    """The concrete subclasses of `Rule` (at any depth) whose ``kind`` is a class constant."""
    out: dict[str, type[Rule]] = {}
    todo = list(Rule.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        per_instance = "kind" in {f.name for f in dataclasses.fields(cls)}
        if not per_instance and isinstance(getattr(cls, "kind", None), str):
            out[cls.kind] = cls
    return out


RULES: dict[str, type[Rule]] = _config_rules()
"""The rules a config can name, by ``kind``: ``RULES["adam"] is Adam``."""
