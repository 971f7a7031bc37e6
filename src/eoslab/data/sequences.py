r"""Offline synthetic sequence tasks for causal decoders: sort, copy and reverse short sequences.

A task maps a source sequence $a = (a_0, \ldots, a_{L-1})$ of tokens drawn uniformly from
$\{0, \ldots, V-1\}$ to a target $b = g(a)$ (``"sort"``: $a$ sorted ascending; ``"copy"``: $a$;
``"reverse"``: $a$ reversed). The model reads, teacher-forced, the $T = 2L - 1$ tokens

$$x = (a_0, \ldots, a_{L-1},\ b_0, \ldots, b_{L-2})$$

and is trained to output at every position $t$ the label

$$y_t = a_t \ (t < L - 1), \qquad y_{L-1+k} = b_k \ (0 \le k < L),$$

i.e. it echoes the source while reading it and then emits the target one token ahead. Every
label is a function of $x_{\le t}$, so a causal model can fit all of them: the loss has infimum 0
(cross-entropy) and minimum 0 (MSE on one-hot targets), as the theories' $L_{\min} = 0$ assumes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError
from .specs import Dataset

__all__ = ["TASKS", "sequence_arrays", "sequence_task"]

TASKS = ("sort", "copy", "reverse")


def _target(task: str, a: np.ndarray) -> np.ndarray:
    if task == "sort":
        return np.sort(a, axis=1)
    if task == "copy":
        return a.copy()
    return a[:, ::-1].copy()


def sequence_arrays(
    task: str, n: int, length: int, vocab: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""``n`` examples of ``task``: inputs ``(n, 2L-1)`` and labels ``(n, 2L-1)``, int64.

    Sources are drawn with ``numpy.random.default_rng(seed)``, uniformly from $V^L$ (with
    replacement). See the module docstring for the layout.

    Raises:
        ConfigError: unknown task, ``length < 2``, ``vocab < 2``, ``n < 1``.
    """
    if task not in TASKS:
        raise ConfigError("task", task, "one of " + ", ".join(map(repr, TASKS)))
    for field, value, low in (("n", n, 1), ("length", length, 2), ("vocab", vocab, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(field, value, f"an int >= {low}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError("seed", seed, "an int")
    rng = np.random.default_rng(int(seed))
    a = rng.integers(0, vocab, size=(int(n), int(length)))
    b = _target(task, a)
    x = np.concatenate([a, b[:, :-1]], axis=1)
    y = np.concatenate([a[:, :-1], b], axis=1)
    return x, y


def sequence_task(
    task: str = "sort",
    n_train: int = 256,
    n_test: int = 256,
    length: int = 4,
    vocab: int = 10,
    seed: int = 0,
) -> Dataset:
    r"""The sequence ``task`` as a `Dataset` (``task="sequence"``): ``x`` token ids ``(N, 2L-1)``
    (float32, exact integers), ``y`` int32 labels ``(N, 2L-1)``, ``num_classes = vocab``,
    ``input_shape = (2L-1,)``. Training and test examples are one draw of ``n_train + n_test``
    sources with ``seed``, split in order.

    Use it with ``eoslab.models.create("transformer", key, ds.input_shape, ds.num_classes)``
    and any loss of `eoslab.losses` (integer labels per position; outputs ``(N, T, V)``).
    """
    for field, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(field, value, "an int >= 1")
    x, y = sequence_arrays(task, int(n_train) + int(n_test), length, vocab, seed)
    return Dataset(
        name=f"{task}-L{length}-V{vocab}",
        x_train=jnp.asarray(x[:n_train], jnp.float32),
        y_train=jnp.asarray(y[:n_train], jnp.int32),
        x_test=jnp.asarray(x[n_train:], jnp.float32),
        y_test=jnp.asarray(y[n_train:], jnp.int32),
        num_classes=int(vocab),
        input_shape=(int(x.shape[1]),),
        task="sequence",
    )
