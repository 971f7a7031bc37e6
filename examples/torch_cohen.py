"""Cohen et al. (2021)'s fc-tanh in plain PyTorch, trained by a plain GD loop, with eoslab's
certified, warm-started sharpness probe every 10 steps.

Usage:
    pip install 'eoslab[torch]'
    python examples/torch_cohen.py --out runs/torch-cohen    # then: eoslab report runs/torch-cohen

The model, the loss and the loop are ordinary PyTorch; eoslab only reads the module's parameters
(``SharpnessProbe``), returns lambda_1 with a certified bound, and writes an eoslab run directory
that ``eoslab report`` / ``eoslab plot`` read, the 2/lr line included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import torch
from eoslab import data
from eoslab.torch import SharpnessProbe
from torch import nn


class FcTanh(nn.Module):
    """Fully connected, tanh, widths (200, 200) as in Cohen et al. (2021)."""

    def __init__(self, d_in: int, width: int = 200, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mse_half(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1/N sum_i 1/2 |f(x_i) - y_i|^2 against one-hot targets."""
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


def main(
    n: int = 1000,
    width: int = 200,
    lr: float = 0.1,
    steps: int = 1500,
    every: int = 10,
    out: Path | None = None,
) -> tuple[nn.Module, list]:
    """Train by full-batch GD, probing every ``every`` steps; returns the model and the probes."""
    torch.manual_seed(0)
    ds = data.load("mnist1d", n=n)
    X = torch.from_numpy(np.array(ds.x_train, np.float32))
    Y = nn.functional.one_hot(torch.from_numpy(np.array(ds.y_train, np.int64)), 10).float()
    model = FcTanh(X.shape[1], width)
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # full-batch GD
    print(f"fc-tanh in PyTorch, {sum(p.numel() for p in model.parameters()):,} parameters")

    results = []
    with SharpnessProbe(model, mse_half, (X, Y), k=1, tol=1e-3, optimizer=opt, out=out) as probe:
        for step in range(steps + 1):
            if step % every == 0:
                r = probe.log(step) if out is not None else probe()
                results.append(r)
                print(
                    f"step {step:5d}  lambda_1 {r.sharpness:8.3f} +- {r.error_bound[0]:.1e}"
                    f"  (2/lr = {2 / lr:g})  {r.matvecs:3d} HVPs  {r.seconds:5.2f} s"
                )
            if step < steps:
                opt.zero_grad()
                mse_half(model(X), Y).backward()
                opt.step()
    return model, results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="MNIST-1D training examples")
    p.add_argument("--width", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=10, help="probe every this many steps")
    p.add_argument("--out", type=Path, default=None, help="a new eoslab run directory")
    a = p.parse_args()
    main(a.n, a.width, a.lr, a.steps, a.every, a.out)
