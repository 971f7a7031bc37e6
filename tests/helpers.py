"""Problems with known answers for the curvature tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def quadratic_with_spectrum(eigs, seed=0):
    """L(w) = 1/2 w^T A w with A = Q diag(eigs) Q^T for a random orthogonal Q; returns (loss, A)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(eigs.size, eigs.size)))
    A = jnp.asarray(Q @ np.diag(eigs) @ Q.T)
    return (lambda w: 0.5 * w @ A @ w), A


ACTIVATIONS = {"tanh": jnp.tanh, "gelu": jax.nn.gelu, "relu": jax.nn.relu}


def small_mlp_loss(activation="tanh", loss="mse", n=30, din=4, hidden=6, dout=3, seed=0):
    """A random 1-hidden-layer MLP loss on random data; returns (loss_fn, w)."""
    act = ACTIVATIONS[activation]
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(n, din)))
    labels = rng.integers(0, dout, size=n)
    Y = jnp.asarray(np.eye(dout)[labels])
    shapes = [(din, hidden), (hidden,), (hidden, dout), (dout,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(w):
        out, i = [], 0
        for s, z in zip(shapes, sizes, strict=True):
            out.append(w[i : i + z].reshape(s))
            i += z
        return out

    def f(w):
        W1, b1, W2, b2 = unflat(w)
        logits = act(X @ W1 + b1) @ W2 + b2
        if loss == "mse":
            return 0.5 * jnp.mean(jnp.sum((logits - Y) ** 2, axis=1))
        return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1))

    w = jnp.asarray(rng.normal(size=sum(sizes)) * 0.7)
    return f, w


def dense_eigh(loss, w):
    """Eigenvalues (descending) and eigenvectors of the dense Hessian by numpy."""
    H = np.asarray(jax.hessian(loss)(w))
    vals, vecs = np.linalg.eigh(H)
    return vals[::-1], vecs[:, ::-1], H
