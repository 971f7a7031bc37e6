r"""`lockstep`: the optimizer, gradient flow and the limiting flow from one start, in one loop.

Step $t$ of normalized GD (or sqrt-loss GD) at lr $\eta$ is compared with gradient flow at time
$\eta t$ and with the limiting flow at $\tau=\eta^2 t$; the ``phi`` probe adds $\Phi(x_t)$.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from jaxtyping import Array, Float

from ..curvature._checks import check_w
from ..dynamics.gradient_flow import GradientFlow
from ..dynamics.limiting_flow import ProjectedLimitingFlow, RetractedLimitingFlow, flow_constant
from ..dynamics.manifold import DENSE_MAX_DIM
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import RULES
from ..errors import ConfigError, check_positive
from ..objective import LossLike, as_objective
from ..runner import Probes, Run, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Lockstep", "lockstep"]


class Lockstep(NamedTuple):
    metrics: pd.DataFrame  # one row per compared step (wide: one column per process and quantity)
    run: Run  # the run itself: one row per step and process


def lockstep(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    algorithm: str,
    lr: float,
    steps: int,
    every: int = 1,
    phi_gtol: float = 1e-8,
) -> Lockstep:
    r"""Run ``algorithm`` (normalized GD or sqrt-loss GD on $L$) with gradient flow and the limiting
    flow beside it (`eoslab.runner.run`); wide columns: ``step``, ``tau``, ``gf_time`` $=\eta t$,
    the three losses and sharpnesses, and the distances ``opt_gf`` $=\|x_t-\phi(x_0,\eta t)\|$,
    ``opt_flow`` $=\|x_t-X(\tau)\|$, ``phi_flow`` $=\|\Phi(x_t)-X(\tau)\|$ and
    ``opt_phi`` $=\|x_t-\Phi(x_t)\|$.
    """
    import pandas as pd

    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    flow_constant(algorithm)
    check_positive("lr", lr)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", steps, "an integer >= 1")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError("every", every, "an integer >= 1")
    rule = RULES[algorithm](lr=lr)  # NormalizedGD or SqrtLossGD (L_min: the objective's)
    flow_cls = ProjectedLimitingFlow if obj.dim <= DENSE_MAX_DIM else RetractedLimitingFlow
    procs = {
        "opt": Optimizer(rule),
        "gf": GradientFlow(lr=float(lr)),
        "flow": flow_cls(algorithm=algorithm, lr=float(lr), phi_gtol=phi_gtol),
    }
    res = run(
        procs,
        obj,
        steps,
        w0=w0,
        probe_every=every,
        probes=Probes(tol=1e-6, alignment=False, phi=True, phi_gtol=phi_gtol),
    )
    m = res.metrics
    probed = m[m["sharpness"].notna()]
    per = {n: probed[probed["process"] == n].set_index("step") for n in procs}
    opt, gf, fl = per["opt"], per["gf"], per["flow"]
    idx = opt.index.to_numpy()
    wide = pd.DataFrame(
        {
            "step": idx,
            "tau": lr**2 * idx.astype(np.float64),
            "gf_time": lr * idx.astype(np.float64),
            "loss_opt": opt["loss"].to_numpy(),
            "loss_gf": gf["loss"].to_numpy(),
            "loss_flow": fl["loss"].to_numpy(),
            "sharpness_opt": opt["sharpness"].to_numpy(),
            "sharpness_gf": gf["sharpness"].to_numpy(),
            "sharpness_flow": fl["sharpness"].to_numpy(),
            "opt_gf": opt["dist_gf"].to_numpy(),
            "opt_flow": opt["dist_flow"].to_numpy(),
            "phi_flow": opt["phi_dist_flow"].to_numpy(),
            "opt_phi": opt["phi_dist"].to_numpy(),
        }
    )
    return Lockstep(wide, res)
