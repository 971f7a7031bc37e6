r"""Central flows (Cohen, Damian, Talwalkar, Kolter, Lee; ICLR 2025): front doors to the loop.

`central_flow` and `rmsprop_central_flow` run the processes of `eoslab.dynamics.central_flow`
through `eoslab.runner.run` and return their rows as arrays; `central_flow_prediction` turns a
flow into the predicted time average of any smooth function (``docs/theory.md``, "Central flows").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature._checks import check_w
from ..curvature.operator import HessianOperator
from ..dynamics.central_flow import CentralFlow, RMSPropCentralFlow, SDPCentralFlow
from ..dynamics.sdcp import solve_sdcp
from ..errors import ConfigError, check_choice, check_int, check_positive
from ..objective import LossLike, as_objective
from ..runner import Probes, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CentralFlowResult",
    "RMSPropCentralFlowResult",
    "central_flow",
    "central_flow_prediction",
    "rmsprop_central_flow",
    "solve_sdcp",
]

SOLVERS = ("auto", "closed_form", "sdp")


class CentralFlowResult(NamedTuple):
    r"""The central flow of GD sampled at steps ``steps`` (one row per saved step)."""

    steps: np.ndarray  # GD step index t of each row
    w: np.ndarray  # (n, d) w(t)
    loss: np.ndarray  # L(w(t))
    pred_loss: np.ndarray  # predicted time average of L(w_t): L(w) + tr(Sigma)/lr
    grad_sq: np.ndarray  # |grad L(w)|^2
    pred_grad_sq: np.ndarray  # |grad L + 1/2 grad<H,Sigma>|^2 + 4 tr Sigma / lr^2
    trace_sigma: np.ndarray  # tr Sigma(t)
    eigenvalues: np.ndarray  # (n, k) top eigenvalues of H(w(t))
    X: np.ndarray  # (n, k, k) Sigma = U X U^T in the eigenbasis
    U: np.ndarray  # (n, d, k) eigenvectors
    n_active: np.ndarray  # eigenvalues carrying oscillation (X's rank)
    lr: float
    substeps: int

    @property
    def sharpness(self) -> np.ndarray:
        return self.eigenvalues[:, 0]

    def frame(self) -> pd.DataFrame:
        """The scalar series as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(
            {
                "step": self.steps,
                "loss": self.loss,
                "pred_loss": self.pred_loss,
                "grad_sq": self.grad_sq,
                "pred_grad_sq": self.pred_grad_sq,
                "trace_sigma": self.trace_sigma,
                "sharpness": self.sharpness,
                "n_active": self.n_active,
            }
        )


def central_flow(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    lr: float,
    steps: int,
    substeps: int = 4,
    k: int = 1,
    solver: Literal["auto", "closed_form", "sdp"] = "auto",
    save_every: int = 1,
    krylov_dim: int = 30,
    window: float = 0.1,
    seed: int = 0,
    eig_tol: float = 5e-3,
) -> CentralFlowResult:
    r"""GD's central flow $\dot w=-\eta[\nabla L+\tfrac12\nabla\langle H,\Sigma\rangle]$ for
    ``steps`` GD steps with ``substeps`` Euler substeps each, saved every ``save_every`` steps.

    ``solver="closed_form"`` (k = 1) is the compiled `eoslab.dynamics.CentralFlow`;
    ``"sdp"`` is `eoslab.dynamics.SDPCentralFlow` (cvxpy, a host loop) on the top-``k``
    eigenvectors with $\eta\lambda>2-$``window``. Runs through `eoslab.runner.run`.
    The closed form's eigen-solves are warm block Lanczos stopped at the relative bound
    ``eig_tol`` on $\lambda_1$ (at most ``krylov_dim`` HVPs per substep).
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = check_int("steps", steps)
    substeps = check_int("substeps", substeps)
    save_every = check_int("save_every", save_every)
    if steps % save_every:
        raise ConfigError("save_every", save_every, f"a divisor of steps (= {steps})")
    d = obj.dim
    k = check_int("k", k)
    if k > d:
        raise ConfigError("k", k, f"an integer in [1, {d}]")
    check_choice("solver", solver, SOLVERS)
    if solver == "auto":
        solver = "closed_form" if k == 1 else "sdp"
    if solver == "closed_form" and k != 1:
        raise ConfigError("k", k, "1 for solver='closed_form' (use solver='sdp' for k > 1)")
    m = min(check_int("krylov_dim", krylov_dim, 2), d)
    if m < k + 1 and d > k:
        raise ConfigError("krylov_dim", krylov_dim, f"an integer >= k + 1 (= {k + 1})")
    check_positive("window", window)
    common = dict(lr=float(lr), substeps=substeps, krylov_dim=m, seed=seed)
    if solver == "closed_form":
        proc = CentralFlow(**common, eig_tol=eig_tol, record_vectors=True)
        res = run(
            {"cf": proc},
            obj,
            steps,
            w0=w0,
            probe_every=steps,
            log_every=save_every,
            probes=Probes(sharpness=False),
            keep_points=True,
        )
    else:
        proc = SDPCentralFlow(**common, k=k, window=window)
        res = run(
            {"cf": proc},
            obj,
            steps,
            w0=w0,
            probe_every=save_every,
            probes=Probes(sharpness=False),
            keep_points=True,
        )
    m_ = res.metrics[res.metrics["step"] < steps]
    col = lambda c: m_[c].to_numpy(np.float64)  # noqa: E731
    tr = col("trace_sigma")
    if solver == "closed_form":
        eig = col("cf_sharpness")[:, None]
        X = tr[:, None, None]
        U = np.stack(m_["u"].to_list())[:, :, None]
        n_active = (tr > 0).astype(int)
    else:
        eig = np.stack(m_["eigenvalues"].to_list())
        X = np.stack([np.asarray(x) for x in m_["X"].to_list()])
        U = np.stack([np.asarray(u) for u in m_["U"].to_list()])
        n_active = m_["n_active"].to_numpy(int)
    return CentralFlowResult(
        m_["step"].to_numpy(),
        np.stack(m_["w"].to_list()),
        col("loss"),
        col("pred_loss"),
        col("grad_norm") ** 2,
        col("pred_grad_sq"),
        tr,
        eig,
        X,
        U,
        n_active,
        float(lr),
        substeps,
    )


@eqx.filter_jit
def _hessian_quad(f, w, U):
    return U.T @ HessianOperator(as_objective(f, w), w).mm(U)


def central_flow_prediction(
    f: Callable[[Array], Array], flow: CentralFlowResult, rows: Any = None
) -> np.ndarray:
    r"""$\mathbb E f(w_t)\approx f(w(t))+\tfrac12\langle\nabla^2 f(w(t)),\Sigma(t)\rangle$ at the
    flow's saved rows (all by default), for any smooth ``f(w) -> scalar``."""
    if not callable(f):
        raise ConfigError("f", f, "a callable f(w) -> scalar")
    rows = np.arange(flow.steps.size) if rows is None else np.atleast_1d(rows)
    out = []
    for i in rows:
        w = jnp.asarray(flow.w[i])
        Q = np.asarray(_hessian_quad(f, w, jnp.asarray(flow.U[i], w.dtype)))
        out.append(float(f(w)) + 0.5 * float(np.sum(Q * flow.X[i])))
    return np.asarray(out)


class RMSPropCentralFlowResult(NamedTuple):
    r"""RMSProp's central flow: $w(t)$, $\nu(t)$ and the predictions, one row per step."""

    steps: np.ndarray
    w: np.ndarray  # (n, d)
    nu: np.ndarray  # (n, d) or (n, 1) for scalar RMSProp
    loss: np.ndarray
    pred_loss: np.ndarray  # L(w) + 1/2 <H, Sigma>
    sigma2: np.ndarray  # Sigma = sigma2 u u^T in w-space
    eff_sharpness: np.ndarray  # lambda_1(lr P^-1 H), P = sqrt(nu) + eps (threshold 2)


def rmsprop_central_flow(
    loss: LossLike,
    w0: Float[Array, " d"],
    nu0: Float[Array, " d"] | float,
    *,
    lr: float,
    beta2: float = 0.99,
    eps: float = 1e-8,
    steps: int,
    substeps: int = 4,
    scalar: bool = False,
    krylov_dim: int = 30,
    seed: int = 0,
) -> RMSPropCentralFlowResult:
    r"""RMSProp's central flow (`eoslab.dynamics.RMSPropCentralFlow`) for ``steps`` steps, one
    row per step; ``eff_sharpness`` is $\lambda_1(\eta P^{-1}H)$ (threshold 2)."""
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    steps = check_int("steps", steps)
    proc = RMSPropCentralFlow(
        lr=float(lr),
        nu0=nu0 if isinstance(nu0, (int, float)) else jnp.asarray(nu0, w0.dtype),
        beta2=beta2,
        eps=eps,
        substeps=check_int("substeps", substeps),
        scalar=bool(scalar),
        krylov_dim=min(check_int("krylov_dim", krylov_dim, 2), obj.dim),
        seed=seed,
        record_vectors=True,
    )
    res = run(
        {"cf": proc},
        obj,
        steps,
        w0=w0,
        probe_every=steps,
        probes=Probes(sharpness=False),
        keep_points=True,
    )
    m = res.metrics[res.metrics["step"] < steps]
    col = lambda c: m[c].to_numpy(np.float64)  # noqa: E731
    return RMSPropCentralFlowResult(
        m["step"].to_numpy(),
        np.stack(m["w"].to_list()),
        np.stack(m["nu"].to_list()),
        col("loss"),
        col("pred_loss"),
        col("sigma2"),
        col("cf_eff_sharpness") * lr,
    )
