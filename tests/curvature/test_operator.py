"""HessianOperator / PreconditionedOperator against dense Hessians and finite differences; a new
operator defined in this file only; tags that the solvers read."""

import functools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective
from eoslab.curvature import (
    LOBPCG,
    AbstractOperator,
    EigenTracker,
    HessianOperator,
    Lanczos,
    PreconditionedOperator,
    as_operator,
    bottom_eigenpairs,
    grad_top_eigenvalue,
    hutchinson_trace,
    krylov_top,
    spectral_density,
    top_eigenpairs,
)
from helpers import quadratic_with_spectrum, small_mlp_loss


@functools.cache
def problem():
    """An MLP loss, a point, a positive diagonal P and the dense Hessian (compiled once)."""
    f, w = small_mlp_loss("gelu", "ce", n=12, hidden=4)
    p = jnp.asarray(np.random.default_rng(0).uniform(0.2, 5.0, size=w.size))
    return f, w, p, jax.jit(jax.hessian(f))


@eqx.filter_jit
def products(op, V):
    # every product of the operator in one compiled call (the tests stay fast)
    return op.mv(V[:, 0]), op.mm(V), op.as_matrix(), op.quadratic_form(V[:, 2]), op.step_direction()


def check_products(op, M, V):
    mv, mm, dense, quad, _ = products(op, jnp.asarray(V))
    np.testing.assert_allclose(mv, M @ V[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mm, M @ V, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense, M, rtol=1e-10, atol=1e-12)
    assert float(quad) == pytest.approx(V[:, 2] @ M @ V[:, 2], rel=1e-10)


@pytest.mark.usefixtures("x64")
def test_hessian_operator_products_match_dense():
    f, w, _, hessian = problem()
    H = np.asarray(hessian(w))
    op = as_operator(f, w)
    V = np.random.default_rng(1).normal(size=(w.size, 3))
    check_products(op, H, V)
    value, g, Hv = eqx.filter_jit(lambda o, X: (lambda v, g, mm: (v, g, mm(X)))(*o.linearize()))(
        op, jnp.asarray(V[:, 1:])
    )
    assert float(value) == pytest.approx(float(f(w)), rel=1e-13)
    np.testing.assert_allclose(g, jax.jit(jax.grad(f))(w), rtol=1e-12)
    np.testing.assert_allclose(Hv, H @ V[:, 1:], rtol=1e-10, atol=1e-12)
    w2 = w + 0.1
    check_products(op.at(w2), np.asarray(hessian(w2)), V)


@pytest.mark.usefixtures("x64")
def test_preconditioned_operator_matches_dense():
    f, w, p, hessian = problem()
    H = np.asarray(hessian(w))
    s = 1 / np.sqrt(np.asarray(p))
    op = PreconditionedOperator(as_operator(f, w), p)
    V = np.random.default_rng(2).normal(size=(w.size, 3))
    check_products(op, s[:, None] * H * s[None, :], V)
    step = products(op, jnp.asarray(V))[4]
    np.testing.assert_allclose(step, jax.jit(jax.grad(f))(w) / p, rtol=1e-12)
    # a scalar preconditioner broadcasts (H / c) and is traced, not baked in
    check_products(PreconditionedOperator(as_operator(f, w), 4.0), H / 4.0, V)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("preconditioned", [False, True])
def test_grad_quadratic_form_matches_finite_differences(preconditioned):
    f, w, p, hessian = problem()
    rng = np.random.default_rng(3)
    u = rng.normal(size=w.size)
    scale = 1 / np.sqrt(np.asarray(p)) if preconditioned else np.ones(w.size)
    op = as_operator(f, w)
    op = PreconditionedOperator(op, p) if preconditioned else op

    def rayleigh(x):  # u^T S H(x) S u from the dense Hessian
        return (scale * u) @ np.asarray(hessian(x)) @ (scale * u)

    val, g = op.grad_quadratic_form(jnp.asarray(u))
    assert float(val) == pytest.approx(rayleigh(w), rel=1e-10)
    eps = 1e-5
    for _ in range(3):
        e = rng.normal(size=w.size)
        e /= np.linalg.norm(e)
        fd = (rayleigh(w + eps * e) - rayleigh(w - eps * e)) / (2 * eps)
        assert float(jnp.dot(g, e)) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.usefixtures("x64")
def test_krylov_top_matches_dense_and_the_m_dim_krylov_space():
    spectrum = np.concatenate([[6.0, 4.0, 3.5], np.linspace(-1.0, 2.0, 27)])
    f, A = quadratic_with_spectrum(spectrum, seed=5)
    A = np.asarray(A)
    op = as_operator(f, jnp.zeros(30))
    v0 = jnp.asarray(np.random.default_rng(0).normal(size=30))
    key = jax.random.PRNGKey(0)
    # m = D: the Krylov space is everything, so the Ritz pairs are the eigenpairs
    vals, V, res = krylov_top(op, v0, 30, 3, key)
    np.testing.assert_allclose(vals, [6.0, 4.0, 3.5], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-12)
    true_res = np.linalg.norm(A @ V - np.asarray(V) * np.asarray(vals), axis=0)
    np.testing.assert_allclose(res, true_res, atol=1e-9)
    # m < D: the Ritz values of span{v0, A v0, ..., A^{m-1} v0} (at most m products), inside scan
    m = 6
    K = np.stack([np.linalg.matrix_power(A, i) @ np.asarray(v0) for i in range(m)], axis=1)
    Q, _ = np.linalg.qr(K)
    ritz = np.sort(np.linalg.eigvalsh(Q.T @ A @ Q))[::-1][:2]

    @jax.jit
    def scaled(cs):
        def body(carry, c):
            return carry, krylov_top(lambda x: c * (jnp.asarray(A) @ x), v0, m, 2, key)

        return jax.lax.scan(body, 0.0, cs)[1]

    vals, V, res = scaled(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(vals, [ritz, 2 * ritz], rtol=1e-8)
    true_res = np.linalg.norm(A @ V[0] - np.asarray(V[0]) * np.asarray(vals[0]), axis=0)
    np.testing.assert_allclose(res[0], true_res, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(res[1], 2 * true_res, rtol=1e-6, atol=1e-10)


def test_bad_operators_and_arguments_raise_clear_errors():
    f, w, p, _ = problem()
    op = as_operator(f, w)
    with pytest.raises(ConfigError) as info:
        as_operator(op, w)
    assert info.value.field == "w"
    with pytest.raises(ConfigError, match="w="):
        as_operator(f)  # a plain callable has no w0
    with pytest.raises(ConfigError, match="finite"):
        as_operator(f, jnp.full(w.size, jnp.nan))
    with pytest.raises(ConfigError) as info:
        as_operator(PreconditionedOperator(op, -p))
    assert info.value.field == "p"
    with pytest.raises(ConfigError) as info:
        as_operator(PreconditionedOperator(op, p[:3]))
    assert info.value.field == "p.shape"
    with pytest.raises(ConfigError) as info:
        as_operator(HessianOperator(Objective.from_fn(f, np.asarray(w)), w[:-1]))
    assert info.value.field == "w.shape"
    for m, k, field in [(0, 1, "m"), (5, 6, "k"), (5, 0, "k")]:
        with pytest.raises(ConfigError) as info:
            krylov_top(op, w, m, k, jax.random.PRNGKey(0))
        assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        krylov_top(op, w[:-1], 5, 1, jax.random.PRNGKey(0))
    assert info.value.field == "v0.shape"


class ScaledHessian(AbstractOperator):
    """A new operator, defined here only: c * H (a diagonal-scaled Hessian with equal entries)."""

    objective: Objective
    w: jax.Array
    c: float = 3.0
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric"})

    def linearize(self):
        value, grad, hmm = HessianOperator(self.objective, self.w).linearize()
        return value, grad, lambda X: self.c * hmm(X)

    def as_matrix(self):
        return self.c * jax.hessian(self.objective)(self.w)

    def at(self, w):
        return ScaledHessian(self.objective, w, self.c)

    def grad_quadratic_form(self, u):
        val, g = HessianOperator(self.objective, self.w).grad_quadratic_form(u)
        return self.c * val, self.c * g

    def step_direction(self):
        return self.c * jax.grad(self.objective)(self.w)

    def check(self):
        HessianOperator(self.objective, self.w).check()


class Shear(AbstractOperator):
    """A non-symmetric operator (a fixed matrix), to see the eigensolvers refuse it."""

    A: jax.Array
    w: jax.Array
    tags: ClassVar[frozenset[str]] = frozenset()

    def linearize(self):
        zero = jnp.zeros((), self.w.dtype)
        return zero, jnp.zeros_like(self.w), lambda X: self.A @ X

    def as_matrix(self):
        return self.A

    def at(self, w):
        return Shear(self.A, w)

    def grad_quadratic_form(self, u):
        return u @ self.A @ u, jnp.zeros_like(self.w)

    def step_direction(self):
        return jnp.zeros_like(self.w)

    def check(self):
        pass


@pytest.mark.usefixtures("x64")
def test_a_new_operator_is_one_subclass_and_every_solver_takes_it():
    f, w, _, hessian = problem()
    obj = Objective.from_fn(f, np.asarray(w))
    op = ScaledHessian(obj, w)
    M = 3.0 * np.asarray(hessian(w))
    V = np.random.default_rng(4).normal(size=(w.size, 3))
    check_products(op, M, V)
    dense = np.sort(np.linalg.eigvalsh(M))[::-1]
    for solver in (Lanczos(), LOBPCG()):
        res = top_eigenpairs(op, k=2, tol=1e-9, solver=solver)
        np.testing.assert_allclose(res.values, dense[:2], rtol=1e-8)
    bottom = bottom_eigenpairs(op, k=1, tol=1e-9)
    np.testing.assert_allclose(bottom.values, dense[-1:], rtol=1e-8, atol=1e-10)
    tracked = EigenTracker(op, k=1, tol=1e-9).update(w + 0.1)  # at() moves it
    top_there = np.linalg.eigvalsh(3.0 * np.asarray(hessian(w + 0.1)))[-1]
    assert float(tracked.values[0]) == pytest.approx(top_there, rel=1e-8)
    key = jax.random.PRNGKey(0)
    Z = np.asarray(jax.random.rademacher(key, (w.size, 6), jnp.float64))
    est = hutchinson_trace(op, n_probes=6, key=key)
    assert float(est.value) == pytest.approx(np.mean(np.sum(Z * (M @ Z), 0)), rel=1e-10)


@pytest.mark.usefixtures("x64")
def test_tags_are_read_eigensolvers_refuse_a_non_symmetric_operator():
    A = jnp.asarray(np.triu(np.random.default_rng(5).normal(size=(12, 12))))
    op = Shear(A, jnp.zeros(12))
    for call in (
        lambda: top_eigenpairs(op, k=1),
        lambda: bottom_eigenpairs(op, k=1),
        lambda: EigenTracker(op).update(jnp.zeros(12)),
        lambda: krylov_top(op, jnp.ones(12), 5, 1, jax.random.PRNGKey(0)),
        lambda: spectral_density(op),
        lambda: grad_top_eigenvalue(op, jnp.ones(12)),
    ):
        with pytest.raises(ConfigError, match="symmetric") as info:
            call()
        assert info.value.field == "operator"
    # the trace needs no symmetry: E z^T A z = tr A
    key = jax.random.PRNGKey(1)
    Z = np.asarray(jax.random.rademacher(key, (12, 8), jnp.float64))
    est = hutchinson_trace(op, n_probes=8, key=key)
    assert float(est.value) == pytest.approx(np.mean(np.sum(Z * (np.asarray(A) @ Z), 0)))

    class Odd(Shear):
        tags: ClassVar[frozenset[str]] = frozenset({"symetric"})

    with pytest.raises(ConfigError) as info:
        as_operator(Odd(A, jnp.zeros(12)))
    assert info.value.field == "Odd.tags"


@pytest.mark.usefixtures("x64")
def test_mm_in_chunks_is_the_dense_product_and_holds_fewer_tangents():
    """``mm(V, chunk=c)`` = dense H V for every chunk size (one linearization, columns c at a
    time); compiled, one column at a time needs fewer temporaries than the vmapped block."""
    from eoslab.parallel.memory import compiled_memory

    f, w, _, dense = problem()
    op = as_operator(f, w)
    V = jax.random.normal(jax.random.key(3), (w.size, 5), jnp.float64)
    want = dense(w) @ V
    for chunk in (None, 1, 2, 3, 5, 8):
        np.testing.assert_allclose(op.mm(V, chunk=chunk), want, rtol=1e-10, atol=1e-12)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="chunk"):
            op.mm(V, chunk=bad)

    def loss(u, x):
        h = jnp.tanh(x @ u.reshape(40, 50))
        return jnp.mean(jnp.sin(h) ** 2)

    x = jax.ShapeDtypeStruct((2000, 40), jnp.float32)
    u = jax.ShapeDtypeStruct((2000,), jnp.float32)
    B = jax.ShapeDtypeStruct((2000, 8), jnp.float32)

    def block(u, x, V, chunk):
        return as_operator(lambda v: loss(v, x), u).mm(V, chunk=chunk)

    vmapped = compiled_memory(lambda u, x, V: block(u, x, V, None), u, x, B).temp
    one = compiled_memory(lambda u, x, V: block(u, x, V, 1), u, x, B).temp
    tangent = 2000 * 50 * 4  # one column's tangent of the hidden activations, float32 bytes
    assert vmapped - one >= 0.9 * 7 * tangent  # 8 held at once against 1
