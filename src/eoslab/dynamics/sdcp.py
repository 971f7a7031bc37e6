r"""The semidefinite complementarity problem (SDCP) that fixes the central flow's $\Sigma$."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float

from ..errors import ConfigError

__all__ = ["solve_sdcp"]


def solve_sdcp(
    G: Float[Any, "p p"], C: Float[Any, "k k"], *, solver: str | None = None
) -> np.ndarray:
    r"""$X^\star=\arg\min_{X\succeq0}\tfrac12\beta[X,X]+\langle C,X\rangle$, $\beta[X,X]=
    \mathrm{vec}(X)^\top G\,\mathrm{vec}(X)$ (cvxpy, float64); its KKT conditions are the SDCP.

    ``G`` is the Gram matrix ``(k*k, k*k)`` of $\nabla h_{ij}$ in row-major order of $(i, j)$.
    For $k=1$ the answer is $\max(0, -C/G)$ in closed form.
    """
    C = np.asarray(C, np.float64)
    G = np.asarray(G, np.float64)
    k = C.shape[0]
    if C.shape != (k, k) or G.shape != (k * k, k * k):
        raise ConfigError("G.shape", G.shape, f"({k * k}, {k * k}) for C of shape ({k}, {k})")
    if k == 1:
        g = float(G[0, 0])
        return np.array([[max(0.0, -float(C[0, 0]) / g)]]) if g > 0 else np.zeros((1, 1))
    import cvxpy as cp

    evals, evecs = np.linalg.eigh(0.5 * (G + G.T))
    evals = np.clip(evals, 0.0, None)
    R = (evecs * np.sqrt(evals)[None, :]).T  # G = R^T R
    X = cp.Variable((k, k), PSD=True)
    vec = cp.hstack([X[i, j] for i in range(k) for j in range(k)])
    obj = 0.5 * cp.sum_squares(R @ vec) + cp.trace(0.5 * (C + C.T) @ X)
    prob = cp.Problem(cp.Minimize(obj))
    try:
        prob.solve(solver=solver or cp.CLARABEL)
    except Exception:  # noqa: BLE001 - fall back to the default solver
        prob.solve()
    Xv = np.asarray(X.value, np.float64)
    Xv = 0.5 * (Xv + Xv.T)
    lam, V = np.linalg.eigh(Xv)
    return (V * np.clip(lam, 0.0, None)[None, :]) @ V.T
