r"""`SharpnessProbe`: certified, warm-started sharpness called from a PyTorch training loop.

>>> probe = SharpnessProbe(model, loss_fn, (X, y), k=1, tol=1e-3)   # doctest: +SKIP
>>> for step in range(steps):                                        # doctest: +SKIP
...     ...  # the user's own optimizer step
...     if step % 10 == 0:
...         r = probe()            # r.values, r.error_bound, r.matvecs, r.seconds
...         probe.log(step)        # a row in an eoslab run directory (with out=DIR)

Each call reads the module's current parameters and buffers, builds a `TorchHessianOperator`
(or, with an Adam/AdamW ``optimizer`` and ``preconditioned=True``, the preconditioned
$P^{-1/2}HP^{-1/2}$ of `adam_preconditioner`) and updates an `eoslab.curvature.EigenTracker`, so
the solve is eoslab's own Lanczos, warm-started from the last call's eigenvectors, with its
certified bounds (residual plus $8\epsilon\lVert H\rVert$).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

import torch

from ..curvature.eigen import AbstractEigenSolver, EigResult
from ..curvature.operator import PreconditionedOperator
from ..curvature.tracker import EigenTracker
from ..dynamics.rules import GD, Adam, HeavyBall, Nesterov, Rule
from ..errors import ConfigError, check_positive
from ..runner.store import RunStore
from .model import TorchModel, to_jax
from .operator import TorchHessianOperator, adam_preconditioner

__all__ = ["ProbeResult", "SharpnessProbe", "minibatch_sharpness", "rule_of"]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    r"""One probe: the top-$k$ eigenvalues of $H$ (or $P^{-1}H$) with certificates.

    Attributes:
        values: $\lambda_1 \ge \dots \ge \lambda_k$ (NumPy, the module's dtype).
        error_bound: certified: some eigenvalue lies within ``error_bound[i]`` of ``values[i]``.
        residuals: $\lVert Hv_i - \lambda_i v_i\rVert$.
        converged: every bound met ``tol``.
        matvecs: Hessian-vector products this call spent.
        seconds: wall time of this call.
        loss: the full-batch loss at the probed parameters (NaN unless ``log`` measured it).
    """

    values: np.ndarray
    error_bound: np.ndarray
    residuals: np.ndarray
    converged: bool
    matvecs: int
    seconds: float
    loss: float = math.nan

    @property
    def sharpness(self) -> float:
        r"""$\lambda_1$."""
        return float(self.values[0])


def rule_of(optimizer: torch.optim.Optimizer | None, lr: float | None) -> Rule | None:
    """The eoslab rule a torch optimizer runs (for its threshold and the run record): SGD
    without momentum is `GD`, with momentum `HeavyBall` (``nesterov``: `Nesterov`), Adam and
    AdamW are `Adam`; with no optimizer, ``GD(lr)`` when ``lr`` is given, else None."""
    if optimizer is None:
        return None if lr is None else GD(float(lr))
    groups = optimizer.param_groups
    g = groups[0]
    if any(x["lr"] != g["lr"] for x in groups):
        raise ConfigError("optimizer.param_groups", "<several lrs>", "one lr for all groups")
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return Adam(float(g["lr"]), float(g["betas"][0]), float(g["betas"][1]), float(g["eps"]))
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(g.get("momentum", 0.0))
        if g.get("dampening", 0.0):
            raise ConfigError("SGD dampening", g["dampening"], "0 (heavy ball)")
        if beta == 0.0:
            return GD(float(g["lr"]))
        return (Nesterov if g.get("nesterov") else HeavyBall)(float(g["lr"]), beta)
    raise ConfigError(
        "optimizer", type(optimizer).__name__, "torch.optim.SGD, Adam or AdamW (or None)"
    )


def minibatch_sharpness(module: torch.nn.Module, loss_fn: Any, batch: Any, *, train: bool = False):
    r"""$g_B^\top H_B g_B / \lVert g_B\rVert^2$ of one mini-batch $B$ at the module's
    parameters: the curvature along the step SGD takes on that batch (Andreyev & Beneventano;
    its mean over batches is `eoslab.curvature.batch_sharpness`). One gradient and one product,
    exact (no solver); 0 when $g_B = 0$."""
    m = TorchModel(module, loss_fn, batch, train=train)
    w = m.flat()
    _, g = m.value_and_grad(w)
    gg = torch.dot(g, g)
    if float(gg) == 0.0:
        return 0.0
    hg = m.hvp(w, g[:, None])[:, 0]
    return float(torch.dot(g, hg) / gg)


class SharpnessProbe:
    r"""Certified top-$k$ curvature of a PyTorch model, called from the user's training loop.

    Args:
        module: the ``nn.Module`` (its current parameters are read at every call).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        data: ``(inputs, targets)`` or an iterable of batches (the full-batch loss is their mean
            weighted by batch size; see `TorchModel`).
        k: how many top eigenvalues.
        tol: relative tolerance on each certified bound.
        optimizer: the training optimizer (its rule gives the threshold and the run record).
        preconditioned: probe $\lambda(P^{-1}H)$ of an Adam/AdamW ``optimizer`` (its state's
            $P=\sqrt{\hat\nu}+\epsilon$) instead of $\lambda(H)$.
        lr: the learning rate of a plain GD loop, when no ``optimizer`` is given (threshold 2/lr).
        train: evaluate the module in train mode (default eval).
        hvp: how products are computed, ``"jvp"`` or ``"double_backward"`` (see `TorchModel`).
        solver, max_matvecs, seed: passed to `EigenTracker`.
        out: a new eoslab run directory that `log` writes rows to (None: no store).
        name: the problem's name in the run record (default the module's class name).

    ``probe()`` returns a `ProbeResult`; ``probe.tracker`` is the `EigenTracker`
    (``.last`` the full `EigResult`, with eigenvectors).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: Any,
        data: Any,
        k: int = 1,
        tol: float = 1e-3,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        preconditioned: bool = False,
        lr: float | None = None,
        train: bool = False,
        hvp: str = "jvp",
        solver: AbstractEigenSolver | None = None,
        max_matvecs: int | None = None,
        seed: int = 0,
        out: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("k", k, "an integer >= 1")
        check_positive("tol", tol)
        if lr is not None:
            check_positive("lr", lr)
            if optimizer is not None:
                raise ConfigError("lr", lr, "None when an optimizer is given (its lr is used)")
        self.model = TorchModel(module, loss_fn, data, train=train, hvp=hvp)
        self.rule = rule_of(optimizer, lr)
        if preconditioned and not isinstance(self.rule, Adam):
            raise ConfigError(
                "preconditioned", True, "False unless optimizer is torch.optim.Adam or AdamW"
            )
        self.optimizer = optimizer
        self.preconditioned = preconditioned
        self.x64 = self.model.dtype == torch.float64
        self.tracker = EigenTracker(None, k, tol, solver=solver, max_matvecs=max_matvecs, seed=seed)
        self.last: ProbeResult | None = None
        self._name = name or type(module).__name__
        self._store: RunStore | None = None
        self._held = contextlib.ExitStack()
        if out is not None:
            self._open(Path(out))

    # ------------------------------------------------------------------ probing
    def operator(self) -> TorchHessianOperator | PreconditionedOperator:
        """The operator at the module's current parameters (preconditioned if asked)."""
        op = TorchHessianOperator(self.model, to_jax(self.model.flat()))
        if self.preconditioned:
            return PreconditionedOperator(op, adam_preconditioner(self.optimizer, self.model))
        return op

    def threshold(self) -> float:
        """The optimizer's stability threshold (NaN without optimizer or lr)."""
        thr = None if self.rule is None else self.rule.threshold()
        return math.nan if thr is None else float(thr)

    def __call__(self) -> ProbeResult:
        """Top-$k$ eigenvalues at the current parameters, warm-started from the last call."""
        t0 = time.perf_counter()
        with jax.enable_x64(self.x64):
            res: EigResult = self.tracker.update(self.operator())
            out = ProbeResult(
                values=np.asarray(res.values),
                error_bound=np.asarray(res.error_bound),
                residuals=np.asarray(res.residuals),
                converged=bool(res.converged),
                matvecs=int(res.matvecs),
                seconds=time.perf_counter() - t0,
            )
        self.last = out
        return out

    def loss(self) -> float:
        """The full-batch loss at the current parameters."""
        with torch.no_grad():
            v, _ = self.model.value_and_grad(self.model.flat())
        return float(v)

    # ------------------------------------------------------------------ the run store
    def _record(self) -> dict[str, Any]:
        rule = self.rule.describe() if self.rule is not None else None
        loss = getattr(self.model.loss_fn, "__name__", type(self.model.loss_fn).__name__)
        return {
            "framework": f"pytorch {torch.__version__}",
            "problem": {
                "kind": "model",
                "model": self._name,
                "dataset": "PyTorch data",
                "n": self.model.n,
                "loss": loss,
            },
            "rule": rule,
            "dim": self.model.dim,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "k": self.tracker.k,
            "tol": self.tracker.tol,
            "preconditioned": self.preconditioned,
            "steps": None,
            "probe_every": None,
        }

    def _open(self, out: Path) -> None:
        store = RunStore(out)
        store.check_new()  # before anything is made: never over another run or files
        out.mkdir(parents=True, exist_ok=True)
        self._held.enter_context(store.lock("torch probe"))
        try:
            store.create(self._record())
        except BaseException:
            self._held.close()
            raise
        self._store = store

    def log(self, step: int, **extra: Any) -> ProbeResult:
        r"""Probe now and write one row for ``step`` to the run directory: ``loss``,
        ``sharpness`` ($\lambda_1$, or ``eff_sharpness`` $\lambda_1(P^{-1}H)$ when
        preconditioned), ``sharpness_error``, ``eigs``, ``sharpness_matvecs``, ``threshold``,
        ``lr_eff``, ``probe_seconds`` and the ``extra`` scalars (e.g. ``accuracy=0.93``)."""
        if self._store is None:
            raise ConfigError("out", None, "a run directory (SharpnessProbe(..., out=DIR))")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError("step", step, "an integer >= 0")
        for key, v in extra.items():
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ConfigError(key, v, "a number (a metrics column)")
        r = self()
        loss = self.loss()
        r = dataclasses.replace(r, loss=loss)
        self.last = r
        row: dict[str, Any] = {
            "step": step,
            "loss": loss,
            "sharpness": r.sharpness,
            "sharpness_error": float(r.error_bound[0]),
            "eigs": [float(x) for x in r.values],
            "sharpness_matvecs": r.matvecs,
            "threshold": self.threshold(),
            "lr_eff": math.nan if self.rule is None else float(self.rule.lr),
            "probe_seconds": r.seconds,
            **{k: float(v) for k, v in extra.items()},
        }
        if self.preconditioned:
            row["eff_sharpness"] = row["sharpness"]
            row["sharpness"] = math.nan  # not measured: H's own lambda_1
            row["sharpness_error"] = math.nan
        self._store.write_part(pd.DataFrame([row]))
        man = self._store.read_manifest()
        self._store.write_manifest({**man, "status": "running", "step": step})
        return r

    def close(self, status: str = "completed", message: str = "") -> None:
        """Mark the run ``status`` and release its lock (no-op without a run directory)."""
        if self._store is not None:
            self._store.set_status(status, message or f"{status} (PyTorch training loop)")
            self._store = None
        self._held.close()

    def __enter__(self) -> SharpnessProbe:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")
