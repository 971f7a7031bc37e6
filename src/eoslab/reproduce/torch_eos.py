r"""Cohen et al. (2021) in plain PyTorch: full-batch GD on an fc-tanh net sharpens to $2/\eta$
and stays there, measured from inside the PyTorch loop by `eoslab.torch.SharpnessProbe`.

The net is eoslab's zoo ``fc-tanh`` (MNIST-1D, MSE/2, float64) with its initial weights copied
into an ``nn.Sequential``; GD runs in torch (``torch.optim.SGD``), the probe writes an eoslab run
directory every ``every`` steps. The checks:

- $\lambda_1$ reaches $2/\eta$, never falls more than 10% below it after that, and its mean over
  the last third of the run is within 20% of it (it hovers just above, as in Cohen et al.);
- eoslab's JAX zoo net, at the same weights, gives the same $\lambda_1$ (relative $10^{-5}$);
- on a small net every certified bound of the top 3 holds against the dense float64 Hessian.

Needs PyTorch (``pip install 'eoslab[torch]'``); imported only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import data, models
from ..curvature import top_eigenpairs
from ..errors import ConfigError
from ..objective import Objective
from ..report.plots import plot_runs
from ..report.tables import write_table
from ._common import Reproduction, row

__all__ = ["REPRODUCTIONS", "torch_eos_experiment", "torch_fc_tanh"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "reproduction", "torch-eos", "PyTorch installed: pip install 'eoslab[torch]'"
        ) from None
    return torch


def torch_fc_tanh(params: dict, num_hidden: int) -> Any:
    """An ``nn.Sequential`` fc-tanh net holding the zoo MLP's ``params`` (float64; torch's
    ``Linear.weight`` is the zoo's ``w`` transposed)."""
    torch = _torch()
    nn = torch.nn
    layers: list = [nn.Flatten()]
    names = [f"dense{i}" for i in range(num_hidden)] + ["head"]
    for i, name in enumerate(names):
        w = np.asarray(params[name]["w"], np.float64)
        lin = nn.Linear(w.shape[0], w.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(params[name]["b"], np.float64)))
        layers += [lin] + ([nn.Tanh()] if i < num_hidden else [])
    return nn.Sequential(*layers)


def _zoo_point(net: Any, num_hidden: int) -> jax.Array:
    """The torch net's weights as the zoo objective's flat vector (``ravel_pytree`` order)."""
    lins = [m for m in net if hasattr(m, "weight")]
    names = [f"dense{i}" for i in range(num_hidden)] + ["head"]
    tree = {
        n: {
            "w": jnp.asarray(m.weight.detach().numpy().T),
            "b": jnp.asarray(m.bias.detach().numpy()),
        }
        for n, m in zip(names, lins, strict=True)
    }
    return ravel_pytree(tree)[0]


def mse_half(out, y):
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


def _problem(n: int, width: int, seed: int):
    torch = _torch()
    ds = data.load("mnist1d", n=n)
    apply, params = models.create(
        "fc-tanh", jax.random.key(seed), ds.x_train.shape[1:], 10, widths=(width, width)
    )
    obj = Objective.from_model(apply, params, ds, "mse_half", dtype="float64")
    net = torch_fc_tanh(params, 2)
    X = torch.from_numpy(np.array(ds.x_train, np.float64))
    Y = torch.nn.functional.one_hot(torch.from_numpy(np.array(ds.y_train, np.int64)), 10).double()
    return obj, net, X, Y


def _bounds_row(quick: bool) -> dict:
    """Top-3 certified bounds against the dense float64 Hessian of a small net."""
    from ..torch import SharpnessProbe, TorchModel

    torch = _torch()
    obj, net, X, Y = _problem(64, 8, seed=1)
    del obj
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    probe = SharpnessProbe(net, mse_half, (X, Y), k=3, tol=1e-6)
    worst = 0.0
    for _ in range(2 if quick else 4):
        r = probe()
        m = TorchModel(net, mse_half, (X, Y))
        w = m.flat()
        H = m.hvp(w, torch.eye(w.numel(), dtype=torch.float64)).numpy()
        ev = np.linalg.eigvalsh(0.5 * (H + H.T))[::-1][:3]
        worst = max(worst, float(np.max(np.abs(r.values - ev) / r.error_bound)))
        for _ in range(20):
            opt.zero_grad()
            mse_half(net(X), Y).backward()
            opt.step()
    return row(
        "small net, top 3: max |lambda_i - dense_i| / certified bound",
        1.0,
        worst,
        0.0,
        at_most=True,
    )


def torch_eos_experiment(out: Path, quick: bool) -> list[dict]:
    _torch()
    with jax.enable_x64(True):
        return _experiment(out, quick)


def _experiment(out: Path, quick: bool) -> list[dict]:
    from ..torch import SharpnessProbe

    torch = _torch()
    n, width = (500, 64) if quick else (2000, 200)
    lr, steps, every = (0.4, 300, 10) if quick else (0.1, 2000, 10)
    obj, net, X, Y = _problem(n, width, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    lam_t, lam_j = [], []
    with SharpnessProbe(
        net, mse_half, (X, Y), k=1, tol=1e-7, optimizer=opt, out=out / "run", name="fc-tanh"
    ) as probe:
        for step in range(steps + 1):
            if step % every == 0:
                r = probe.log(step)
                lam_t.append(r.sharpness)
                if step % (5 * every) == 0:  # the JAX zoo at the same weights
                    w = _zoo_point(net, 2)
                    lam = float(top_eigenpairs(obj, w, tol=1e-9).values[0])
                    lam_j.append((r.sharpness, lam))
            if step < steps:
                opt.zero_grad()
                mse_half(net(X), Y).backward()
                opt.step()
    ratio = np.asarray(lam_t) / (2 / lr)
    reached = int(np.argmax(ratio >= 0.95)) if np.any(ratio >= 0.95) else len(ratio)
    after = ratio[reached:] if reached < len(ratio) else np.array([np.nan])
    rel = max(abs(a - b) / abs(b) for a, b in lam_j)
    rows = [
        row("max lambda_1 / (2/lr)", 1.0, float(ratio.max()), 0.05, at_least=True),
        row(
            "min lambda_1 / (2/lr) after first reaching it",
            1.0,
            float(after.min()),
            0.1,
            at_least=True,
        ),
        row(
            "mean lambda_1 / (2/lr) over the last third",
            1.0,
            float(ratio[-(len(ratio) // 3) :].mean()),
            0.2,
        ),
        row(
            f"lambda_1, torch vs eoslab's JAX fc-tanh: max rel. difference ({len(lam_j)} points)",
            0.0,
            rel,
            1e-5,
        ),
        _bounds_row(quick),
    ]
    plot_runs([out / "run"], out / "sharpness.png", title="fc-tanh in PyTorch, GD, eoslab probe")
    write_table(out, rows, "Edge of Stability in a plain PyTorch GD loop (fc-tanh, MNIST-1D)")
    return rows


REPRODUCTIONS = (
    Reproduction(
        "torch-eos",
        "Cohen et al. (2021), in a PyTorch training loop (eoslab.torch)",
        "PyTorch GD on fc-tanh sharpens to 2/lr and stays; the JAX zoo gives the same lambda_1",
        torch_eos_experiment,
        needs="PyTorch (pip install 'eoslab[torch]')",
    ),
)
"""The PyTorch bridge at the Edge of Stability."""
