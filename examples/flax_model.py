"""Your own model: a Flax (linen) MLP trained by full-batch GD, its sharpness measured on the way.

    pip install flax          # not a dependency of eoslab
    python examples/flax_model.py

``Objective.from_model(apply, params, (x, y), loss)`` takes any pure ``apply(params, x)`` and its
parameter pytree, here Flax's ``model.apply`` and ``model.init(...)``. With integer class labels
the run also measures the training accuracy (as ``eoslab run`` does). GD at learning rate ``lr``
sharpens the loss until the top Hessian eigenvalue reaches ``2/lr``, then stays near it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import eoslab
from eoslab import Objective, rules
from eoslab.runner import Probes


class MLP(nn.Module):
    """Two tanh hidden layers and a linear head."""

    width: int = 32
    classes: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.tanh(nn.Dense(self.width)(x))
        x = nn.tanh(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(x)


def spirals(n: int = 90, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on ``classes`` interleaved noisy spiral arms in the plane, integer labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    r = rng.uniform(0.2, 1.0, n)
    angle = 3.0 * r + 2 * np.pi * y / classes + 0.2 * rng.normal(size=n)
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    return x.astype(np.float32), y.astype(np.int32)


def make_objective(seed: int = 0) -> Objective:
    """``mse_half`` (1/2 |f(x) - onehot(y)|^2 averaged, Cohen et al.) of the MLP on the spirals."""
    x, y = spirals(seed=seed)
    model = MLP()
    params = model.init(jax.random.PRNGKey(seed), jnp.asarray(x))
    return Objective.from_model(model.apply, params, (x, y), "mse_half")


def main(steps: int = 300, lr: float = 0.3, probe_every: int = 25) -> eoslab.Run:
    """Train, print the sharpness beside 2/lr at every probe, and return the run."""
    objective = make_objective()
    run = eoslab.train(objective, rules.GD(lr), steps, probe_every=probe_every, probes=Probes(k=1))
    probed = run.metrics[run.metrics["sharpness"].notna()]
    print(f"Flax MLP, {objective.dim} parameters, GD lr {lr}: 2/lr = {2 / lr:g}")
    print(f"{'step':>6} {'loss':>10} {'accuracy':>9} {'sharpness':>10}")
    for row in probed.itertuples():
        print(f"{row.step:>6} {row.loss:>10.4g} {row.accuracy:>9.3f} {row.sharpness:>10.4f}")
    step, sharpness = int(probed["step"].iloc[-1]), probed["sharpness"].iloc[-1]
    print(f"final sharpness {sharpness:.6g} vs 2/lr = {2 / lr:g} (step {step})")
    return run


if __name__ == "__main__":
    main()
