r"""A PyTorch model as pure functions of one flat parameter vector, on the host.

`TorchModel` holds an ``nn.Module``, a loss function and the data (one batch, or a list of
batches whose losses are averaged weighted by batch size), and computes, for a flat vector $w$
(the module's trainable parameters in ``named_parameters()`` order):

$$L(w) = \sum_b \tfrac{n_b}{N}\,\ell\big(f(w; x_b), y_b\big),\qquad \nabla L(w),\qquad
\nabla^2 L(w)\,V,$$

the Hessian products by `torch.func` (``jvp`` of ``grad``, forward over reverse, vmapped over
the columns of $V$) through ``functional_call`` with the module's current buffers. The module's
own parameters are never changed. `to_torch` / `to_jax` move arrays through DLPack (no copy where
both libraries see the same device).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["TorchModel", "flat_parameters", "to_jax", "to_torch"]

LossFn = Callable[[Any, Any], torch.Tensor]


def to_torch(x: Any, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """A JAX (or NumPy) array as a torch tensor: DLPack, no copy when the device matches."""
    try:
        t = torch.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError):
        t = torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else t


def to_jax(t: torch.Tensor) -> jax.Array:
    """A torch tensor as a JAX array: DLPack, no copy when JAX sees the tensor's device (else
    through host memory)."""
    t = t.detach().contiguous()
    try:
        return jax.dlpack.from_dlpack(t)
    except (BufferError, RuntimeError, TypeError, ValueError):
        return jax.numpy.asarray(t.cpu().numpy())


def flat_parameters(module: nn.Module) -> torch.Tensor:
    """The module's trainable parameters, flattened and concatenated in ``named_parameters()``
    order (a detached copy)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters() if p.requires_grad])


def _is_tensorish(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or (
        isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(t, torch.Tensor) for t in x)
    )


def _batches(data: Any) -> list[tuple[Any, Any]]:
    """``(inputs, targets)`` or an iterable of such pairs, as a list of pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_tensorish(data[0]):
        if isinstance(data[1], torch.Tensor):
            return [(data[0], data[1])]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise ConfigError(
            "data",
            type(data).__name__,
            "(inputs, targets) tensors, or an iterable of (inputs, targets) batches",
        )
    out = []
    for i, b in enumerate(data):
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and _is_tensorish(b[0])):
            raise ConfigError(f"data[{i}]", type(b).__name__, "an (inputs, targets) pair")
        out.append((b[0], b[1]))
    if not out:
        raise ConfigError("data", "<no batches>", "at least one (inputs, targets) batch")
    return out


def _size(x: Any) -> int:
    return int((x[0] if isinstance(x, (tuple, list)) else x).shape[0])


class TorchModel:
    r"""An ``nn.Module``, a loss and data: $L(w)$, $\nabla L$, $\nabla^2L\,V$ of a flat $w$.

    Args:
        module: the model; its trainable parameters (``requires_grad``) are the coordinates of
            $w$, all of one floating dtype (call ``module.double()`` for float64).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss of a batch.
        data: ``(inputs, targets)`` tensors, or an iterable of such batches (e.g. a
            ``DataLoader``; read once here, so shuffling or augmentation is frozen); the full-batch
            loss is their mean weighted by batch size. ``inputs`` may be a tuple of tensors (the
            module's positional arguments). Floating tensors are cast to the parameters' dtype.
        train: evaluate the module in train mode (dropout, batch statistics; their buffers are
            copied first, so running statistics are never updated) instead of eval mode.
        vectorize: compute a block of products with ``torch.func.vmap`` (else one at a time).
        hvp: ``"jvp"`` (default): each product is ``torch.func.jvp`` of ``grad``, forward and
            backward again; ``"double_backward"``: the gradient's graph is built once per point
            (``create_graph=True``, kept for every batch while the point stays the same) and each
            product is one more backward pass through it (as PyHessian): faster per product,
            more memory.

    Objects compare by identity: a JAX computation compiled for one model is reused while the
    model is the same object.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        train: bool = False,
        vectorize: bool = True,
        hvp: str = "jvp",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError("module", type(module).__name__, "a torch.nn.Module")
        if not callable(loss_fn):
            raise ConfigError("loss_fn", loss_fn, "a callable loss_fn(outputs, targets)")
        if hvp not in ("jvp", "double_backward"):
            raise ConfigError("hvp", hvp, "'jvp' or 'double_backward'")
        if not isinstance(train, bool):
            raise ConfigError("train", train, "True (train mode) or False (eval mode)")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("module", type(module).__name__, "a module with trainable parameters")
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ConfigError("module dtypes", sorted(map(str, dtypes)), "one floating dtype")
        if len(devices) != 1:
            raise ConfigError("module devices", sorted(map(str, devices)), "one device")
        self.module = module
        self.loss_fn = loss_fn
        self.train = train
        self.vectorize = vectorize
        self.hvp_method = hvp
        self._graph: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dtype: torch.dtype = next(iter(dtypes))
        self.device: torch.device = next(iter(devices))
        self.batches = [(self._cast(x), self._cast(y)) for x, y in _batches(data)]
        self.sizes = [_size(x) for x, _ in self.batches]
        self.n = sum(self.sizes)

    def _cast(self, x: Any) -> Any:
        if isinstance(x, (tuple, list)):
            return tuple(self._cast(t) for t in x)
        dtype = self.dtype if x.is_floating_point() else None
        return x.to(device=self.device, dtype=dtype)

    @property
    def dim(self) -> int:
        """$D$, the number of trainable parameters."""
        return sum(self.numels)

    @property
    def numpy_dtype(self) -> np.dtype:
        return torch.empty((), dtype=self.dtype).numpy().dtype

    def flat(self) -> torch.Tensor:
        """The module's current trainable parameters as a flat vector (a copy)."""
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector as ``{name: tensor}`` (views of ``w``)."""
        chunks = torch.split(w, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    @contextlib.contextmanager
    def _mode(self) -> Iterator[dict[str, torch.Tensor]]:
        was = self.module.training
        self.module.train(self.train)
        buffers = dict(self.module.named_buffers())
        if self.train:
            buffers = {k: b.clone() for k, b in buffers.items()}
        try:
            yield buffers
        finally:
            self.module.train(was)

    def _batch_loss(self, buffers: dict, x: Any, y: Any) -> Callable[[torch.Tensor], Any]:
        args = x if isinstance(x, tuple) else (x,)

        def loss(w: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.module, (self.unflatten(w), buffers), args)
            return self.loss_fn(out, y)

        return loss

    def _w(self, w: Any) -> torch.Tensor:
        return to_torch(w, self.device, self.dtype)

    def value_and_grad(self, w: Any) -> tuple[torch.Tensor, torch.Tensor]:
        r"""$(L(w), \nabla L(w))$."""
        w = self._w(w)
        value = torch.zeros((), dtype=self.dtype, device=self.device)
        g = torch.zeros_like(w)
        with self._mode() as buffers:
            for (x, y), nb in zip(self.batches, self.sizes, strict=True):
                gb, vb = grad_and_value(self._batch_loss(buffers, x, y))(w)
                value = value + (nb / self.n) * vb.detach()
                g = g + (nb / self.n) * gb.detach()
        return value, g

    def _gradient_graph(self, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The leaf at ``w`` and each batch's weighted gradient with its graph (one per point)."""
        if self._graph is not None and torch.equal(self._graph[0], w):
            return self._graph[1], self._graph[2]
        self._graph = None
        leaf = w.detach().clone().requires_grad_(True)
        grads = []
        with torch.enable_grad(), self._mode() as buffers:
            for (x, y), nb in zip(self.batches, self.sizes, strict=True):
                loss = self._batch_loss(buffers, x, y)(leaf)
                (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
                grads.append((nb / self.n) * g)
        self._graph = (w.detach().clone(), leaf, grads)
        return leaf, grads

    def hvp(self, w: Any, V: Any) -> torch.Tensor:
        r"""$\nabla^2 L(w)\,V$ for a block $V$ of shape ``(D, k)`` (``jvp`` of ``grad``, or a
        backward pass through the cached gradient graph with ``hvp="double_backward"``)."""
        w = self._w(w)
        V = self._w(V)
        if self.hvp_method == "double_backward":
            leaf, grads = self._gradient_graph(w)
            cols = []
            for i in range(V.shape[1]):
                hv = torch.autograd.grad(
                    grads, leaf, grad_outputs=[V[:, i]] * len(grads), retain_graph=True
                )[0]
                cols.append(hv.detach())
            return torch.stack(cols, dim=1)
        out = torch.zeros_like(V)
        with self._mode() as buffers:
            for (x, y), nb in zip(self.batches, self.sizes, strict=True):
                g = grad(self._batch_loss(buffers, x, y))

                def one(v: torch.Tensor, g=g) -> torch.Tensor:
                    return jvp(g, (w,), (v,))[1]

                if self.vectorize and V.shape[1] > 1:
                    hv = vmap(one, in_dims=1, out_dims=1)(V)
                else:
                    hv = torch.stack([one(V[:, i]) for i in range(V.shape[1])], dim=1)
                out = out + (nb / self.n) * hv.detach()
        return out

    def grad_quadratic_form(self, w: Any, u: Any) -> tuple[torch.Tensor, torch.Tensor]:
        r"""$(u^\top\nabla^2L(w)\,u,\ \nabla_w\,u^\top\nabla^2L(w)\,u)$ with $u$ fixed."""
        w, u = self._w(w), self._w(u)
        value = torch.zeros((), dtype=self.dtype, device=self.device)
        g = torch.zeros_like(w)
        with self._mode() as buffers:
            for (x, y), nb in zip(self.batches, self.sizes, strict=True):
                gl = grad(self._batch_loss(buffers, x, y))

                def rayleigh(p: torch.Tensor, gl=gl) -> torch.Tensor:
                    return torch.dot(u, jvp(gl, (p,), (u,))[1])

                gb, vb = grad_and_value(rayleigh)(w)
                value = value + (nb / self.n) * vb.detach()
                g = g + (nb / self.n) * gb.detach()
        return value, g

    def hessian(self, w: Any) -> torch.Tensor:
        """The dense $D\\times D$ Hessian, $\\nabla^2L(w)\\,I$ in blocks of 256 columns (small
        models and tests). (``torch.func.hessian``, ``jacfwd`` of ``jacrev``, returned a wrong,
        non-symmetric Hessian for a LayerNorm net in torch 2.13; ``jvp`` of ``grad`` is right.)"""
        w = self._w(w)
        eye = torch.eye(w.shape[0], dtype=self.dtype, device=self.device)
        return torch.cat([self.hvp(w, eye[:, i : i + 256]) for i in range(0, w.shape[0], 256)], 1)
