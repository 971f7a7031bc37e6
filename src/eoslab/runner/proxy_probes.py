r"""The sharpness proxies as probes, each with its cost (`eoslab.curvature.proxies`).

Each probe reports its value and its cost in full-batch forward passes (``*_fwd``) and
Hessian-vector products (``*_hvp``): the price of looking without the certified eigensolver.

- `CriticalSharpness` (in the step): $2/\eta_c$ along the process's own update, by a line search
  of a few forward passes started from the last $\eta_c$;
- `DirectionalSharpness` (in the step): $u^\top Hu/\|u\|^2$ along the update and along the
  gradient, two products;
- `TracePerParameter` (in the step): $\mathrm{tr}\,H/D$ by Hutchinson;
- `GaussNewtonSharpness` (host): the certified top eigenvalue of $J^\top H_\ell J$, warm-started;
- `LayerSharpness` (host): the certified top eigenvalue of each parameter group's diagonal block.

The batch sharpness and the batch $\lambda_{\max}$ are `eoslab.runner.BatchSharpness`.

The update of a compiled process is the step it takes from the probed point,
$u = w_{t+1} - w_t$ (recomputed from $L$ and $\nabla L$ of the shared linearization, so a
full-batch rule costs no gradient; a mini-batch one costs a batch's), divided by the row's
``lr_eff``, so that the critical sharpness compares with $2/\eta$: the loss rises along the step
taken iff $2/\eta_c > 2/\eta$. A host process's update is taken to be $-\nabla L$.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..curvature import EigenTracker
from ..curvature.operator import GaussNewtonOperator
from ..curvature.proxies import layer_sharpness, line_search, parameter_groups
from ..dynamics.process import CompiledProcess
from ..errors import check_int, check_positive
from ..objective import ModelLoss
from .probe import At, HostProbe, ScanProbe

__all__ = [
    "CriticalSharpness",
    "DirectionalSharpness",
    "GaussNewtonSharpness",
    "LayerSharpness",
    "TracePerParameter",
]


def update_direction(at: At) -> Array:
    r"""The process's update per unit learning rate at ``at``: $(w_{t+1}-w_t)/\eta_t$ for a
    compiled process (from ``at.lin``), $-\nabla L$ otherwise."""
    lin = at.lin
    if not isinstance(at.process, CompiledProcess):
        return -lin.grad
    new, row = at.process.step_given(at.objective, at.state, lin.loss, lin.grad)
    u = at.process.point(new) - at.w
    lr = jnp.asarray(row.get("lr_eff", 1.0), u.dtype)
    return jnp.where(jnp.isfinite(lr) & (lr > 0), u / jnp.where(lr > 0, lr, 1.0), -lin.grad)


class CriticalSharpness(ScanProbe):
    r"""``critical_sharpness`` $2/\eta_c$ along the process's update per unit learning rate
    (`eoslab.curvature.critical_sharpness`), and ``critical_sharpness_fwd``, the forward passes
    its line search spent (its start is the last $\eta_c$, else the row's ``lr_eff``: near the
    edge about 3). Where the loss does not rise within the search it is 0; along an ascent
    direction ``inf``."""

    max_evals: int = 10
    rtol: float = 1e-4
    linearize = True

    def __check_init__(self) -> None:
        check_int("max_evals", self.max_evals, 2)
        check_positive("rtol", self.rtol)

    def init(self, at: At) -> Array:
        return jnp.asarray(jnp.nan, at.objective.dtype)

    def __call__(self, at: At, state: Array) -> tuple[dict[str, Any], Array]:
        base = at.objective.base()
        w, lin = at.w, at.lin
        d = update_direction(at)
        lr = jnp.asarray(at.row.get("lr_eff", 1.0), w.dtype)
        guess = jnp.where(jnp.isfinite(lr) & (lr > 0), lr, 1.0)
        eta0 = jnp.where(jnp.isfinite(state) & (state > 0), state, guess)

        def phi(eta):
            return base(w + eta * d) - lin.loss

        eta_c, n = line_search(phi, eta0, max_evals=self.max_evals, rtol=self.rtol)
        value = jnp.where(eta_c > 0, 2.0 / jnp.where(eta_c > 0, eta_c, 1.0), jnp.inf)
        value = jnp.where(jnp.isinf(eta_c), 0.0, value)
        row = {"critical_sharpness": value, "critical_sharpness_fwd": n}
        return row, jnp.asarray(eta_c, state.dtype)


class DirectionalSharpness(ScanProbe):
    r"""``directional_sharpness`` $u^\top Hu/\|u\|^2$ along the process's update $u$ and
    ``directional_sharpness_grad`` along $\nabla L$ (two products of the shared linearization:
    ``directional_sharpness_hvp`` = 2)."""

    linearize = True

    def __call__(self, at: At, state: tuple) -> tuple[dict[str, Any], tuple]:
        lin = at.lin
        U = jnp.stack([update_direction(at), lin.grad], axis=1)
        HU = lin.matmat(U)
        uu = jnp.sum(U * U, axis=0)
        q = jnp.where(uu > 0, jnp.sum(U * HU, axis=0) / jnp.where(uu > 0, uu, 1.0), jnp.nan)
        row = {
            "directional_sharpness": q[0],
            "directional_sharpness_grad": q[1],
            "directional_sharpness_hvp": jnp.asarray(2),
        }
        return row, state


class TracePerParameter(ScanProbe):
    r"""``trace_per_param`` $\mathrm{tr}\,H/D$ by Hutchinson with ``n_probes`` Rademacher vectors
    drawn from ``fold_in(key(seed), step)`` (``trace_per_param_stderr``;
    ``trace_per_param_hvp`` = ``n_probes``)."""

    n_probes: int = 10
    seed: int = 0
    linearize = True

    def __check_init__(self) -> None:
        check_int("n_probes", self.n_probes, 1)

    def __call__(self, at: At, state: tuple) -> tuple[dict[str, Any], tuple]:
        w = at.w
        key = jax.random.fold_in(jax.random.key(self.seed), jnp.asarray(at.step))
        Z = jax.random.rademacher(key, (w.shape[0], self.n_probes), w.dtype)
        samples = jnp.sum(Z * at.lin.matmat(Z), axis=0) / w.shape[0]
        m = self.n_probes
        se = jnp.std(samples, ddof=1) / math.sqrt(m) if m > 1 else jnp.zeros((), w.dtype)
        row = {
            "trace_per_param": jnp.mean(samples),
            "trace_per_param_stderr": se,
            "trace_per_param_hvp": jnp.asarray(m),
        }
        return row, state


def _tracker_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in state.items()}


class GaussNewtonSharpness(HostProbe):
    r"""``gn_sharpness``: the certified top eigenvalue of the Gauss-Newton matrix
    $J^\top H_\ell J$ (`eoslab.curvature.GaussNewtonOperator`), by Lanczos warm-started from the
    last probe's vector, with ``gn_sharpness_error`` and ``gn_sharpness_hvp`` (its products,
    each about one Hessian-vector product). Objectives not built by ``Objective.from_model``
    get no columns."""

    tol: float = 1e-3
    seed: int = 0

    @property
    def key(self) -> str:
        return "gn_tracker"

    def _tracker(self) -> EigenTracker:
        return EigenTracker(None, k=1, tol=self.tol, seed=self.seed)

    def init(self, at: At) -> dict[str, np.ndarray]:
        return self._tracker().state()

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        base = at.objective.base()
        if not isinstance(base.fn, ModelLoss):
            return {}, state
        tracker = self._tracker()
        tracker.load_state(state)
        res = tracker.update(GaussNewtonOperator(base, at.w))
        row = {
            "gn_sharpness": float(res.values[0]),
            "gn_sharpness_error": float(res.error_bound[0]),
            "gn_sharpness_hvp": int(res.matvecs),
        }
        return row, tracker.state()

    def arrays(self, state: Any) -> dict[str, np.ndarray]:
        return _tracker_state(state)

    def load(self, arrays: Mapping[str, np.ndarray], at: At) -> Any:
        return _tracker_state(arrays)


class LayerSharpness(HostProbe):
    r"""``layer_sharpness_NAME``: the certified top eigenvalue of the diagonal block of $H$ on
    each parameter group NAME of the model (`eoslab.curvature.layer_sharpness`; one group
    ``all`` for other objectives), the largest of them as ``layer_sharpness``, and their
    products as ``layer_sharpness_hvp``."""

    tol: float = 1e-3
    seed: int = 0

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        base = at.objective.base()
        key = jax.random.fold_in(jax.random.key(self.seed), int(at.step))
        res = layer_sharpness(base, at.w, parameter_groups(base), tol=self.tol, key=key)
        row: dict[str, Any] = {f"layer_sharpness_{n}": float(r.values[0]) for n, r in res.items()}
        row["layer_sharpness"] = max(row.values())
        row["layer_sharpness_hvp"] = sum(int(r.matvecs) for r in res.values())
        return row, state
