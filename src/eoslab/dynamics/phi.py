r"""The limit of gradient flow $\Phi(x)=\lim_{t\to\infty}\phi(x,t)$, with diffrax.

Gradient flow itself, $\phi(w_0,\eta t)$ step by step, is the process `GradientFlow`.

Near the manifold of minimizers gradient flow is stiff (fast normal directions, slow approach
along small eigenvalues): small problems use the L-stable implicit solver Kvaerno5, large ones the
explicit adaptive Tsit5 (no dense Jacobian). The solver's tolerances default to the point's
precision (`default_tolerances`): asking a float32 solve for ``rtol=1e-8`` (below its machine
epsilon) only makes the adaptive step collapse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature._checks import check_w
from ..errors import ConfigError, NotConvergedError, check_choice, check_positive
from ..objective import LossLike, Objective, as_objective

if TYPE_CHECKING:
    import diffrax

__all__ = [
    "PhiResult",
    "phi",
    "phi_result",
    "gradient_field",
    "ode_solver",
    "SOLVERS",
    "default_tolerances",
]

SOLVERS = ("auto", "kvaerno5", "tsit5")
_IMPLICIT_MAX_DIM = 256


class PhiResult(NamedTuple):
    x: Float[Array, " d"]  # Phi(w)
    t: Float[Array, ""]  # gradient-flow time at which |grad L| fell below gtol
    grad_norm: Float[Array, ""]  # |grad L| at x
    steps: Array  # solver steps taken
    converged: Array  # bool


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of the gradient-flow solve at this precision: ``(1e-8, 1e-10)`` in
    float64, ``(1e-5, 1e-7)`` in float32 (about 100 machine epsilons)."""
    if jnp.finfo(dtype).bits >= 64:
        return 1e-8, 1e-10
    return 1e-5, 1e-7


def _tolerances(w: Array, rtol: float | None, atol: float | None) -> tuple[float, float]:
    r0, a0 = default_tolerances(w.dtype)
    return (r0 if rtol is None else rtol), (a0 if atol is None else atol)


def ode_solver(name: str, d: int, rtol: float, atol: float) -> diffrax.AbstractSolver:
    """Kvaerno5 (L-stable, implicit) for small problems under ``"auto"``, else Tsit5."""
    import diffrax

    if name == "auto":
        name = "kvaerno5" if d <= _IMPLICIT_MAX_DIM else "tsit5"
    if name == "kvaerno5":
        return diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=rtol, atol=atol))
    return diffrax.Tsit5()


def gradient_field(obj: Objective) -> diffrax.ODETerm:
    r"""The vector field $-\nabla L$ of gradient flow."""
    import diffrax

    g = jax.grad(obj)
    return diffrax.ODETerm(lambda t, y, args: -g(y))


@eqx.filter_jit
def _phi(obj, w, *, gtol, t_max, solver, rtol, atol, max_steps):
    import diffrax

    g = jax.grad(obj)
    event = diffrax.Event(lambda t, y, args, **kw: jnp.linalg.norm(g(y)) < gtol)
    sol = diffrax.diffeqsolve(
        gradient_field(obj),
        ode_solver(solver, w.shape[0], rtol, atol),
        # diffrax promotes y0 to the times' dtype: times in w's dtype keep a float32 point float32
        # when 64-bit mode is on (Python-float times would make it float64)
        t0=jnp.zeros((), w.dtype),
        t1=jnp.asarray(t_max, w.dtype),
        dt0=None,
        y0=w,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=event,
        max_steps=max_steps,
        throw=False,
    )
    x = sol.ys[-1]
    gn = jnp.linalg.norm(g(x))
    return PhiResult(x, sol.ts[-1], gn, sol.stats["num_steps"], gn < gtol)


def _check_tols(gtol, t_max, rtol, atol, max_steps, solver):
    for name, val in (("gtol", gtol), ("t_max", t_max), ("rtol", rtol), ("atol", atol)):
        check_positive(name, val)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError("max_steps", max_steps, "an integer >= 1")
    check_choice("solver", solver, SOLVERS)


def phi_result(
    loss: LossLike,
    w: Float[Array, " d"],
    *,
    gtol: float = 1e-8,
    t_max: float = 1e6,
    solver: Literal["auto", "kvaerno5", "tsit5"] = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
) -> PhiResult:
    r"""$\Phi(w)$ with its diagnostics; does not raise when the flow has not converged."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    rtol, atol = _tolerances(w, rtol, atol)
    _check_tols(gtol, t_max, rtol, atol, max_steps, solver)
    return _phi(
        obj,
        w,
        gtol=float(gtol),
        t_max=float(t_max),
        solver=solver,
        rtol=float(rtol),
        atol=float(atol),
        max_steps=max_steps,
    )


def phi(
    loss: LossLike,
    w: Float[Array, " d"],
    *,
    gtol: float = 1e-8,
    t_max: float = 1e6,
    solver: Literal["auto", "kvaerno5", "tsit5"] = "auto",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
) -> Float[Array, " d"]:
    r"""$\Phi(w)=\lim_{t\to\infty}\phi(w,t)$, where $\partial_t\phi=-\nabla L(\phi)$, $\phi(w,0)=w$.

    Integrates gradient flow until $\|\nabla L\| <$ ``gtol`` (a stopping event checked after
    every accepted solver step); ``rtol``/``atol`` default to `default_tolerances` of ``w``.
    Raises `NotConvergedError` when that does not happen within flow time ``t_max`` or
    ``max_steps`` solver steps.

    >>> import jax.numpy as jnp
    >>> x = phi(lambda w: 0.5 * (w @ w - 1.0) ** 2, jnp.array([0.6, 0.8]) * 1.5, gtol=1e-6)
    >>> [round(float(v), 4) for v in x]
    [0.6, 0.8]
    """
    res = phi_result(
        loss, w, gtol=gtol, t_max=t_max, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps
    )
    if not bool(res.converged):
        raise NotConvergedError(
            f"gradient flow did not reach |grad L| < gtol={gtol:g} (reached "
            f"{float(res.grad_norm):.3g} at flow time {float(res.t):.3g} after {int(res.steps)} "
            f"steps). Raise t_max or max_steps, loosen gtol, or check that w is in the basin of a "
            f"manifold of minimizers."
        )
    return res.x
