r"""Update rules: pure ``init``/``step`` pairs on a flat parameter vector.

Every rule is (a special case of) preconditioned GD with momentum,

.. math:: w_{t+1} = w_t - \eta_t\, P_t^{-1} m_t ,

and reports, for each step, its effective learning rate $\eta_t$ (``lr_eff``) and the stability
threshold $\tau$ that the (effective) sharpness is compared with: GD is stable on a quadratic
while $\lambda_1(H) < 2/\eta$, heavy ball while $\lambda_1 < (2+2\beta)/\eta$, Nesterov while
$\lambda_1 < (2+2\beta)/((1+2\beta)\eta)$, and RMSProp/Adam while the *preconditioned* sharpness
$\lambda_1(P^{-1}H)$ is below $2/\eta$ and $(2+2\beta_1)/((1-\beta_1)\eta)$ (Cohen et al., 2022).
Adaptive rules expose $P$ (a diagonal, as a vector) through ``rule.preconditioner(state)``; it is
the preconditioner of the step that produced ``state``.

A rule is a `Rule` (a ``NamedTuple`` of functions, in the spirit of
``optax.GradientTransformation``)::

    state = rule.init(w)
    w, state, info = rule.step(w, state, g, loss)   # info: StepInfo(lr_eff, threshold)

``g`` is $\nabla L(w)$ and ``loss`` is $L(w)$ (used by sqrt-loss GD). Where optax implements
exactly the same update (GD, heavy ball, Nesterov, RMSProp, Adam), the rule runs optax inside.

>>> import jax.numpy as jnp
>>> r = gd(0.1)
>>> w, s, info = r.step(jnp.ones(2), r.init(jnp.ones(2)), jnp.array([1.0, 2.0]), jnp.array(0.5))
>>> [round(float(x), 4) for x in w], round(float(info.threshold), 4)
([0.9, 0.8], 20.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Union

import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError, check_positive

if TYPE_CHECKING:
    import optax

__all__ = [
    "GD",
    "NormalizedGD",
    "SqrtLossGD",
    "HeavyBall",
    "Nesterov",
    "RMSProp",
    "Adam",
    "RuleConfig",
    "Rule",
    "StepInfo",
    "gd",
    "normalized_gd",
    "sqrt_loss_gd",
    "heavy_ball",
    "nesterov",
    "rmsprop",
    "adam",
    "RULES",
    "from_optax",
    "adam_threshold",
    "heavy_ball_threshold",
]


class StepInfo(NamedTuple):
    """What a step reports besides the new point (scalars, same dtype as ``w``)."""

    lr_eff: Float[Array, ""]  # the step's effective learning rate eta_t
    threshold: Float[Array, ""]  # stability threshold for the (effective) sharpness


class Rule(NamedTuple):
    """An update rule: ``init(w) -> state``, ``step(w, state, g, loss) -> (w, state, info)``.

    Attributes:
        name: short name (``"gd"``, ``"adam"``, ...).
        init: ``init(w) -> state`` (a pytree of arrays).
        step: ``step(w, state, g, loss) -> (w_new, state_new, StepInfo)``; pure, jit-able.
        preconditioner: ``P(state) -> (D,)`` diagonal of the preconditioner of the step that
            produced ``state``, or ``None`` for rules without one (then $P = I$).
        hyper: the hyperparameters, for records.
    """

    name: str
    init: Callable[[Array], Any]
    step: Callable[[Array, Any, Array, Array], tuple[Array, Any, StepInfo]]
    preconditioner: Callable[[Any], Array] | None
    hyper: dict[str, Any]

    @property
    def adaptive(self) -> bool:
        """Whether the rule has a preconditioner (its threshold is for $\\lambda_1(P^{-1}H)$)."""
        return self.preconditioner is not None


def _check_beta(name: str, beta: float) -> None:
    ok = isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta)
    if not (ok and 0.0 <= beta < 1.0):
        raise ConfigError(name, beta, "a number in [0, 1)")


def _scalar(x: float, like: Array) -> Array:
    return jnp.asarray(x, dtype=like.dtype)


def from_optax(
    tx: optax.GradientTransformation,
    *,
    name: str = "optax",
    lr: float = float("nan"),
    threshold: float = float("nan"),
    preconditioner: Callable[[Any], Array] | None = None,
    hyper: dict[str, Any] | None = None,
) -> Rule:
    r"""Any optax transformation as a rule: $w_{t+1} = w_t + u_t$, $(u_t, s_{t+1}) =$
    ``tx.update(g_t, s_t, w_t)``. ``lr`` and ``threshold`` are only reported (NaN: unknown).

    >>> import jax.numpy as jnp, optax
    >>> r = from_optax(optax.sgd(0.5), lr=0.5, threshold=4.0)
    >>> float(r.step(jnp.array([2.0]), r.init(jnp.zeros(1)), jnp.array([1.0]), 0.0)[0][0])
    1.5
    """

    def init(w):
        return tx.init(w)

    def step(w, state, g, loss):
        del loss
        updates, state = tx.update(g, state, w)
        info = StepInfo(_scalar(lr, w), _scalar(threshold, w))
        return w + updates.astype(w.dtype), state, info

    return Rule(name, init, step, preconditioner, dict(hyper or {}))


class _Empty(NamedTuple):
    pass


def heavy_ball_threshold(lr: float, beta: float = 0.9) -> float:
    r"""Heavy ball's stability threshold for $\lambda_1(H)$: $(2+2\beta)/\eta$."""
    check_positive("lr", lr)
    _check_beta("beta", beta)
    return (2.0 + 2.0 * beta) / lr


def adam_threshold(lr: float, beta1: float = 0.9) -> float:
    r"""Adam's stability threshold for $\lambda_1(P^{-1}H)$: $(2+2\beta_1)/((1-\beta_1)\eta)$."""
    check_positive("lr", lr)
    _check_beta("beta1", beta1)
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


@dataclasses.dataclass(frozen=True)
class GD:
    r"""Gradient descent, $w_{t+1} = w_t - \eta\nabla L(w_t)$; stable while $\lambda_1 < 2/\eta$."""

    lr: float = 0.1
    """Learning rate eta."""

    kind: ClassVar[str] = "gd"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair (runs ``optax.sgd``)."""
        import optax

        del loss_min
        return from_optax(
            optax.sgd(self.lr),
            name=self.kind,
            lr=self.lr,
            threshold=2.0 / self.lr,
            hyper=dataclasses.asdict(self),
        )


@dataclasses.dataclass(frozen=True)
class NormalizedGD:
    r"""Normalized GD, $w_{t+1} = w_t - \eta\,\nabla L/\|\nabla L\|$: steps of length $\eta$.

    Effective LR $\eta_t = \eta/\|\nabla L(w_t)\|$, threshold $2/\eta_t = 2\|\nabla L\|/\eta$.
    At a zero gradient the step is zero.
    """

    lr: float = 0.01
    """Step length eta."""

    kind: ClassVar[str] = "normalized_gd"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair."""
        del loss_min
        lr = self.lr

        def step(w, state, g, loss):
            del loss
            norm = jnp.linalg.norm(g)
            safe = jnp.where(norm > 0, norm, 1.0)
            lr_eff = jnp.where(norm > 0, lr / safe, 0.0).astype(w.dtype)
            thr = jnp.where(norm > 0, 2.0 * norm / lr, jnp.inf).astype(w.dtype)
            return w - lr_eff * g, state, StepInfo(lr_eff, thr)

        return Rule(self.kind, lambda w: _Empty(), step, None, dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class SqrtLossGD:
    r"""GD on $\sqrt{L - L_{\min}}$: $w_{t+1} = w_t - \eta\,\nabla L / (2\sqrt{L - L_{\min}})$.

    Effective LR $\eta_t = \eta / (2\sqrt{L(w_t) - L_{\min}})$ on $L$, threshold $2/\eta_t$ for
    $\lambda_1(\nabla^2 L)$. At or below $L_{\min}$ the step is zero (the subgradient of the
    safe square root). ``loss`` passed to ``step`` must be $L$, not its square root; $L_{\min}$ is
    the objective's ``loss_min``.
    """

    lr: float = 0.1
    """Learning rate eta on sqrt(L - L_min)."""

    kind: ClassVar[str] = "sqrt_loss_gd"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)

    def build(self, loss_min: float = 0.0) -> Rule:
        r"""The rule's ``init``/``step`` pair for the given $L_{\min}$."""
        if not (isinstance(loss_min, (int, float)) and math.isfinite(loss_min)):
            raise ConfigError("loss_min", loss_min, "a finite number")
        lr = self.lr

        def step(w, state, g, loss):
            u = jnp.asarray(loss, w.dtype) - loss_min
            pos = u > 0
            root = jnp.sqrt(jnp.where(pos, u, 1.0))
            lr_eff = jnp.where(pos, lr / (2.0 * root), 0.0).astype(w.dtype)
            thr = jnp.where(pos, 4.0 * root / lr, jnp.inf).astype(w.dtype)
            return w - lr_eff * g, state, StepInfo(lr_eff, thr)

        hyper = {**dataclasses.asdict(self), "loss_min": loss_min}
        return Rule(self.kind, lambda w: _Empty(), step, None, hyper)


@dataclasses.dataclass(frozen=True)
class HeavyBall:
    r"""Polyak heavy ball, $m_t = \beta m_{t-1} + \nabla L(w_t)$, $w_{t+1} = w_t - \eta m_t$.

    Equivalently $w_{t+1} = w_t - \eta\nabla L(w_t) + \beta(w_t - w_{t-1})$; threshold
    $(2 + 2\beta)/\eta$ (``optax.sgd(lr, momentum=beta)``).
    """

    lr: float = 0.01
    """Learning rate eta."""
    beta: float = 0.9
    """Momentum beta, in [0, 1)."""

    kind: ClassVar[str] = "heavy_ball"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta", self.beta)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair."""
        import optax

        del loss_min
        tx = optax.sgd(self.lr, momentum=self.beta) if self.beta > 0 else optax.sgd(self.lr)
        thr = heavy_ball_threshold(self.lr, self.beta)
        return from_optax(
            tx, name=self.kind, lr=self.lr, threshold=thr, hyper=dataclasses.asdict(self)
        )


@dataclasses.dataclass(frozen=True)
class Nesterov:
    r"""Nesterov momentum, $m_t = \beta m_{t-1} + g_t$, $w_{t+1} = w_t - \eta(g_t + \beta m_t)$.

    Threshold $(2 + 2\beta)/((1 + 2\beta)\eta)$ (``optax.sgd(lr, momentum=beta, nesterov=True)``).
    """

    lr: float = 0.01
    """Learning rate eta."""
    beta: float = 0.9
    """Momentum beta, in [0, 1)."""

    kind: ClassVar[str] = "nesterov"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta", self.beta)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair."""
        import optax

        del loss_min
        lr, beta = self.lr, self.beta
        tx = optax.sgd(lr, momentum=beta, nesterov=True) if beta > 0 else optax.sgd(lr)
        thr = (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * lr)
        return from_optax(tx, name=self.kind, lr=lr, threshold=thr, hyper=dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class RMSProp:
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

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair and preconditioner."""
        import optax

        del loss_min
        beta2, eps, bc = self.beta2, self.eps, bool(self.bias_correction)
        tx = optax.chain(
            optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=bc),
            optax.scale(-self.lr),
        )

        def precond(state):
            rms = state[0]
            nu = rms.nu
            if bc:
                nu = nu / (1.0 - beta2 ** rms.count.astype(nu.dtype))
            return jnp.sqrt(nu) + eps

        return from_optax(
            tx,
            name=self.kind,
            lr=self.lr,
            threshold=2.0 / self.lr,
            preconditioner=precond,
            hyper=dataclasses.asdict(self),
        )


@dataclasses.dataclass(frozen=True)
class Adam:
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

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_beta("beta1", self.beta1)
        _check_beta("beta2", self.beta2)
        check_positive("eps", self.eps, allow_zero=True)

    def build(self, loss_min: float = 0.0) -> Rule:
        """The rule's ``init``/``step`` pair and preconditioner."""
        import optax

        del loss_min
        beta2, eps = self.beta2, self.eps
        tx = optax.adam(self.lr, b1=self.beta1, b2=beta2, eps=eps)

        def precond(state):
            st = state[0]
            nu_hat = st.nu / (1.0 - beta2 ** st.count.astype(st.nu.dtype))
            return jnp.sqrt(nu_hat) + eps

        return from_optax(
            tx,
            name=self.kind,
            lr=self.lr,
            threshold=adam_threshold(self.lr, self.beta1),
            preconditioner=precond,
            hyper=dataclasses.asdict(self),
        )


RuleConfig = Union[GD, NormalizedGD, SqrtLossGD, HeavyBall, Nesterov, RMSProp, Adam]  # noqa: UP007
"""The rules as typed configs: ``GD(lr=0.1).build()`` is the `Rule`."""


def gd(lr: float) -> Rule:
    r"""Gradient descent at learning rate ``lr`` (`GD`).

    >>> import jax.numpy as jnp
    >>> r = gd(0.5)
    >>> float(r.step(jnp.array([2.0]), r.init(jnp.zeros(1)), jnp.array([1.0]), 0.0)[0][0])
    1.5
    """
    return GD(lr=lr).build()


def normalized_gd(lr: float) -> Rule:
    """Normalized GD with step length ``lr`` (`NormalizedGD`)."""
    return NormalizedGD(lr=lr).build()


def sqrt_loss_gd(lr: float, loss_min: float = 0.0) -> Rule:
    """GD on sqrt(L - loss_min) at learning rate ``lr`` (`SqrtLossGD`)."""
    return SqrtLossGD(lr=lr).build(loss_min)


def heavy_ball(lr: float, *args: Any, **hyper: Any) -> Rule:
    """Heavy ball at learning rate ``lr``; ``beta`` as in `HeavyBall`."""
    return HeavyBall(lr, *args, **hyper).build()


def nesterov(lr: float, *args: Any, **hyper: Any) -> Rule:
    """Nesterov momentum at learning rate ``lr``; ``beta`` as in `Nesterov`."""
    return Nesterov(lr, *args, **hyper).build()


def rmsprop(lr: float, *args: Any, **hyper: Any) -> Rule:
    """RMSProp at learning rate ``lr``; ``beta2``, ``eps``, ``bias_correction`` as in `RMSProp`."""
    return RMSProp(lr, *args, **hyper).build()


def adam(lr: float, *args: Any, **hyper: Any) -> Rule:
    """Adam at learning rate ``lr``; ``beta1``, ``beta2``, ``eps`` as in `Adam`."""
    return Adam(lr, *args, **hyper).build()


RULES: dict[str, Callable[..., Rule]] = {
    "gd": gd,
    "normalized_gd": normalized_gd,
    "sqrt_loss_gd": sqrt_loss_gd,
    "heavy_ball": heavy_ball,
    "nesterov": nesterov,
    "rmsprop": rmsprop,
    "adam": adam,
}
