"""`Objective`: a loss on a flat parameter vector plus the data it closes over.

Every other part of eoslab works on a flat vector ``w`` (1-D, float32 by default) and a scalar loss
``L(w)``. An `Objective` is an equinox Module (a pytree): its data are array leaves, so jitted
functions take it as an argument instead of baking the data into the compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from .errors import ConfigError
from .losses import get as get_loss
from .losses import safe_sqrt
from .precision import MixedPrecision, check_matmul_dtype

__all__ = ["ModelLoss", "Objective", "as_objective", "safe_sqrt"]


@dataclasses.dataclass(frozen=True)
class _IgnoreData:
    """Adapts ``f(w)`` to the ``fn(w, data)`` form; equal when the wrapped callables are equal."""

    f: Callable[[Array], Array]

    def __call__(self, w: Array, data: Any) -> Array:
        del data
        return self.f(w)


@dataclasses.dataclass(frozen=True)
class _Sqrt:
    """``sqrt(fn(w, data) - loss_min)``; hashable so jit caches stay warm."""

    fn: Callable[[Array, Any], Array]
    loss_min: float

    def __call__(self, w: Array, data: Any) -> Array:
        return safe_sqrt(self.fn(w, data) - self.loss_min)


_DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def _resolve_dtype(dtype: Any, w0: Any) -> Any:
    if dtype is None:
        return jnp.float32
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ConfigError("dtype", dtype, "'float32' or 'float64'")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(
            "dtype",
            dtype,
            "'float32' (float64 needs 64-bit mode)",
            "Enable it first with jax.config.update('jax_enable_x64', True).",
        )
    return _DTYPES[name]


def _check_w0(w0: Any) -> np.ndarray:
    arr = np.asarray(w0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError("w0.dtype", str(arr.dtype), "a real floating dtype (float32 or float64)")
    if arr.ndim != 1:
        raise ConfigError("w0.shape", arr.shape, "a 1-D vector (use from_pytree for pytrees)")
    if arr.size == 0:
        raise ConfigError("w0.shape", arr.shape, "at least one parameter")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ConfigError("w0", f"<{bad} non-finite entries>", "finite values only")
    return arr


class Objective(eqx.Module):
    r"""A smooth loss $L(w)$ of a flat parameter vector $w \in \mathbb{R}^D$.

    Build one with `from_fn`, `from_pytree` or (for models and datasets) `from_model`.
    Call it as ``objective(w)``; ``objective.sqrt()`` is $\sqrt{L - L_{\min}}$.

    Attributes:
        fn: ``fn(w, data) -> scalar`` (static).
        data: pytree of arrays the loss closes over (traced under jit, not baked in).
        w0: the initial flat parameters, shape ``(D,)``.
        loss_min: $L_{\min}$, the value of $L$ on the manifold of minimizers (0 for
            interpolating models).
        unravel: maps a flat vector back to the model's pytree (identity for flat problems).
        transform: ``"none"`` or ``"sqrt"`` (this objective is $\sqrt{L_{base} - L_{\min}}$).
        base_fn: for ``transform="sqrt"``, the untransformed loss ``fn(w, data)``.
        matmul_dtype: the dtype the model's matrix products run in (None: the parameters';
            ``"bfloat16"``: mixed precision, see `with_matmul_dtype`).
    """

    fn: Callable[[Array, Any], Array] = eqx.field(static=True)
    data: Any
    w0: Float[Array, " d"]
    loss_min: float = eqx.field(static=True, default=0.0)
    unravel: Callable[[Array], Any] = eqx.field(static=True, default=None)
    transform: Literal["none", "sqrt"] = eqx.field(static=True, default="none")
    base_fn: Callable[[Array, Any], Array] | None = eqx.field(static=True, default=None)
    matmul_dtype: str | None = eqx.field(static=True, default=None)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_fn(
        cls,
        fn: Callable[[Array], Array],
        w0: Any,
        loss_min: float = 0.0,
        *,
        dtype: Any = None,
    ) -> Objective:
        r"""Objective of any smooth ``fn(w) -> scalar`` on a flat vector ``w0`` (shape ``(D,)``).

        >>> import jax.numpy as jnp
        >>> obj = Objective.from_fn(lambda w: 0.5 * jnp.sum(w**2), jnp.ones(3))
        >>> float(obj(obj.w0))
        1.5
        """
        return cls._build(_IgnoreData(fn), None, w0, loss_min, dtype, None)

    @classmethod
    def from_data_fn(
        cls,
        fn: Callable[[Array, Any], Array],
        data: Any,
        w0: Any,
        loss_min: float = 0.0,
        *,
        dtype: Any = None,
        unravel: Callable[[Array], Any] | None = None,
    ) -> Objective:
        """Objective of ``fn(w, data)``: the data stay a traced argument under jit.

        ``fn`` must be hashable and stable (a module-level function or a frozen dataclass), so that
        compiled code is reused between calls.
        """
        return cls._build(fn, data, w0, loss_min, dtype, unravel)

    @classmethod
    def from_pytree(
        cls,
        fn: Callable[[Any], Array],
        params: Any,
        loss_min: float = 0.0,
        *,
        dtype: Any = None,
    ) -> Objective:
        """Objective of ``fn(params)`` for pytree parameters, flattened once with ``ravel_pytree``.

        ``params`` may be any pytree, an equinox Module included: its floating-point arrays are
        the parameters, everything else (activations, integer buffers, ...) is kept as it is.
        ``objective.unravel(w)`` gives the pytree back.
        """
        arrays, static = eqx.partition(params, eqx.is_inexact_array_like)
        leaves = jax.tree_util.tree_leaves(arrays)
        if not leaves:
            raise ConfigError(
                "params", type(params).__name__, "a pytree with a floating array leaf"
            )
        target = _resolve_dtype(dtype, None)
        arrays = jax.tree_util.tree_map(lambda x: jnp.asarray(x, target), arrays)
        flat, unravel_arrays = ravel_pytree(arrays)
        unravel = _Combine(unravel_arrays, static)
        return cls._build(_Unravelled(fn, unravel), None, flat, loss_min, dtype, unravel)

    @classmethod
    def from_model(
        cls,
        apply: Callable[[Any, Array], Array],
        params: Any,
        dataset: Any,
        loss: Callable[[Array, Array], Array] | str,
        frozen: tuple[str, ...] | str = (),
        loss_min: float = 0.0,
        dtype: Any = None,
    ) -> Objective:
        r"""$L(w) = \ell\big(f(\theta(w), X), Y\big)$: a model's loss on a dataset's training split.

        $\theta(w)$ puts the flat trainable parameters $w$ back into the ``params`` pytree and
        adds the frozen groups, which stay fixed and are not part of $w$.

        Args:
            apply: pure ``apply(params, x) -> outputs (N, k)``; hashable (``eoslab.models``'
                applies are frozen dataclasses) so compiled code is reused.
            params: the initial parameter pytree (e.g. from `eoslab.models.create`).
            dataset: an `eoslab.data.Dataset` (its ``x_train``, ``y_train``) or a pair ``(x, y)``.
                The arrays are traced data of the objective, not constants of compiled code.
            loss: ``loss(outputs, labels) -> scalar`` (see `eoslab.losses`) or its name there.
            frozen: parameter groups to keep fixed, named by top-level key (``"head"``) or by
                path (``"head/w"``, ``"stage1/block0"``).
            loss_min: $L_{\min}$.
            dtype: ``"float32"`` (default) or ``"float64"`` for $w$ and the inputs.

        ``objective.unravel(w)`` returns the full parameter pytree (frozen groups included);
        ``objective.data`` is ``{"x": (N, ...), "y": (N,) or (N, k), "frozen": pytree}``, the
        examples along axis 0 of ``x`` and ``y``.
        """
        if isinstance(loss, str):
            loss = get_loss(loss)
        if not callable(apply):
            raise ConfigError("apply", apply, "a pure function apply(params, x)")
        if hasattr(dataset, "x_train") and hasattr(dataset, "y_train"):
            x, y = dataset.x_train, dataset.y_train
        elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
            x, y = dataset
        else:
            raise ConfigError(
                "dataset", type(dataset).__name__, "an eoslab.data.Dataset or a pair (x, y)"
            )
        target = _resolve_dtype(dtype, None)
        frozen = (frozen,) if isinstance(frozen, str) else tuple(frozen)
        with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
        if not with_path:
            raise ConfigError("params", params, "a pytree with at least one array leaf")
        names = ["/".join(_path_name(k) for k in path) for path, _ in with_path]
        tops = sorted({n.split("/")[0] for n in names})
        is_frozen = [False] * len(names)
        for group in frozen:
            hits = [i for i, n in enumerate(names) if n == group or n.startswith(group + "/")]
            if not hits:
                raise ConfigError(
                    "frozen",
                    group,
                    "parameter groups of this model: "
                    + ", ".join(map(repr, tops))
                    + " (or paths like 'head/w')",
                )
            for i in hits:
                is_frozen[i] = True
        if all(is_frozen):
            raise ConfigError("frozen", frozen, "groups that leave some parameters trainable")
        leaves = []
        for name, (_, leaf) in zip(names, with_path, strict=True):
            arr = jnp.asarray(leaf)
            if not jnp.issubdtype(arr.dtype, jnp.floating):
                raise ConfigError(f"params[{name!r}].dtype", str(arr.dtype), "a floating dtype")
            leaves.append(arr.astype(target))
        pairs = list(zip(is_frozen, leaves, strict=True))
        trainable = treedef.unflatten([None if f else a for f, a in pairs])
        fixed = treedef.unflatten([a if f else None for f, a in pairs])
        flat, unravel = ravel_pytree(trainable)
        y = jnp.asarray(y)
        data = {
            "x": jnp.asarray(x, target),
            "y": y if jnp.issubdtype(y.dtype, jnp.integer) else y.astype(target),
            "frozen": fixed,
        }
        fn = ModelLoss(apply, loss, unravel)
        return cls._build(fn, data, flat, loss_min, dtype, _FullUnravel(unravel, fixed))

    @classmethod
    def _build(cls, fn, data, w0, loss_min, dtype, unravel) -> Objective:
        arr = _check_w0(w0)
        target = _resolve_dtype(dtype, arr)
        if not np.isfinite(loss_min):
            raise ConfigError("loss_min", loss_min, "a finite number")
        w = jnp.asarray(arr, dtype=target)
        try:
            out = jax.eval_shape(fn, w, data)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ConfigError(
                "fn", fn, "a function of w returning a scalar", f"Calling it failed: {exc}"
            ) from exc
        if getattr(out, "shape", None) != ():
            raise ConfigError(
                "fn",
                f"<returns shape {getattr(out, 'shape', type(out))}>",
                "a scalar loss (shape ())",
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ConfigError("fn", f"<returns dtype {out.dtype}>", "a floating-point scalar")
        return cls(
            fn=fn,
            data=data,
            w0=w,
            loss_min=float(loss_min),
            unravel=unravel if unravel is not None else _identity,
        )

    # ------------------------------------------------------------------ use
    def __call__(self, w: Float[Array, " d"]) -> Float[Array, ""]:
        """$L(w)$."""
        return self.fn(w, self.data)

    @property
    def dim(self) -> int:
        """$D$, the number of parameters."""
        return int(self.w0.shape[0])

    @property
    def dtype(self) -> Any:
        return self.w0.dtype

    def base(self) -> Objective:
        """The untransformed loss $L$ (itself unless this is a `sqrt` objective)."""
        if self.transform == "sqrt":
            return dataclasses.replace(
                self, fn=self.base_fn, transform="none", base_fn=None, loss_min=self.fn.loss_min
            )
        return self

    def sqrt(self) -> Objective:
        r"""The objective $\sqrt{L(w) - L_{\min}}$ (its gradient at the minimum is 0, never NaN).

        Its own ``loss_min`` is 0; ``base()`` returns $L$.
        """
        if self.transform == "sqrt":
            raise ConfigError(
                "transform", "sqrt", "an objective that is not already sqrt-transformed"
            )
        return dataclasses.replace(
            self,
            fn=_Sqrt(self.fn, self.loss_min),
            transform="sqrt",
            base_fn=self.fn,
            loss_min=0.0,
        )

    def with_matmul_dtype(self, dtype: str | None) -> Objective:
        r"""The same loss with the model's matrix products (dense layers, convolutions,
        attention) run on ``dtype`` operands with sums in the parameters' dtype: ``"bfloat16"``
        is GPU mixed precision (float32 parameters and accumulation), None the plain products.

        The value and every derivative are then those of the rounded computation: a
        Hessian-vector product carries bfloat16's rounding, and the certified bounds of
        `eoslab.curvature` use it (`eoslab.precision.rounding_dtype`). Only layers that route
        their products through `eoslab.precision` (every eoslab model) are affected; for a
        plain ``fn(w, data)`` the whole call runs inside `eoslab.precision.computing_in`.
        """
        dtype = check_matmul_dtype(dtype)
        if self.transform == "sqrt":
            return self.base().with_matmul_dtype(dtype).sqrt()
        fn = self.fn
        if dataclasses.is_dataclass(fn) and hasattr(fn, "apply"):  # a model's loss: wrap apply
            inner = fn.apply.fn if isinstance(fn.apply, MixedPrecision) else fn.apply
            new_fn = dataclasses.replace(
                fn, apply=inner if dtype is None else MixedPrecision(inner, dtype)
            )
        else:
            inner = fn.fn if isinstance(fn, MixedPrecision) else fn
            new_fn = inner if dtype is None else MixedPrecision(inner, dtype)
        return dataclasses.replace(self, fn=new_fn, matmul_dtype=dtype)

    def with_w0(self, w0: Any) -> Objective:
        """The same objective started from another flat vector."""
        arr = _check_w0(w0)
        if arr.shape != self.w0.shape:
            raise ConfigError("w0.shape", arr.shape, f"{self.w0.shape} (this objective's D)")
        return dataclasses.replace(self, w0=jnp.asarray(arr, self.w0.dtype))


def _identity(w: Array) -> Array:
    return w


@dataclasses.dataclass(frozen=True, eq=False)
class _Combine:
    """``w -> eqx.combine(unravel(w), static)``: the pytree back from the flat vector."""

    unravel: Callable[[Array], Any]
    static: Any

    def __call__(self, w: Array) -> Any:
        return eqx.combine(self.unravel(w), self.static)


@dataclasses.dataclass(frozen=True)
class _Unravelled:
    f: Callable[[Any], Array]
    unravel: Callable[[Array], Any]

    def __call__(self, w: Array, data: Any) -> Array:
        del data
        return self.f(self.unravel(w))

    def __hash__(self) -> int:
        return hash(self.f)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Unravelled) and other.f is self.f and other.unravel is self.unravel
        )


def _path_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


@dataclasses.dataclass(frozen=True)
class ModelLoss:
    """``loss(apply(theta(w), x), y)`` with the frozen groups taken from ``data["frozen"]``: the
    ``fn`` of an objective built by `Objective.from_model` (its ``apply``, ``loss`` and
    ``unravel`` of the trainable parameters are public, e.g. for `eoslab.parallel`).

    Equal for equal (apply, loss, parameter layout): objectives of the same model on other data
    or other initial values share compiled code (``ravel_pytree``'s unravel compares by value)."""

    apply: Callable[[Any, Array], Array]
    loss: Callable[[Array, Array], Array]
    unravel: Callable[[Array], Any]

    def __call__(self, w: Array, data: Any) -> Array:
        params = eqx.combine(self.unravel(w), data["frozen"])
        return self.loss(self.apply(params, data["x"]), data["y"])


@dataclasses.dataclass(frozen=True, eq=False)
class _FullUnravel:
    """Flat trainable vector -> full parameter pytree (frozen groups filled in)."""

    unravel: Callable[[Array], Any]
    frozen: Any

    def __call__(self, w: Array) -> Any:
        return eqx.combine(self.unravel(w), self.frozen)

    def __hash__(self) -> int:
        return hash(self.unravel)

    def __eq__(self, other: object) -> bool:
        # equal layouts with the very same frozen arrays (or none): compiled code can be shared
        if not isinstance(other, _FullUnravel) or other.unravel != self.unravel:
            return False
        mine, theirs = (
            jax.tree_util.tree_leaves(self.frozen),
            jax.tree_util.tree_leaves(other.frozen),
        )
        return len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs, strict=True))


LossLike = Objective | Callable[[Array], Array]


def as_objective(loss: LossLike, w: Array | None = None) -> Objective:
    """Wrap a plain callable ``loss(w)`` as an `Objective` (no copy for an `Objective`)."""
    if isinstance(loss, Objective):
        return loss
    if not callable(loss):
        raise ConfigError("loss", loss, "a callable loss(w) -> scalar or an eoslab.Objective")
    if w is None:
        raise ConfigError("w", None, "a flat parameter vector when loss is a plain callable")
    return Objective(fn=_IgnoreData(loss), data=None, w0=jnp.asarray(w), unravel=_identity)
