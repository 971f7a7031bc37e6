r"""When to run the certified sharpness probe: `AdaptiveSchedule` decides from cheap signals.

A fixed schedule probes every ``probe_every`` steps. The adaptive one (``Probes(schedule=
"adaptive", budget=B)``) picks the gap to the next probe after each probe, on the host between
two compiled chunks of steps, from signals that cost nothing beyond the probes it already made:

- the certified values $(t_i,\lambda_i)$ so far. Linear interpolation between two probes errs by
  at most $g^2|\lambda''|/8$ over a gap $g$; with $\lambda''$ estimated by the second divided
  difference $D_2$ of the last three probes, the gap $g=\sqrt{8\,\varepsilon\,\lambda/|D_2|}$
  keeps that error near $\varepsilon\lambda$ (``curvature``);
- the trend towards the threshold $2/\eta$: with slope $s>0$ from the last two probes the
  straight line crosses it after $g_\times=(2/\eta-\lambda)/s$ steps; the next probe comes at
  half that, or at $\lceil g_\times\rceil$ once that is within two looks (``crossing``), so
  probes close in on the onset geometrically;
- the edge: where the loss rose ($L_t>L_{t-1}$, which GD's loss does not do below the
  threshold) in the gap before the probe, the next gap is at most ``edge_gap`` (``edge``), and
  no curvature is read across such a gap: at the edge of
  stability the loss rises from a few steps before each drop of $\lambda_1$ (a catapult) to its
  end, while between drops $\lambda_1$ climbs back smoothly and long gaps suffice. A rise
  during a longer gap ends it at the next chunk boundary (every ``look`` steps; ``loss_rise``);
- the budget: the products spent after the first three probes (the start) stay within $B\,t$
  plus one probe, so the gap is at least $(c + S - B\,t)/B$ for spent $S$ and the next probe's
  cost $c$, estimated by the largest of the last three (``budget``), and a loss rise ends a gap
  early only where the budget affords it; where the curve was smooth the credit saved is spent
  at the edge;
- the longest gap, ``longest`` steps (``longest``).

Every decision is a pure function of these numbers (`AdaptiveSchedule.gap`), so a run and its
resume probe the same steps; each probed row records why it was probed (``probe_reason``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

__all__ = ["REASONS", "AdaptiveSchedule", "Decision", "ScheduleState"]

#: Why a step was probed (the ``probe_reason`` column): the rule that set the gap before it.
REASONS = (
    "start",  # the first probes (step 0, and before three values give a curvature)
    "curvature",  # the interpolation error bound
    "crossing",  # half the way to the predicted crossing of 2/lr
    "edge",  # at the edge of stability: the loss rose since the last probe
    "loss_rise",  # the loss rose below the threshold: the chunk was cut short
    "longest",  # the longest gap
    "budget",  # the budget of Hessian products forced a longer gap
    "last",  # the run's last step (every schedule probes it)
)


class Decision(NamedTuple):
    """The gap to the next probe and why (an entry of `REASONS`)."""

    gap: int
    reason: str


class ScheduleState(NamedTuple):
    """What the schedule remembers between probes (plain arrays: it is checkpointed)."""

    steps: np.ndarray  # (3,) the last three probed steps, oldest first; NaN before
    values: np.ndarray  # (3,) their certified lambda_1
    costs: np.ndarray  # (3,) their Hessian products
    rough: np.ndarray  # (3,) whether the loss rose in the gap ending at each (1.0) or not
    spent: np.ndarray  # () products spent after the first three probes
    last_loss: np.ndarray  # () the last loss seen (NaN before any)
    rises: np.ndarray  # () loss rises since the last probe
    reason: np.ndarray  # () index in REASONS of why the next probe comes

    @classmethod
    def empty(cls) -> ScheduleState:
        nan3 = np.full(3, np.nan)
        return cls(
            nan3, nan3.copy(), nan3.copy(), np.zeros(3), np.zeros(()), np.full((), np.nan),
            np.zeros(()), np.zeros((), np.int64),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AdaptiveSchedule:
    r"""The adaptive schedule's rules (see the module docstring); all gaps are in steps.

    ``budget`` (None: unlimited) is the Hessian products per step on average, ``longest`` the
    longest gap, ``rtol`` the relative interpolation error $\varepsilon$ aimed at, ``edge_gap``
    the longest gap after a loss rise, ``first_gap`` the gap while fewer than three values are
    known and ``look`` the steps between two looks at the losses within a gap."""

    budget: float | None = None
    longest: int = 100
    rtol: float = 0.005
    edge_gap: int = 8
    first_gap: int = 8
    look: int = 8

    def pieces(self, gap: int) -> list[int]:
        """``gap`` steps as compiled chunks: ``look`` steps each, then the rest as distinct
        powers of two (a run compiles few scan lengths)."""
        rest = gap % self.look
        tail = [1 << i for i in range(rest.bit_length()) if rest >> i & 1]
        return [self.look] * (gap // self.look) + tail

    def observe(self, state: ScheduleState, losses: np.ndarray) -> ScheduleState:
        """``state`` after the losses of consecutive steps (a chunk's, in order)."""
        losses = np.asarray(losses, np.float64).ravel()
        if losses.size == 0:
            return state
        seq = np.concatenate([[float(state.last_loss)], losses])
        rises = int(np.sum(seq[1:] > seq[:-1]))  # NaN compares False: the first loss is free
        return state._replace(
            last_loss=np.asarray(seq[-1]), rises=np.asarray(float(state.rises) + rises)
        )

    def record(self, state: ScheduleState, step: int, value: float, cost: int) -> ScheduleState:
        """``state`` after a probe at ``step`` found ``value`` for ``cost`` products."""
        known = int(np.sum(np.isfinite(state.steps)))
        spent = float(state.spent) + (float(cost) if known >= 3 else 0.0)  # the start is free
        return state._replace(
            steps=np.append(state.steps[1:], float(step)),
            values=np.append(state.values[1:], float(value)),
            costs=np.append(state.costs[1:], math.nan if known == 0 else float(cost)),
            rough=np.append(state.rough[1:], float(float(state.rises) > 0)),
            spent=np.asarray(spent),
            rises=np.zeros(()),
        )

    def gap(self, state: ScheduleState, step: int, threshold: float) -> Decision:
        """The gap from the probe just recorded at ``step`` to the next (before the run's end,
        which the loop clips), from the values, the loss rises before it and the budget."""
        t, lam = state.steps, state.values
        known = int(np.sum(np.isfinite(lam)))
        if known < 3:
            g, why = float(self.first_gap), "start"
        else:
            g, why = math.inf, "curvature"
            d2 = 2.0 * ((lam[2] - lam[1]) / (t[2] - t[1]) - (lam[1] - lam[0]) / (t[1] - t[0]))
            d2 /= t[2] - t[0]
            # across a catapult (the loss rose) the three values do not measure a curvature
            if d2 != 0.0 and not np.any(state.rough[1:]):
                g = math.sqrt(8.0 * self.rtol * abs(lam[2]) / abs(d2))
            slope = (lam[2] - lam[1]) / (t[2] - t[1])
            if math.isfinite(threshold) and lam[2] < threshold and slope > 0:
                cross = (threshold - lam[2]) / slope
                # half way, or onto the crossing once it is within two looks
                near = cross if cross <= 2 * self.look else 0.5 * cross
                if near < g:
                    g, why = float(math.ceil(near)) if near == cross else near, "crossing"
        if state.rough[-1] and g > self.edge_gap:
            g, why = float(self.edge_gap), "edge"
        if g > self.longest:
            g, why = float(self.longest), "longest"
        gap = max(1, int(math.floor(g)))
        need = self._affordable(state) - step
        if need > gap:
            gap, why = need, "budget"
        return Decision(gap, why)

    def _affordable(self, state: ScheduleState) -> int:
        """The first step at which the budget affords the next probe (0: any)."""
        costs = state.costs[np.isfinite(state.costs)]
        if self.budget is None or not costs.size or int(np.sum(np.isfinite(state.steps))) < 3:
            return 0
        # the next probe at step s must leave spent + its cost within budget * s
        return math.ceil((float(state.spent) + float(np.max(costs))) / self.budget)

    def cut(self, state: ScheduleState, gap: int, step: int) -> bool:
        """Whether a gap of ``gap`` steps under way should end at ``step``: the loss rose since
        the last probe, the gap is longer than at the edge (``edge_gap``), and the budget
        affords a probe at ``step``."""
        rose = float(state.rises) > 0 and gap > self.edge_gap
        return rose and step >= self._affordable(state)
