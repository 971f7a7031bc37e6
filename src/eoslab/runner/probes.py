r"""The built-in probes, and `Probes`: the config that chooses them.

Every process is probed the same way: the certified top-$k$ eigenvalues of $H=\nabla^2L$ at its
point (``sharpness``, ``eigs``, ``sharpness_error``, ``sharpness_matvecs``; `Sharpness` on the
host, or `StepSharpness` inside the step; with ``cluster_above`` the block above a fraction of
the threshold, `StepCluster`), for adaptive rules the top eigenvalue of its operator
$P^{-1/2}HP^{-1/2}$ (``eff_sharpness``, `EffectiveSharpness`), the gradient's alignment with the
top eigenvector $g^\top Hg/(\|g\|^2\lambda_1)$ (`Alignment`), the stableness $S_L(w,\eta_t)$
(`Stableness`); with several processes the distances between them (`Distances`), and $\Phi$
(`Phi`). Each is a probe object (`eoslab.runner.probe`) whose state is checkpointed, so a resumed
run measures the same numbers.

**Which probes run inside the step.** Where a compiled process is probed at every step
(``probe_every=1``, or ``every_step``), the probes that fit in a step run inside its compiled
``lax.scan``: the sharpness (`StepSharpness`, whose Hessian products share one linearization
with the step's gradient), the accuracy (one forward pass) and any `ScanProbe`. The others cost
more than a step and run on the host every ``host_every`` steps: the alignment needs a Hessian
product along the gradient, which is that linearization's *output*, so it cannot share its
pass (a second pass costs 1.7-2.5 plain steps on eos-gd); the effective sharpness, the
stableness, $\Phi$ and the distances solve on the host. Host processes, and compiled processes
probed every ``probe_every > 1`` steps, run every probe at the probed steps.

**When.** The probed steps are every ``probe_every``-th (``schedule="fixed"``), or those the
adaptive schedule picks from the values so far, the loss rises and a budget of Hessian products
(``schedule="adaptive"``, `eoslab.runner.schedule`; ``probe_every`` is then the longest gap).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro
from jaxtyping import Array

from ..curvature import EigenTracker, stableness, top_eigenpairs
from ..curvature.operator import HessianOperator
from ..curvature.rounding import check_tol
from ..curvature.step_tracker import ClusterState, ClusterTracker, StepTracker, StepTrackerState
from ..dynamics.phi import phi_result
from ..dynamics.process import CompiledProcess, Process
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective
from ..precision import rounding_dtype
from .probe import At, GroupProbe, HostProbe, Probe, ScanProbe
from .schedule import AdaptiveSchedule

__all__ = [
    "Alignment",
    "Distances",
    "EffectiveSharpness",
    "Phi",
    "Probes",
    "Sharpness",
    "Stableness",
    "StepCluster",
    "StepSharpness",
    "distances",
    "phi_probe",
]

#: The host cadence of the probes that do not fit in a step, with ``probe_every=1``: the
#: alignment costs about 4 plain steps (a gradient and a product), so every 50 steps it adds
#: about 2% to a step probed inside (3x a plain one on eos-gd).
HOST_EVERY = 50


@dataclasses.dataclass(frozen=True)
class Probes:
    """What is measured at each probed step (every ``probe_every`` steps), on every process.

    With ``probe_every=1`` or ``every_step`` a compiled process's sharpness (and accuracy) is
    certified at every step inside its compiled loop (`StepSharpness`, whose Hessian products
    share one linearization with the step's gradient); the alignment, the effective sharpness,
    the stableness, Phi and the distances then run every ``host_every`` steps. With
    ``schedule="adaptive"`` the host probes run at the steps `eoslab.runner.schedule` picks
    (within ``budget`` Hessian products a step, at most ``probe_every`` apart). Your own probes
    are objects passed to `eoslab.runner.run` as ``custom_probes`` (subclasses of
    `eoslab.runner.ScanProbe`, `HostProbe` or `GroupProbe`).
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
    """Certify the sharpness at every step, in the compiled loop (as probe_every=1 does)."""
    host_every: Annotated[
        int | None,
        tyro.conf.arg(
            metavar="INT", help_behavior_hint="(default: probe_every, or 50 with probe_every 1)"
        ),
    ] = None
    """With the sharpness at every step: run the alignment, eff_sharpness, stableness, Phi and
    distances every this many steps (a multiple of probe_every)."""
    cluster_above: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: top k only)")
    ] = None
    """With the sharpness at every step: certify the whole block of eigenvalues above this
    fraction of the threshold 2/lr (e.g. 0.75), its size following them (eigs, cluster_size)."""
    cluster_max_k: int = 16
    """The most eigenvalues the every-step cluster block holds."""
    distances: bool = True
    """With several processes, |w_p - w_q| to every other process (dist_NAME)."""
    phi: bool = False
    """Phi(w), the limit of gradient flow: phi_dist, phi_loss, phi_grad_norm, phi_sharpness."""
    phi_gtol: float = 1e-8
    """Gradient-norm tolerance at which Phi's gradient flow stops."""
    schedule: Literal["fixed", "adaptive"] = "fixed"
    """When the host probes run: every probe_every steps, or where the loss and the sharpness's
    trend ask (adaptive; probe_every is the longest gap; probe_reason says why)."""
    budget: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: unlimited)")
    ] = None
    """Adaptive schedule: Hessian products per step for the certified probes (the first three
    aside; kept to within one probe)."""

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
        if self.host_every is not None:
            check_int("probes.host_every", self.host_every, 1)
        if self.schedule not in ("fixed", "adaptive"):
            raise ConfigError("probes.schedule", self.schedule, "'fixed' or 'adaptive'")
        if self.budget is not None:
            b = self.budget
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not (0 < b < math.inf):
                raise ConfigError("probes.budget", b, "None or a number > 0 (products per step)")
            if self.schedule != "adaptive":
                raise ConfigError("probes.budget", b, "None with schedule 'fixed'")
        if self.schedule == "adaptive":
            if not self.sharpness:
                raise ConfigError(
                    "probes.schedule", self.schedule, "'fixed' without the sharpness probe"
                )
            if self.every_step:
                raise ConfigError("probes.schedule", self.schedule, "'fixed' with every_step")
        check_int("probes.cluster_max_k", self.cluster_max_k, 1)
        if self.cluster_above is not None:
            frac = self.cluster_above
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
                raise ConfigError("probes.cluster_above", frac, "a fraction in (0, 1] or None")
            if self.grow_above is not None:
                raise ConfigError(
                    "probes.grow_above", self.grow_above, "None with cluster_above (it grows k)"
                )

    def in_step(self, probe_every: int) -> bool:
        """Whether compiled processes are probed inside their step, at every step."""
        return self.schedule == "fixed" and (self.every_step or probe_every == 1)

    def adaptive(self, probe_every: int) -> AdaptiveSchedule | None:
        """The adaptive schedule (None for the fixed one), whose longest gap is
        ``probe_every``."""
        if self.schedule != "adaptive":
            return None
        if probe_every < 2:
            why = "an integer >= 2 with schedule 'adaptive' (the longest gap)"
            raise ConfigError("probe_every", probe_every, why)
        first = min(AdaptiveSchedule.first_gap, probe_every)
        edge = min(AdaptiveSchedule.edge_gap, probe_every)
        look = min(AdaptiveSchedule.look, probe_every)
        return AdaptiveSchedule(self.budget, probe_every, edge_gap=edge, first_gap=first, look=look)

    def cadence(self, probe_every: int) -> int:
        """How often the probes that do not fit in a step run, when the others run in it."""
        every = self.host_every
        if every is None:
            return probe_every if probe_every > 1 else HOST_EVERY
        if every % probe_every:
            raise ConfigError(
                "probes.host_every", every, f"a multiple of probe_every = {probe_every}"
            )
        return every

    def build(
        self, process: Process, objective: Objective, seed: int, probe_every: int
    ) -> tuple[Probe, ...]:
        """The probes of ``process`` (seeds from ``seed``), in the order they run at a point:
        a `StepSharpness` where it is probed in its step (`in_step`), else a `Sharpness`; then
        the alignment, the effective sharpness and the stableness."""
        base = objective.base()
        if self.sharpness or self.stableness or self.phi:
            check_tol(self.tol, rounding_dtype(base.dtype, base.matmul_dtype), "probes.tol")
        out: list[Probe] = []
        if self.sharpness:
            step = None
            if self.in_step(probe_every) and isinstance(process, CompiledProcess):
                step = self._step_sharpness(base, seed + 1, required=self.every_step)
            if step is None:
                k = min(self.k, base.dim)
                out.append(
                    Sharpness(k, self.tol, self.grow_above, max(20, self.k), self.max_matvecs, seed)
                )
            else:
                out.append(step)
            if self.alignment:
                out.append(Alignment())
            if self.effective:
                out.append(EffectiveSharpness(self.tol, self.max_matvecs, seed + 1))
        if self.stableness:
            out.append(Stableness(self.stableness_points, self.tol))
        return tuple(out)

    def build_group(self, processes: int) -> tuple[GroupProbe, ...]:
        """The probes of every process at once: distances (with several) and Phi."""
        dist = self.distances and processes > 1
        out: list[GroupProbe] = [Distances()] if dist else []
        if self.phi:
            out.append(Phi(self.phi_gtol, self.tol, dist))
        return tuple(out)

    def _step_sharpness(
        self, base: Objective, seed: int, required: bool
    ) -> StepSharpness | StepCluster | None:
        dim = base.dim
        if self.grow_above is not None:
            return None  # k grows on the host (every_step refuses grow_above)
        if self.cluster_above is not None:
            m = min(self.cluster_max_k, dim // 2 - 1)
            if m < 1:
                if required:
                    raise ConfigError(
                        "probes.cluster_above",
                        self.cluster_above,
                        f"None for a {dim}-parameter problem",
                    )
                return None
            rounds = 6 if self.max_matvecs is None else max(1, self.max_matvecs // (m + 1))
            cluster = ClusterTracker(
                max_k=m,
                frac=float(self.cluster_above),
                tol=self.tol,
                max_rounds=rounds,
                rounding=base.matmul_dtype,
            )
            return StepCluster(cluster, self.max_matvecs, seed)
        block = self.k + 1
        rounds = 8 if self.max_matvecs is None else max(1, self.max_matvecs // block)
        rounds = min(rounds, dim // block)
        if rounds < 1:
            if required:
                raise ConfigError("probes.every_step", True, f"False for a {dim}-parameter problem")
            return None
        tracker = StepTracker(k=self.k, tol=self.tol, max_rounds=rounds, rounding=base.matmul_dtype)
        return StepSharpness(tracker, self.max_matvecs, seed)


# --------------------------------------------------------------------------- point probes


@eqx.filter_jit
def _alignment(op: HessianOperator, lam: Array) -> Array:
    _, g, matmat = op.linearize()
    hg = matmat(g[:, None])[:, 0]
    return jnp.vdot(g, hg) / (jnp.vdot(g, g) * lam)


@eqx.filter_jit
def _operator(process: Process, objective: Objective, state: Any):
    return process.operator(objective, state)


def _tracker_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in state.items()}


class Sharpness(HostProbe):
    """The certified top-``k`` eigenvalues of $H$ at probed steps, by Lanczos warm-started from
    the last probe's vectors (`eoslab.curvature.EigenTracker`, whose state is this probe's):
    ``sharpness``, ``eigs``, ``sharpness_error``, ``sharpness_matvecs``."""

    k: int = 1
    tol: float = 1e-3
    grow_above: float | None = None
    max_k: int = 20
    max_matvecs: int | None = None
    seed: int = 0

    @property
    def key(self) -> str:
        return "tracker"

    def _tracker(self, base: Objective) -> EigenTracker:
        return EigenTracker(
            base,
            k=self.k,
            tol=self.tol,
            grow_above=self.grow_above,
            max_k=self.max_k,
            max_matvecs=self.max_matvecs,
            seed=self.seed,
        )

    def init(self, at: At) -> dict[str, np.ndarray]:
        return self._tracker(at.objective.base()).state()

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        tracker = self._tracker(at.objective.base())
        tracker.load_state(state)
        res = tracker.update(at.process.hessian(at.objective, at.state))
        vals = np.asarray(res.values, np.float64)
        if at.notes is not None:
            at.notes["eig"] = res
        row = {
            "sharpness": float(vals[0]),
            "eigs": vals.tolist(),
            "sharpness_matvecs": int(res.matvecs),
            "sharpness_error": float(res.error_bound[0]),
        }
        return row, tracker.state()

    def arrays(self, state: Any) -> dict[str, np.ndarray]:
        return _tracker_state(state)

    def load(self, arrays: Mapping[str, np.ndarray], at: At) -> Any:
        return _tracker_state(arrays)


class StepSharpness(ScanProbe):
    """The certified top-$k$ eigenvalues of $H$ at every step, inside the compiled step
    (`eoslab.curvature.step_tracker.StepTracker`; its products share the linearization whose
    gradient the step uses): ``sharpness``, ``eigs``, ``sharpness_error``,
    ``sharpness_matvecs``. Its state starts from a Lanczos solve at the first point probed."""

    tracker: StepTracker
    max_matvecs: int | None = None
    seed: int = 0
    linearize = True

    @property
    def key(self) -> str:
        return "step"

    def init(self, at: At) -> StepTrackerState:
        tr, w = self.tracker, at.w
        res = top_eigenpairs(
            HessianOperator(at.objective.base(), w),
            k=tr.k,
            tol=tr.tol,
            max_matvecs=self.max_matvecs,
            key=jax.random.key(self.seed),
        )
        guard = res.next_vector
        if not bool(jnp.any(guard != 0)):
            guard = jax.random.normal(jax.random.key(self.seed), w.shape, w.dtype)
        return tr.warm(res.vectors, guard, res.operator_norm)

    def __call__(self, at: At, state: StepTrackerState) -> tuple[dict[str, Any], Any]:
        lin = at.lin
        state, eig = self.tracker.update(lin.matmat, state, lin.relinearize)
        row = {
            "sharpness": eig.values[0],
            "eigs": eig.values,
            "sharpness_error": eig.error_bound[0],
            "sharpness_matvecs": eig.matvecs,
        }
        return row, state

    def arrays(self, state: StepTrackerState) -> dict[str, np.ndarray]:
        return {f: np.asarray(x) for f, x in state._asdict().items()}

    def load(self, arrays: Mapping[str, np.ndarray], at: At) -> StepTrackerState:
        dtype = at.objective.dtype
        if "vectors" in arrays:
            saved = {"norm": np.zeros(()), **arrays}  # older runs: ||H|| re-estimated as it goes
            types = {"count": jnp.int32}
            return StepTrackerState(
                **{f: jnp.asarray(saved[f], types.get(f, dtype)) for f in StepTrackerState._fields}
            )
        if "V" in arrays:  # older runs: vectors as columns, no history
            V = jnp.asarray(arrays["V"], dtype)
            return self.tracker.warm(V[:, :-1], V[:, -1])
        raise ConfigError("resume", sorted(arrays), "a step tracker's saved vectors")


class StepCluster(ScanProbe):
    """The certified block of all eigenvalues of $H$ above a fraction of the threshold, at every
    step inside the compiled step (`eoslab.curvature.step_tracker.ClusterTracker`; its products
    share the step's linearization): ``sharpness``, ``eigs`` (the block, NaN beyond its size),
    ``eigs_error``, ``sharpness_error``, ``sharpness_matvecs``, ``cluster_size``. Its state
    starts from a Lanczos solve of the top ``max_k + 1`` at the first point probed."""

    tracker: ClusterTracker
    max_matvecs: int | None = None
    seed: int = 0
    linearize = True

    @property
    def key(self) -> str:
        return "cluster"

    def init(self, at: At) -> ClusterState:
        tr, w = self.tracker, at.w
        res = top_eigenpairs(
            HessianOperator(at.objective.base(), w),
            k=tr.max_k + 1,
            tol=tr.tol,
            max_matvecs=self.max_matvecs,
            key=jax.random.key(self.seed),
        )
        thr = at.row.get("threshold")
        if thr is None:
            thr = at.process.measure(at.objective, at.state).get("threshold")
        size = 1
        if thr is not None and np.isfinite(float(thr)):
            size = int(np.sum(np.asarray(res.values) >= tr.frac * float(thr)))
        return tr.warm(res.vectors, jax.random.key(self.seed), res.operator_norm, size)

    def __call__(self, at: At, state: ClusterState) -> tuple[dict[str, Any], Any]:
        lin = at.lin
        thr = at.row.get("threshold")
        if thr is None:
            raise ConfigError("probes.cluster_above", self.tracker.frac, "a rule with a threshold")
        state, eig = self.tracker.update(lin.matmat, state, thr)
        row = {
            "sharpness": eig.values[0],
            "eigs": eig.values,
            "eigs_error": eig.error_bound,
            "sharpness_error": eig.error_bound[0],
            "sharpness_matvecs": eig.matvecs,
            "cluster_size": eig.size,
        }
        return row, state

    def arrays(self, state: ClusterState) -> dict[str, np.ndarray]:
        return {f: np.asarray(x) for f, x in state._asdict().items()}

    def load(self, arrays: Mapping[str, np.ndarray], at: At) -> ClusterState:
        fields = set(ClusterState._fields)
        if set(arrays) not in (fields, fields - {"past", "count"}):
            raise ConfigError("resume", sorted(arrays), "a cluster tracker's saved vectors")
        dtype = at.objective.dtype
        if "past" not in arrays:  # a checkpoint from before the prediction: no history yet
            V = np.asarray(arrays["vectors"])
            arrays = {**arrays, "past": np.zeros((4, *V.shape), V.dtype), "count": np.int32(0)}
        types = {"size": jnp.int32, "count": jnp.int32}
        return ClusterState(
            **{f: jnp.asarray(arrays[f], types.get(f, dtype)) for f in ClusterState._fields}
        )


class Alignment(HostProbe):
    r"""``grad_top_alignment`` $g^\top Hg/(\|g\|^2\lambda_1)$ with the row's ``sharpness``
    (a gradient and one Hessian product)."""

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        lam = float(at.row.get("sharpness", math.nan))
        gn = float(at.row.get("grad_norm", math.nan))
        if not (gn > 0 and math.isfinite(lam)):
            return {"grad_top_alignment": math.nan}, state
        H = at.process.hessian(at.objective, at.state)
        return {"grad_top_alignment": float(_alignment(H, jnp.asarray(lam, H.dtype)))}, state


class EffectiveSharpness(HostProbe):
    r"""``eff_sharpness`` $\lambda_1(P^{-1/2}HP^{-1/2})$ for processes whose operator is
    preconditioned (adaptive rules; none otherwise), by a warm-started Lanczos; its products are
    added to ``sharpness_matvecs``."""

    tol: float = 1e-3
    max_matvecs: int | None = None
    seed: int = 1

    @property
    def key(self) -> str:
        return "eff_tracker"

    def _tracker(self, base: Objective) -> EigenTracker:
        return EigenTracker(base, k=1, tol=self.tol, max_matvecs=self.max_matvecs, seed=self.seed)

    def init(self, at: At) -> dict[str, np.ndarray]:
        return self._tracker(at.objective.base()).state()

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        op = _operator(at.process, at.objective, at.state)
        if op is None or isinstance(op, HessianOperator):  # H itself: the sharpness probe's
            return {}, state
        tracker = self._tracker(at.objective.base())
        tracker.load_state(state)
        res = tracker.update(op)
        if at.notes is not None:
            at.notes["eff_eig"] = res
        spent = at.row.get("sharpness_matvecs", 0)
        row = {"eff_sharpness": float(res.values[0]), "sharpness_matvecs": spent + int(res.matvecs)}
        return row, tracker.state()

    def arrays(self, state: Any) -> dict[str, np.ndarray]:
        return _tracker_state(state)

    def load(self, arrays: Mapping[str, np.ndarray], at: At) -> Any:
        return _tracker_state(arrays)


class Stableness(HostProbe):
    r"""``stableness`` $S_L(w,\eta_t)$ at the row's ``lr_eff`` (``points`` eigen-solves)."""

    points: int = 5
    tol: float = 1e-3

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        lr_eff = float(at.row.get("lr_eff", math.nan))
        if not (lr_eff > 0 and math.isfinite(lr_eff)):
            return {}, state
        st = stableness(at.objective.base(), at.w, lr_eff, n_points=self.points, tol=self.tol)
        return {"stableness": float(st.value)}, state


# --------------------------------------------------------------------------- group probes


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


def distances(points: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    r"""$\|w_p - w_q\|$ for every pair of processes: ``{p: {"dist_q": value}}``."""
    out: dict[str, dict[str, float]] = {p: {} for p in points}
    names = list(points)
    for i, p in enumerate(names):
        for q in names[i + 1 :]:
            d = _norm(np.asarray(points[p], np.float64) - np.asarray(points[q], np.float64))
            out[p][f"dist_{q}"] = d
            out[q][f"dist_{p}"] = d
    return out


class Distances(GroupProbe):
    r"""``dist_q`` $=\|w_p-w_q\|$ on every process $p$, for every other process $q$."""

    def __call__(self, points, objective, state):
        return distances(points), state


class Phi(GroupProbe):
    r"""$\Phi(w)$ of every process's point (gradient flow to ``gtol``): ``phi_dist``,
    ``phi_loss``, ``phi_grad_norm``, ``phi_sharpness``, and with ``distances`` the distance
    ``phi_dist_q`` from $\Phi(w_p)$ to every other process's point $w_q$."""

    gtol: float = 1e-8
    tol: float = 1e-3
    distances: bool = False

    def __call__(self, points, objective, state):
        base = objective.base()
        out: dict[str, dict[str, Any]] = {}
        for n, w in points.items():
            x, row = phi_probe(base, jnp.asarray(w), self.gtol, self.tol)
            if self.distances:
                x = np.asarray(x, np.float64)
                row.update(
                    {
                        f"phi_dist_{q}": float(np.linalg.norm(x - v))
                        for q, v in points.items()
                        if q != n
                    }
                )
            out[n] = row
        return out, state
