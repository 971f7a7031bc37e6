r"""Probes: what the runner measures at a process's point every ``probe_every`` steps.

Every process is probed the same way: the certified top-$k$ eigenvalues of $H=\nabla^2L$ at its
point (``sharpness``, ``eigs``, ``sharpness_error``, ``sharpness_matvecs``), for adaptive rules
the top eigenvalue of its operator $P^{-1/2}HP^{-1/2}$ (``eff_sharpness``), the gradient's
alignment with the top eigenvector $g^\top Hg/(\|g\|^2\lambda_1)$, the stableness
$S_L(w,\eta_t)$, and any custom probe ``probe(w, objective, cache) -> {name: value}``.
The trackers' warm starts are part of the checkpoint, so a resumed run measures the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Annotated, Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import tyro
from jaxtyping import Array

from ..curvature import EigenTracker, stableness, top_eigenpairs
from ..curvature.operator import HessianOperator
from ..curvature.rounding import check_tol
from ..dynamics.phi import phi_result
from ..dynamics.process import Process
from ..errors import ConfigError, check_positive
from ..objective import Objective

__all__ = ["Probes", "ProbeFn", "ProbeSet", "distances", "phi_probe"]

ProbeFn = Callable[[Array, Objective, dict], dict]
"""A custom probe: ``probe(w, objective, cache) -> {name: scalar or 1-D array}``.

``cache`` holds what the runner already measured at ``w``: ``loss``, ``grad`` (of the base loss),
``eig`` (the `EigResult`, if sharpness is probed), ``step``, ``process`` (its name).
"""


@dataclasses.dataclass(frozen=True)
class Probes:
    """What is measured at each probed step (every ``probe_every`` steps), on every process.

    Custom probes (``probe(w, objective, cache) -> dict``, e.g. accuracy) are passed to
    `eoslab.runner.run` as ``custom_probes``. With ``every_step``, every per-step row of a
    compiled process gets ``sharpness``, ``eigs``, ``sharpness_error`` and ``sharpness_matvecs``
    from `eoslab.curvature.step_tracker.StepTracker`, whose Hessian products share one
    linearization with the step's gradient.
    """

    sharpness: bool = True
    """Track the certified top-k Hessian eigenvalues (sharpness, eigs, sharpness_error)."""
    k: int = 1
    """How many top eigenvalues (the eigs column)."""
    tol: float = 1e-3
    """Relative tolerance of the eigenvalues (each comes with a certified bound)."""
    grow_above: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: k fixed)")
    ] = None
    """Grow k while the next eigenvalue exceeds this."""
    effective: bool = True
    """Adaptive rules: also track lambda_1(P^-1 H) (eff_sharpness)."""
    alignment: bool = True
    """g^T H g / (|g|^2 lambda_1) (grad_top_alignment; one more HVP)."""
    max_matvecs: Annotated[
        int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: the solver's)")
    ] = None
    """Budget of HVPs per eigen-solve."""
    stableness: bool = False
    """The stableness S_L(w, lr_eff) (stableness_points eigen-solves per probe)."""
    stableness_points: int = 5
    """Points on the step's segment for the stableness."""
    every_step: bool = False
    """Certify the sharpness at every step, in the compiled loop (not only at probed steps)."""
    distances: bool = True
    """With several processes, |w_p - w_q| to every other process (dist_NAME)."""
    phi: bool = False
    """Phi(w), the limit of gradient flow: phi_dist, phi_loss, phi_grad_norm, phi_sharpness."""
    phi_gtol: float = 1e-8
    """Gradient-norm tolerance at which Phi's gradient flow stops."""

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("probes.k", self.k, "an integer >= 1")
        check_positive("probes.tol", self.tol)
        check_positive("probes.phi_gtol", self.phi_gtol)
        if self.every_step and self.grow_above is not None:
            raise ConfigError(
                "probes.grow_above", self.grow_above, "None with every_step (k is fixed)"
            )
        if self.stableness_points < 2:
            raise ConfigError("probes.stableness_points", self.stableness_points, "an integer >= 2")


@eqx.filter_jit
def _alignment(op: HessianOperator, lam: Array) -> Array:
    _, g, matmat = op.linearize()
    hg = matmat(g[:, None])[:, 0]
    return jnp.vdot(g, hg) / (jnp.vdot(g, g) * lam)


@eqx.filter_jit
def _operator(process: Process, objective: Objective, state: Any):
    return process.operator(objective, state)


@eqx.filter_jit
def _gradient(op: HessianOperator) -> Array:
    return op.step_direction()


class ProbeSet:
    """The probes of one process, with their warm-started trackers (checkpointed with the run)."""

    def __init__(
        self,
        objective: Objective,
        probes: Probes,
        seed: int,
        custom: tuple[ProbeFn, ...] = (),
        in_loop: bool = False,
    ) -> None:
        """``in_loop``: the sharpness is measured in the compiled loop (`step_tracker`), so this
        probe set has no tracker of its own and reads ``sharpness`` from the row."""
        self.cfg, self.custom = probes, tuple(custom)
        base = objective.base()
        if probes.sharpness or probes.stableness or probes.phi:
            check_tol(probes.tol, base.dtype, "probes.tol")
        self.tracker = None
        self.eff_tracker = None
        if probes.sharpness and not in_loop:
            self.tracker = EigenTracker(
                base,
                k=min(probes.k, base.dim),
                tol=probes.tol,
                grow_above=probes.grow_above,
                max_k=max(20, probes.k),
                max_matvecs=probes.max_matvecs,
                seed=seed,
            )
        if probes.sharpness:
            self.eff_tracker = EigenTracker(
                base, k=1, tol=probes.tol, max_matvecs=probes.max_matvecs, seed=seed + 1
            )

    def __call__(
        self, name: str, step: int, process: Process, objective: Objective, state: Any, row: dict
    ) -> dict:
        out: dict[str, Any] = {}
        w = process.point(state)
        H = process.hessian(objective, state)
        cache: dict[str, Any] = {"step": step, "loss": row.get("loss"), "process": name}
        cache["grad"] = _gradient(H) if self.custom else None
        if self.tracker is not None:
            res = self.tracker.update(H)
            vals = np.asarray(res.values, np.float64)
            out["sharpness"] = float(vals[0])
            out["eigs"] = vals.tolist()
            out["sharpness_matvecs"] = int(res.matvecs)
            out["sharpness_error"] = float(res.error_bound[0])
            cache["eig"] = res
        if self.cfg.sharpness:
            lam = out.get("sharpness", row.get("sharpness", math.nan))
            if self.cfg.alignment:
                gn = float(row.get("grad_norm", math.nan))
                ok = gn > 0 and math.isfinite(lam)
                out["grad_top_alignment"] = (
                    float(_alignment(H, jnp.asarray(lam, H.dtype))) if ok else math.nan
                )
            op = _operator(process, objective, state) if self.cfg.effective else None
            if op is not None and not isinstance(op, HessianOperator):  # not H itself
                eres = self.eff_tracker.update(op)
                out["eff_sharpness"] = float(eres.values[0])
                out["sharpness_matvecs"] = out.get(
                    "sharpness_matvecs", row.get("sharpness_matvecs", 0)
                ) + int(eres.matvecs)
                cache["eff_eig"] = eres
        lr_eff = float(row.get("lr_eff", math.nan))
        if self.cfg.stableness and lr_eff > 0 and math.isfinite(lr_eff):
            st = stableness(
                objective.base(), w, lr_eff, n_points=self.cfg.stableness_points, tol=self.cfg.tol
            )
            out["stableness"] = float(st.value)
        for probe in self.custom:
            for key, val in dict(probe(w, objective.base(), cache)).items():
                arr = np.asarray(val)
                out[key] = arr.item() if arr.ndim == 0 else arr.tolist()
        return out

    # -- checkpoint support (the trackers' warm starts and keys make probes reproducible)
    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for name, tr in (("tracker", self.tracker), ("eff_tracker", self.eff_tracker)):
            if tr is not None:
                out.update({f"{name}_{k}": v for k, v in tr.state().items()})
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name, tr in (("tracker", self.tracker), ("eff_tracker", self.eff_tracker)):
            if tr is None or f"{name}_key" not in arrays:
                continue
            prefix = f"{name}_"
            tr.load_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})


def phi_probe(base: Objective, w: Array, gtol: float, tol: float) -> tuple[Array, dict]:
    r"""$\Phi(w)$ and ``phi_dist``, ``phi_loss``, ``phi_grad_norm``, ``phi_sharpness`` there."""
    res = phi_result(base, w, gtol=gtol)
    x = res.x
    lam = top_eigenpairs(base, x, 1, tol=tol).values[0]
    return x, {
        "phi_dist": float(jnp.linalg.norm(w - x)),
        "phi_loss": float(base(x)),
        "phi_grad_norm": float(res.grad_norm),
        "phi_sharpness": float(lam),
    }


def _norm(x: np.ndarray) -> float:
    """The Euclidean norm without overflow in the squares (scaled by the largest entry)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m == 0.0 or not np.isfinite(m):
        return m
    return m * float(np.linalg.norm(x / m))


def distances(points: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    r"""$\|w_p - w_q\|$ for every pair of processes: ``{p: {"dist_q": value}}``."""
    out: dict[str, dict[str, float]] = {p: {} for p in points}
    names = list(points)
    for i, p in enumerate(names):
        for q in names[i + 1 :]:
            d = _norm(np.asarray(points[p], np.float64) - np.asarray(points[q], np.float64))
            out[p][f"dist_{q}"] = d
            out[q][f"dist_{p}"] = d
    return out
