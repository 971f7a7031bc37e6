r"""The cheap stand-ins for the sharpness $\lambda_1(\nabla^2L)$ that large-scale studies use.

- **critical sharpness** (Kalra et al. 2026): $2/\eta_c$, $\eta_c$ the smallest step size along a
  direction $d$ at which the loss rises, $L(w+\eta d) > L(w)$; found by a line search of a few
  forward passes. On a quadratic with $d=-g$ the loss rises past
  $\eta_c = 2g^\top g/g^\top Ag$, so the critical sharpness is $g^\top Ag/g^\top g$: the
  directional sharpness along the gradient.
- **directional sharpness** $u^\top Hu/\|u\|^2$ along a direction (the update, the gradient):
  one Hessian-vector product.
- **trace per parameter** $\mathrm{tr}\,H/D$ (Hutchinson).
- **per-layer sharpness**: the top eigenvalue of each diagonal block $H_{BB}$ of the parameter
  groups of a model (block-diagonal curvature), certified by Lanczos (`BlockOperator`).

The batch sharpness, the batch $\lambda_{\max}$ (`eoslab.curvature.batch_sharpness`) and the
Gauss-Newton matrix (`eoslab.curvature.GaussNewtonOperator`) are the others.
"""

# (no `from __future__ import annotations`: equinox reads BlockOperator's annotations unquoted)
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..errors import ConfigError, check_int, check_positive
from ..objective import LossLike, ModelLoss, Objective, as_objective
from ._checks import check_vector, check_w
from .eigen import EigResult, top_eigenpairs
from .operator import AbstractOperator, Linearization, as_operator
from .trace import hutchinson_trace

__all__ = [
    "BlockOperator",
    "CriticalEstimate",
    "critical_sharpness",
    "directional_sharpness",
    "layer_sharpness",
    "line_search",
    "parameter_groups",
    "trace_per_parameter",
]


class CriticalEstimate(NamedTuple):
    """The result of `critical_sharpness`.

    Attributes:
        value: $2/\\eta_c$ (0 when no rise was found within the budget; ``inf`` when the loss
            rises at every step tried, e.g. along an ascent direction).
        step: $\\eta_c$.
        evals: forward passes spent on the line search (not counting $L(w)$ or the gradient).
    """

    value: Array
    step: Array
    evals: Array


def _fit_root(p1, f1, p2, f2):
    r"""The positive root of $\varphi(\eta) = a\eta + b\eta^2$ through $(p_1,f_1)$, $(p_2,f_2)$
    (a quadratic through the origin, $\varphi(0) = 0$); NaN where there is none."""
    r1, r2 = f1 / p1, f2 / p2
    b = (r2 - r1) / (p2 - p1)
    a = r1 - b * p1
    root = -a / b
    ok = jnp.isfinite(root) & (b > 0) & (root > 0) & (p1 > 0) & (p2 > 0) & (p1 != p2)
    return jnp.where(ok, root, jnp.nan)


def line_search(phi, eta0, *, max_evals: int, rtol: float):
    r"""$\eta_c$: the first sign change of $\varphi(\eta) = L(w+\eta d) - L(w)$, $\varphi(0)=0$.

    Brackets by doubling (no rise yet) or halving (a rise at every point tried), each new point
    the root of the quadratic through the origin and the last two points when that root lies
    where the bracket allows (exact on a quadratic, so three passes there); inside a bracket
    $[lo, hi]$ with $\varphi(lo)\le0<\varphi(hi)$ the same fit through its ends, safeguarded by
    bisection. Stops when the next point moves by at most ``rtol`` relative. Pure and
    jit-able; returns ``(eta_c, evals)``.
    """
    dtype = jnp.result_type(eta0)
    nan, inf = jnp.asarray(jnp.nan, dtype), jnp.asarray(jnp.inf, dtype)
    zero = jnp.zeros((), dtype)

    def propose(s):
        lo, flo, hi, fhi, p1, f1, p2, f2, _, _, _ = s
        bracketed = (lo > 0) & jnp.isfinite(hi)
        fit_b = _fit_root(lo, flo, hi, fhi)
        fit_l = _fit_root(p1, f1, p2, f2)
        inside = jnp.where((fit_b > lo) & (fit_b < hi), fit_b, 0.5 * (lo + hi))
        # no rise yet: extrapolate (at most 1000x further), else double
        up = jnp.where(fit_l > lo, jnp.minimum(fit_l, 1e3 * lo), 2.0 * lo)
        # rises only: interpolate towards 0, else halve
        down = jnp.where((fit_l > 0) & (fit_l < hi), fit_l, 0.5 * hi)
        first = (lo == 0) & ~jnp.isfinite(hi)
        return jnp.where(first, eta0, jnp.where(bracketed, inside, jnp.where(lo > 0, up, down)))

    def cond(s):
        return (s[8] < max_evals) & ~s[9]

    def body(s):
        lo, flo, hi, fhi, p1, f1, p2, f2, n, _, _ = s
        eta = propose(s)
        f = phi(eta)
        rise = f > 0
        lo2, flo2 = jnp.where(rise, lo, eta), jnp.where(rise, flo, f)
        hi2, fhi2 = jnp.where(rise, eta, hi), jnp.where(rise, f, fhi)
        s2 = (lo2, flo2, hi2, fhi2, p2, f2, eta, f, n + 1, False, eta)
        bracketed = (lo2 > 0) & jnp.isfinite(hi2)
        model = jnp.where(
            bracketed, _fit_root(lo2, flo2, hi2, fhi2), _fit_root(p2, f2, eta, f)
        )  # where the quadratic model puts the root now
        done = jnp.abs(model - eta) <= rtol * jnp.abs(eta)  # False for NaN
        return (*s2[:9], done, jnp.where(done, model, eta))

    init = (zero, zero, inf, nan, nan, nan, nan, nan, jnp.asarray(0), False, nan)
    lo, flo, hi, fhi, *_, n, done, last = jax.lax.while_loop(cond, body, init)
    bracketed = (lo > 0) & jnp.isfinite(hi)
    fit = _fit_root(lo, flo, hi, fhi)
    best = jnp.where((fit >= lo) & (fit <= hi), fit, 0.5 * (lo + hi))
    eta_c = jnp.where(
        done, last, jnp.where(bracketed, best, jnp.where(jnp.isfinite(hi), zero, inf))
    )
    return eta_c, n


@eqx.filter_jit
def _critical(objective, w, d, loss0, eta0, *, max_evals, rtol):
    def phi(eta):
        return objective(w + eta * d) - loss0

    eta_c, n = line_search(phi, jnp.asarray(eta0, w.dtype), max_evals=max_evals, rtol=rtol)
    value = jnp.where(eta_c > 0, 2.0 / jnp.where(eta_c > 0, eta_c, 1.0), jnp.inf)
    value = jnp.where(jnp.isinf(eta_c), 0.0, value)
    return CriticalEstimate(value, eta_c, n)


def critical_sharpness(
    loss: LossLike,
    w: Float[Array, " d"] | None = None,
    direction: Float[Array, " d"] | None = None,
    *,
    eta0: float = 1.0,
    max_evals: int = 10,
    rtol: float = 1e-6,
) -> CriticalEstimate:
    r"""Critical sharpness $2/\eta_c$ along ``direction`` $d$ (Kalra et al. 2026):
    $\eta_c = \min\{\eta > 0: L(w+\eta d) > L(w)\}$, by `line_search` from ``eta0``.

    Each new point is the root of a quadratic model; ``eta0`` within a factor 1000 of
    $\eta_c$ costs 3 passes on a quadratic, each further factor 1000 one more.
    ``direction=None`` is gradient descent's, $d=-\nabla L(w)$; for an optimizer pass its update
    per unit learning rate ($\Delta w/\eta$), so that the value compares with $2/\eta$ (the loss
    rises along the step taken iff $2/\eta_c > 2/\eta$). On $L = \tfrac12 w^\top Aw + b^\top w$
    with $d = -g$ it is $g^\top Ag/g^\top g$ exactly. Costs ``evals`` forward passes
    ($\le$ ``max_evals``; about 3 on a quadratic from a fair ``eta0``, e.g. the learning rate),
    one for $L(w)$ and, for ``direction=None``, a gradient.
    """
    obj = as_objective(loss, w)
    w = check_w(obj.w0 if w is None else w, obj)
    check_positive("eta0", eta0)
    check_positive("rtol", rtol)
    max_evals = check_int("max_evals", max_evals, 2)
    d = -jax.grad(obj)(w) if direction is None else check_vector("direction", direction, w)
    eta0 = jnp.asarray(eta0, w.dtype)  # traced: one compiled search for every start
    return _critical(obj, w, d, obj(w), eta0, max_evals=max_evals, rtol=rtol)


@eqx.filter_jit
def _directional(op: AbstractOperator, U: Array) -> Array:
    HU = op.mm(U)
    uu = jnp.sum(U * U, axis=0)
    return jnp.where(uu > 0, jnp.sum(U * HU, axis=0) / jnp.where(uu > 0, uu, 1.0), jnp.nan)


def directional_sharpness(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    u: Float[Array, " d"] | Float[Array, "d m"] | None = None,
) -> Array:
    r"""$u^\top Hu/\|u\|^2$ for a direction (or each column of a block) $u$; ``u=None`` is the
    gradient. One Hessian-vector product per column (NaN for a zero column).

    With an operator pass ``u`` by keyword: ``directional_sharpness(op, u=v)``.
    """
    op = as_operator(loss, w)
    U = op.step_direction() if u is None else jnp.asarray(u, op.dtype)
    single = U.ndim == 1
    U = U[:, None] if single else U
    if U.ndim != 2 or U.shape[0] != op.dim:
        raise ConfigError("u.shape", U.shape, f"({op.dim},) or ({op.dim}, m)")
    out = _directional(op, U)
    return out[0] if single else out


def trace_per_parameter(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    n_probes: int = 10,
    key: Array | None = None,
) -> tuple[Array, Array]:
    r"""$\mathrm{tr}\,H/D$ and its standard error (Hutchinson, ``n_probes`` products;
    `eoslab.curvature.hutchinson_trace`): the mean eigenvalue, at most $\lambda_1$."""
    op = as_operator(loss, w)
    est = hutchinson_trace(op, n_probes=n_probes, key=key)
    return est.value / op.dim, est.stderr / op.dim


class BlockOperator(AbstractOperator):
    r"""The diagonal block $A_{BB}$ of an operator on the coordinates $B$ where ``mask`` is 1,
    as $MAM$ on $\mathbb{R}^D$ ($M$ = diag(``mask``)): the same nonzero spectrum as $A_{BB}$,
    plus zeros. One product of $A$ per product.

    Attributes:
        inner: the operator $A$ (e.g. a `HessianOperator`).
        mask: 0/1 vector of shape ``(D,)``.
    """

    inner: AbstractOperator
    mask: Float[Array, " d"]
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric"})

    @property
    def w(self) -> Array:
        return self.inner.w

    def linearize(self) -> Linearization:
        value, grad, mm = self.inner.linearize()
        m = jnp.asarray(self.mask, self.dtype)[:, None]
        return value, grad, lambda X: m * mm(m * X)

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        return self.inner.grad_quadratic_form(jnp.asarray(self.mask, self.dtype) * u)

    def step_direction(self) -> Float[Array, " d"]:
        return jnp.asarray(self.mask, self.dtype) * self.inner.step_direction()

    def as_matrix(self) -> Float[Array, "d d"]:
        m = jnp.asarray(self.mask, self.dtype)
        return m[:, None] * self.inner.as_matrix() * m[None, :]

    def at(self, w: Float[Array, " d"]) -> "BlockOperator":
        return BlockOperator(self.inner.at(w), self.mask)

    def check(self) -> None:
        """The inner operator's checks, and a 0/1 mask of shape ``(D,)`` with a 1."""
        self.inner.check()
        if "symmetric" not in self.inner.tags:
            raise ConfigError("inner", type(self.inner).__name__, "a symmetric operator")
        mask = np.asarray(self.mask)
        if mask.shape != (self.dim,):
            raise ConfigError("mask.shape", mask.shape, f"({self.dim},)")
        if not np.all((mask == 0) | (mask == 1)) or not mask.any():
            raise ConfigError("mask", "<not a 0/1 vector with a 1>", "a 0/1 vector with a 1")


def parameter_groups(objective: Objective) -> dict[str, np.ndarray]:
    """The model's parameter groups (the top-level keys of its parameter pytree, e.g.
    ``"layer0"``, ``"head"``) as 0/1 masks over the flat trainable vector; an objective not
    built by `Objective.from_model` is one group, ``"all"``."""
    fn = objective.fn
    if not isinstance(fn, ModelLoss):
        return {"all": np.ones(objective.dim)}
    # ravel_pytree lays the leaves out one after another, in tree_leaves order
    shapes = fn.unravel(jnp.zeros(objective.dim, objective.dtype))
    out: dict[str, np.ndarray] = {}
    start = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        mask = out.setdefault(_top(path[0]), np.zeros(objective.dim))
        mask[start : start + leaf.size] = 1.0
        start += leaf.size
    return out


def _top(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def layer_sharpness(
    loss: Objective | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    groups: dict[str, np.ndarray] | None = None,
    *,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    key: Array | None = None,
) -> dict[str, EigResult]:
    r"""The certified top eigenpair of each diagonal block $H_{BB}$ of $H$, one per parameter
    group (default `parameter_groups` of the objective): block-diagonal curvature, named after
    the model's groups. Each solve costs the products of a Lanczos run (``matvecs``)."""
    op = as_operator(loss, w)
    if groups is None:
        obj = op.objective if hasattr(op, "objective") else None
        groups = parameter_groups(obj) if isinstance(obj, Objective) else {"all": np.ones(op.dim)}
    out = {}
    for i, (name, mask) in enumerate(groups.items()):
        sub = None if key is None else jax.random.fold_in(key, i)
        block = BlockOperator(op, jnp.asarray(mask, op.dtype))
        out[name] = top_eigenpairs(block, k=1, tol=tol, max_matvecs=max_matvecs, key=sub)
    return out
