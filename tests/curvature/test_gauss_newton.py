"""GaussNewtonOperator against a dense J^T H_l J built here by hand (Jacobian of the model's
outputs, the loss's output Hessian in closed form), and against the Hessian where theory says
they agree (MSE at a global minimum, a linear model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective, models
from eoslab.curvature import EigenTracker, GaussNewtonOperator, top_eigenpairs

pytestmark = pytest.mark.usefixtures("x64")


def tiny_net(loss: str, n: int = 10, labels=None, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    apply, params = models.create(
        "mlp", jax.random.key(seed), (3,), 2, widths=(4,), activation="tanh"
    )
    y = rng.integers(0, 2, size=n) if labels is None else labels
    return apply, Objective.from_model(apply, params, (x, y), loss, dtype="float64"), x


def dense_gn(apply, obj, x, w, loss):
    """J^T H_l J with J = d(outputs)/dw by jacrev and H_l in closed form."""
    z = apply(obj.unravel(w), jnp.asarray(x))
    n, k = z.shape
    J = np.asarray(jax.jacrev(lambda v: apply(obj.unravel(v), jnp.asarray(x)))(w))
    J = J.reshape(n * k, -1)
    if loss == "mse_half":
        Hl = np.eye(n * k) / n
    else:  # cross-entropy: (diag p - p p^T) / n per example
        p = np.asarray(jax.nn.softmax(z, axis=-1))
        Hl = np.zeros((n * k, n * k))
        for i in range(n):
            block = slice(i * k, (i + 1) * k)
            Hl[block, block] = (np.diag(p[i]) - np.outer(p[i], p[i])) / n
    return J.T @ Hl @ J


@pytest.mark.parametrize("loss", ["mse_half", "cross_entropy"])
def test_top_eigenpairs_match_a_dense_gauss_newton_with_bounds_that_hold(loss):
    apply, obj, x = tiny_net(loss)
    w = obj.w0 + 0.3 * jnp.asarray(np.random.default_rng(1).normal(size=obj.dim))
    G = dense_gn(apply, obj, x, w, loss)
    op = GaussNewtonOperator(obj, w)
    np.testing.assert_allclose(op.as_matrix(), G, atol=1e-12)
    V = np.random.default_rng(2).normal(size=(obj.dim, 3))
    np.testing.assert_allclose(op.mm(jnp.asarray(V)), G @ V, atol=1e-12)
    np.testing.assert_allclose(op.mv(jnp.asarray(V[:, 0])), G @ V[:, 0], atol=1e-12)
    value, grad, _ = op.linearize()
    np.testing.assert_allclose(value, obj(w), rtol=1e-14)
    np.testing.assert_allclose(grad, jax.grad(obj)(w), atol=1e-14)
    dense = np.sort(np.linalg.eigvalsh(G))[::-1]
    assert dense[-1] > -1e-12  # positive semidefinite
    res = top_eigenpairs(op, k=3, tol=1e-10)
    np.testing.assert_allclose(res.values, dense[:3], rtol=1e-8)
    assert np.all(np.abs(np.asarray(res.values) - dense[:3]) <= np.asarray(res.error_bound))
    if loss != "cross_entropy":
        return
    # the tracker certifies it too, and at() moves it
    tracker = EigenTracker(op, k=1, tol=1e-10)
    w2 = w + 0.01
    tracked = tracker.update(w2)
    want = np.linalg.eigvalsh(dense_gn(apply, obj, x, w2, loss))[-1]
    assert abs(float(tracked.values[0]) - want) <= float(tracked.error_bound[0]) + 1e-12
    np.testing.assert_allclose(tracked.values[0], want, rtol=1e-8)


def test_grad_quadratic_form_is_the_derivative_of_u_g_u():
    apply, obj, x = tiny_net("cross_entropy")
    w = obj.w0
    u = jnp.asarray(np.random.default_rng(3).normal(size=obj.dim))
    val, g = GaussNewtonOperator(obj, w).grad_quadratic_form(u)
    q = lambda v: u @ dense_gn(apply, obj, x, v, "cross_entropy") @ u  # noqa: E731
    np.testing.assert_allclose(val, q(w), rtol=1e-10)
    e = jnp.asarray(np.random.default_rng(4).normal(size=obj.dim))
    h = 1e-5
    fd = (q(w + h * e) - q(w - h * e)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, e), fd, rtol=1e-6)


def test_gauss_newton_is_the_hessian_for_mse_at_a_global_minimum():
    # labels from the net itself: w0 interpolates them (zero residual), so H = G there
    apply, obj0, x = tiny_net("mse_half")
    targets = np.asarray(apply(obj0.unravel(obj0.w0), jnp.asarray(x)))
    _, obj, _ = tiny_net("mse_half", labels=targets)
    w = obj.w0
    assert float(obj(w)) < 1e-28
    G = GaussNewtonOperator(obj, w).as_matrix()
    H = jax.hessian(obj)(w)
    np.testing.assert_allclose(G, H, atol=1e-12)
    # away from the minimum they differ (the residual term)
    w1 = w + 0.5
    G1 = GaussNewtonOperator(obj, w1).as_matrix()
    assert float(jnp.max(jnp.abs(G1 - jax.hessian(obj)(w1)))) > 1e-3


def test_linear_model_closed_form():
    # f = x W, mse_half: H = G = (X^T X / n) kron I_k at every point
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    apply = _Linear()
    obj = Objective.from_model(apply, {"w": jnp.zeros((3, 2))}, (x, y), "mse_half", dtype="float64")
    w = jnp.asarray(rng.normal(size=6))
    want = np.kron(x.T @ x / 8, np.eye(2))
    np.testing.assert_allclose(GaussNewtonOperator(obj, w).as_matrix(), want, atol=1e-13)
    res = top_eigenpairs(GaussNewtonOperator(obj, w), k=1, tol=1e-10)
    np.testing.assert_allclose(res.values[0], np.linalg.eigvalsh(x.T @ x / 8)[-1], rtol=1e-9)


class _Linear:
    def __call__(self, p, x):
        return x @ p["w"]

    def __hash__(self):
        return 1

    def __eq__(self, other):
        return isinstance(other, _Linear)


def test_refuses_an_objective_without_a_model():
    obj = Objective.from_fn(lambda w: jnp.sum(w**2), jnp.ones(3))
    with pytest.raises(ConfigError) as info:
        top_eigenpairs(GaussNewtonOperator(obj, obj.w0), k=1)
    assert info.value.field == "objective"
    _, mobj, _ = tiny_net("mse_half")
    with pytest.raises(ConfigError) as info:
        top_eigenpairs(GaussNewtonOperator(mobj.sqrt(), mobj.w0), k=1)
    assert info.value.field == "objective"
