r"""The limiting flows on the manifold of minimizers $\Gamma$ (Arora, Li, Panigrahi 2022).

Normalized GD tracks $\frac{dX}{d\tau}=-\frac14 P^\perp_{X,\Gamma}\nabla\log\lambda_1(X)$ and GD on
$\sqrt{L-\min L}$ tracks $\frac{dX}{d\tau}=-\frac18 P^\perp_{X,\Gamma}\nabla\lambda_1(X)$, with
$X(0)=\Phi(x_{\rm init})$ and $\tau=\eta^2 t$: step $t$ of the process advances $\tau$ by $\eta^2$
(``lr**2``), so it sits beside the optimizer's step $t$. Two integrators:

- `ProjectedLimitingFlow` solves $\dot X=-c\,P^\perp(X)\nabla f(X)$ with diffrax, $P^\perp$ and
  $\lambda_1$ from the dense Hessian (accurate; small problems; compiled).
- `RetractedLimitingFlow` takes Riemannian Euler steps $X\leftarrow\Phi(X-h\,c\,\nabla f(X))$ with
  matrix-free $\lambda_1, v_1$ and $\nabla\lambda_1=\nabla^3L[v_1,v_1]$ (first order in $h$;
  scales to networks; the paper's "sharpness minimizer"; a host loop). Every retraction runs
  gradient flow until $\|\nabla L\|<$ ``phi_gtol`` (never for a fixed time, which lets the
  points drift off $\Gamma$).

Both record ``loss`` and ``grad_norm`` at every flow point: the guard columns. On $\Gamma$ both
are zero; a flow whose guards grow well above their $\tau=0$ values has left $\Gamma$ and its
$\lambda_1$ is not the flow's.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import tyro
from jaxtyping import Array, Float

from ..curvature import top_eigenpairs
from ..curvature.operator import HessianOperator
from ..curvature.rounding import clip_tol
from ..errors import ConfigError, check_choice, check_positive
from ..objective import Objective
from .phi import phi
from .process import CompiledProcess, HostProcess, Process, Row, base_row

__all__ = [
    "ALGORITHMS",
    "LimitingFlow",
    "LimitingFlowState",
    "ProjectedLimitingFlow",
    "RetractedLimitingFlow",
    "flow_constant",
    "flow_field",
]

ALGORITHMS = ("normalized_gd", "sqrt_loss_gd")


def flow_constant(algorithm: str) -> tuple[float, bool]:
    r"""$(c, \log)$: the flow is $-c\,P^\perp\nabla\log\lambda_1$ or $-c\,P^\perp\nabla\lambda_1$.

    ``(0.25, True)`` for normalized GD, ``(0.125, False)`` for sqrt-loss GD.
    """
    check_choice("algorithm", algorithm, ALGORITHMS)
    return (0.25, True) if algorithm == "normalized_gd" else (0.125, False)


def flow_field(
    obj: Objective, X: Float[Array, " d"], c: float, log: bool, rank_tol: float
) -> tuple[Array, Array]:
    r"""$(-c\,P^\perp\nabla f(X), \lambda_1(X))$ with $P^\perp=I-UU^\top$, $U$ the eigenvectors of
    the dense Hessian above ``rank_tol`` $\cdot\lambda_1$, $f=\log\lambda_1$ or $\lambda_1$."""
    H = HessianOperator(obj, X)
    evals, evecs = jnp.linalg.eigh(H.as_matrix())
    lam1, v1 = evals[-1], evecs[:, -1]
    U = evecs * (evals > rank_tol * lam1).astype(X.dtype)[None, :]
    _, g = H.grad_quadratic_form(v1)
    g = g / lam1 if log else g
    return -c * (g - U @ (U.T @ g)), lam1


class LimitingFlow(NamedTuple):
    r"""The limiting flow sampled at flow times $\tau$ (`eoslab.limiting_flow`'s result)."""

    tau: Float[Array, " n"]  # flow times, tau = lr^2 * steps
    X: Float[Array, "n d"]  # X(tau), one row per time
    sharpness: Float[Array, " n"]  # lambda_1(X(tau))
    algorithm: str
    integrator: str
    loss: Float[Array, " n"]  # guard: L(X(tau)) (zero on Gamma)
    grad_norm: Float[Array, " n"]  # guard: |grad L(X(tau))| (zero on Gamma)

    def steps(self, lr: float) -> np.ndarray:
        """The optimizer step matching each flow time: tau / lr^2."""
        return np.asarray(self.tau) / lr**2

    def drift(self) -> dict[str, float]:
        r"""How far the guards grew: $\max_\tau L(X(\tau))/L(X(0))$ (``"loss"``) and
        $\max_\tau\|\nabla L(X(\tau))\|/\|\nabla L(X(0))\|$ (``"grad_norm"``). A flow that
        stays on $\Gamma$ keeps both near 1 or below; the reproductions fail a run above 2."""
        out = {}
        for name in ("loss", "grad_norm"):
            col = np.asarray(getattr(self, name), np.float64)
            out[name] = float(np.max(col) / col[0]) if col[0] > 0 else float("inf")
        return out

    def at(self, tau: float) -> np.ndarray:
        r"""$X(\tau)$ by linear interpolation between the saved times (within them)."""
        t, X = np.asarray(self.tau), np.asarray(self.X)
        if tau > t[-1] + 1e-12:
            raise ConfigError("flow", f"<ends at tau={t[-1]:g}>", f"a flow reaching tau={tau:g}")
        return np.stack([np.interp(tau, t, X[:, i]) for i in range(X.shape[1])])


class LimitingFlowState(NamedTuple):
    X: Float[Array, " d"]  # X(tau), on Gamma
    tau: Float[Array, ""]  # flow time so far
    t: Array  # steps taken (int)
    v: Float[Array, " d"]  # the last top eigenvector (warm start; retraction only)


def _check(algorithm: str, lr: float, schedule: tuple[float, ...] | None, phi_gtol: float) -> None:
    flow_constant(algorithm)
    check_positive("lr", lr)
    check_positive("phi_gtol", phi_gtol)
    if schedule is not None and (
        len(schedule) == 0 or not all(np.isfinite(schedule)) or min(schedule) <= 0
    ):
        raise ConfigError("schedule", "<tuple>", "positive flow-time increments, one per step")


class _LimitingFlowBase(Process):
    algorithm: Literal["normalized_gd", "sqrt_loss_gd"]
    """Whose flow: normalized GD (-1/4 P grad log lambda_1), sqrt-loss GD (-1/8 P grad lambda_1)."""
    lr: float
    """The optimizer's learning rate eta: each step advances tau by eta^2."""
    schedule: Annotated[tuple[float, ...] | None, tyro.conf.Suppress] = None
    """Flow time of each step instead of eta^2 (Python only)."""
    phi_gtol: float = 1e-8
    """Projections onto Gamma (the start, every retraction) run gradient flow until
    |grad L| < phi_gtol."""
    project_start: bool = True
    """Start from Phi(w0) (else from w0 itself, assumed on Gamma)."""

    def point(self, state: LimitingFlowState) -> Array:
        return state.X

    def _start(self, objective: Objective, w0: Array) -> LimitingFlowState:
        base = objective.base()
        X0 = phi(base, w0, gtol=self.phi_gtol) if self.project_start else w0
        zero = jnp.zeros((), w0.dtype)
        return LimitingFlowState(X0, zero, jnp.zeros((), jnp.int32), jnp.zeros_like(w0))

    def dtau(self, t: int | Array) -> Array | float:
        r"""Flow time of step $t$: $\eta^2$, or ``schedule[t]``."""
        if self.schedule is None:
            return self.lr**2
        return jnp.asarray(self.schedule)[jnp.minimum(t, len(self.schedule) - 1)]

    def _row(self, objective: Objective, state: LimitingFlowState) -> Row:
        nan = jnp.full((), jnp.nan, state.X.dtype)
        return {
            **base_row(objective, state.X),
            "lr_eff": nan,
            "threshold": nan,
            "tau": state.tau,
        }


class ProjectedLimitingFlow(_LimitingFlowBase, CompiledProcess):
    r"""The limiting flow by diffrax on $\dot X=-c\,P^\perp(X)\nabla f(X)$ (dense; compiled)."""

    rank_tol: float = 1e-6
    """Eigenvalues above rank_tol * lambda_1 span the normal space."""
    rtol: float = 1e-10
    """Relative tolerance of the adaptive ODE step."""
    atol: float = 1e-12
    """Absolute tolerance of the adaptive ODE step."""
    max_steps: int = 100_000
    """Most solver steps per process step."""

    def __check_init__(self) -> None:
        _check(self.algorithm, self.lr, self.schedule, self.phi_gtol)
        check_positive("rank_tol", self.rank_tol)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> LimitingFlowState:
        return self._start(objective, w0)

    def step(self, objective: Objective, state: LimitingFlowState):
        import diffrax

        base = objective.base()
        c, log = flow_constant(self.algorithm)
        term = diffrax.ODETerm(lambda t, y, args: flow_field(base, y, c, log, self.rank_tol)[0])
        dt = jnp.asarray(self.dtau(state.t), state.X.dtype)
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            t0=jnp.zeros((), state.X.dtype),
            t1=dt,
            dt0=None,
            y0=state.X,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            max_steps=self.max_steps,
            throw=False,
        )
        X = jnp.where(sol.result == diffrax.RESULTS.successful, sol.ys[-1], jnp.nan)
        lam1 = jnp.linalg.eigvalsh(HessianOperator(base, state.X).as_matrix())[-1]
        row = {**self._row(objective, state), "lambda1": lam1}
        return LimitingFlowState(X, state.tau + dt, state.t + 1, state.v), row


@eqx.filter_jit
def _euler_step(base: Objective, X: Array, v: Array, step: Array, c: float, log: bool) -> Array:
    lam, g = HessianOperator(base, X).grad_quadratic_form(v)
    return X - step * c * (g / lam if log else g)


class RetractedLimitingFlow(_LimitingFlowBase, HostProcess):
    r"""Riemannian Euler with $\Phi$ as retraction: $X\leftarrow\Phi(X-h\,c\,\nabla f(X))$.

    ``h`` is the largest Euler step in flow time (a step never crosses a probed step). Each
    retraction runs gradient flow until $\|\nabla L\|<$ ``phi_gtol`` (`eoslab.phi`, which raises
    `NotConvergedError` if it cannot), and so does the start $X(0)=\Phi(w_0)$: every point is on
    $\Gamma$ to the same tolerance, which the ``grad_norm`` guard column shows.
    """

    h: float = 0.01
    """Largest Euler step in flow time tau."""
    eig_tol: float = 1e-6
    """Relative tolerance of lambda_1 and v_1 at each Euler step (raised to what the dtype can
    certify: 1.9e-6 in float32)."""

    def __check_init__(self) -> None:
        _check(self.algorithm, self.lr, self.schedule, self.phi_gtol)
        check_positive("h", self.h)
        check_positive("eig_tol", self.eig_tol)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> LimitingFlowState:
        st = self._start(objective, w0)
        v = top_eigenpairs(
            objective.base(), st.X, 1, tol=clip_tol(self.eig_tol, st.X.dtype)
        ).vectors[:, 0]
        return st._replace(v=v)

    def advance(self, objective: Objective, state: LimitingFlowState, n: int):
        base = objective.base()
        c, log = flow_constant(self.algorithm)
        X, v, tau, t = state.X, state.v, float(state.tau), int(state.t)
        target = tau + sum(float(self.dtau(t + i)) for i in range(n))
        while target - tau > 1e-12 * max(1.0, target):
            v = top_eigenpairs(base, X, 1, tol=clip_tol(self.eig_tol, X.dtype), v0=v).vectors[:, 0]
            dt = min(self.h, target - tau)
            X = phi(
                base, _euler_step(base, X, v, jnp.asarray(dt, X.dtype), c, log), gtol=self.phi_gtol
            )
            tau += dt
        v = top_eigenpairs(base, X, 1, tol=clip_tol(self.eig_tol, X.dtype), v0=v).vectors[:, 0]
        return LimitingFlowState(X, jnp.asarray(tau, X.dtype), jnp.asarray(t + n, jnp.int32), v)

    def measure(self, objective: Objective, state: LimitingFlowState) -> Row:
        return _row_jit(self, objective, state)


@eqx.filter_jit
def _row_jit(process: _LimitingFlowBase, objective: Objective, state: LimitingFlowState) -> Row:
    return process._row(objective, state)
