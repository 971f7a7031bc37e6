"""Your own model: an Equinox MLP trained by full-batch GD, its sharpness measured on the way.

    python examples/equinox_model.py

Any pytree of parameters works (an ``eqx.Module`` included): ``Objective.from_pytree(loss, model)``
flattens its floating-point arrays into the flat vector ``w`` that eoslab works on, and
``objective.unravel(w)`` gives the model back. GD at learning rate ``lr`` sharpens the loss until
the top Hessian eigenvalue reaches ``2/lr``, then stays near it (the Edge of Stability).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eoslab
from eoslab import Objective, rules
from eoslab.runner import Probes


def spirals(n: int = 90, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on ``classes`` interleaved noisy spiral arms in the plane, integer labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    r = rng.uniform(0.2, 1.0, n)
    angle = 3.0 * r + 2 * np.pi * y / classes + 0.2 * rng.normal(size=n)
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    return x.astype(np.float32), y.astype(np.int32)


def make_objective(seed: int = 0) -> Objective:
    """Mean squared error (1/2 |f(x) - onehot(y)|^2, Cohen et al.) of a tanh MLP on the spirals."""
    x, y = spirals(seed=seed)
    model = eqx.nn.MLP(
        2, 3, width_size=32, depth=2, activation=jnp.tanh, key=jax.random.PRNGKey(seed)
    )
    x, targets = jnp.asarray(x), jax.nn.one_hot(y, 3)

    def loss(model: eqx.nn.MLP) -> jax.Array:
        return 0.5 * jnp.mean(jnp.sum((jax.vmap(model)(x) - targets) ** 2, axis=-1))

    return Objective.from_pytree(loss, model)


def main(steps: int = 300, lr: float = 0.3, probe_every: int = 25) -> eoslab.Run:
    """Train, print the sharpness beside 2/lr at every probe, and return the run."""
    objective = make_objective()
    run = eoslab.train(objective, rules.GD(lr), steps, probe_every=probe_every, probes=Probes(k=1))
    probed = run.metrics[run.metrics["sharpness"].notna()]
    print(f"Equinox MLP, {objective.dim} parameters, GD lr {lr}: 2/lr = {2 / lr:g}")
    print(f"{'step':>6} {'loss':>10} {'sharpness':>10}")
    for row in probed.itertuples():
        print(f"{row.step:>6} {row.loss:>10.4g} {row.sharpness:>10.4f}")
    step, sharpness = int(probed["step"].iloc[-1]), probed["sharpness"].iloc[-1]
    print(f"final sharpness {sharpness:.6g} vs 2/lr = {2 / lr:g} (step {step})")
    return run


if __name__ == "__main__":
    main()
