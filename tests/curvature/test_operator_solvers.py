"""Every curvature solver takes an operator: same answers as (loss, w), checked against dense."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective
from eoslab.curvature import (
    EigenTracker,
    HessianOperator,
    PreconditionedOperator,
    as_operator,
    bottom_eigenpairs,
    grad_top_eigenvalue,
    hutchinson_trace,
    spectral_density,
    stableness,
    top_eigenpairs,
)
from helpers import small_mlp_loss

# float64 objectives and float64 tolerances (certified to 1e-8 and below) throughout
pytestmark = pytest.mark.usefixtures("x64")


@functools.cache
def problem():
    """An MLP loss, its `Objective` (w0 = the point), the point, a positive diagonal P and H."""
    f, w = small_mlp_loss("tanh", "mse", n=10, hidden=4, seed=1)
    obj = Objective.from_fn(f, w, dtype="float64")
    p = jnp.asarray(np.random.default_rng(0).uniform(0.3, 3.0, size=w.size))
    return f, obj, w, p, np.asarray(jax.jit(jax.hessian(f))(w))


def same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-14)


def test_eigenpairs_of_an_operator_and_of_an_objective_alone():
    f, obj, w, _, H = problem()
    op = as_operator(obj)  # an Objective alone: at its w0
    dense = np.sort(np.linalg.eigvalsh(H))
    ref = top_eigenpairs(f, w, 2, tol=1e-10)  # the positional form still works
    np.testing.assert_allclose(ref.values, dense[::-1][:2], rtol=1e-9)
    same(top_eigenpairs(op, k=2, tol=1e-10), ref)
    same(top_eigenpairs(obj, k=2, tol=1e-10), ref)
    bottom = bottom_eigenpairs(op, k=2, tol=1e-10)
    np.testing.assert_allclose(bottom.values, dense[:2], rtol=1e-8, atol=1e-10)
    same(bottom_eigenpairs(f, w, 2, tol=1e-10), bottom)


def test_third_derivatives_take_an_operator():
    f, obj, w, _, H = problem()
    op = as_operator(obj)
    v1 = np.linalg.eigh(H)[1][:, -1]
    g = grad_top_eigenvalue(f, w, v1)
    same(grad_top_eigenvalue(op, v1), g)
    same(grad_top_eigenvalue(op, v=v1, log=True), grad_top_eigenvalue(f, w, v1, log=True))


def test_trace_takes_an_operator():
    f, obj, w, _, H = problem()
    key = jax.random.PRNGKey(3)
    est = hutchinson_trace(as_operator(obj), n_probes=12, key=key)
    same(est, hutchinson_trace(f, w, 12, key))
    Z = np.asarray(jax.random.rademacher(key, (w.size, 12), jnp.float64))
    assert float(est.value) == pytest.approx(np.mean(np.sum(Z * (H @ Z), 0)), rel=1e-10)


def test_density_and_stableness_take_an_operator():
    f, obj, w, _, H = problem()
    op = as_operator(obj)
    key = jax.random.PRNGKey(3)
    dens = spectral_density(op, key=key, n_probes=2, lanczos_steps=6)
    same(dens, spectral_density(f, w, key, n_probes=2, lanczos_steps=6))
    # first moment: the probe average of v^T H v / D, an unbiased estimate of tr(H) / D
    Z = np.asarray(jax.random.rademacher(key, (2, w.size), jnp.float64))
    np.testing.assert_allclose(dens.moment(1), np.mean(np.sum(Z @ H * Z, 1)) / w.size, rtol=1e-8)
    st = stableness(op, eta=0.05, n_points=2, tol=1e-10)
    same(st, stableness(f, w, 0.05, n_points=2, tol=1e-10))
    assert float(st.sharpness[0]) == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-8)


def test_preconditioned_eigenpairs_are_those_of_p_inverse_h():
    _, obj, _, p, H = problem()
    hess = jax.jit(jax.hessian(obj))
    op = PreconditionedOperator(as_operator(obj), p)
    PinvH = H / np.asarray(p)[:, None]
    dense = np.sort(np.linalg.eigvals(PinvH).real)  # similar to a symmetric matrix: real
    top = top_eigenpairs(op, k=3, tol=1e-10)
    np.testing.assert_allclose(top.values, dense[::-1][:3], rtol=1e-8)
    # z eigenvector of P^{-1/2} H P^{-1/2}  <=>  P^{-1/2} z eigenvector of P^{-1} H
    # (P^{-1} H X - X Lambda = P^{-1/2}(M Z - Z Lambda) for M = P^{-1/2} H P^{-1/2})
    s = 1 / np.sqrt(np.asarray(p))
    X = np.asarray(top.vectors) * s[:, None]
    resid = np.linalg.norm(PinvH @ X - X * np.asarray(top.values), axis=0)
    assert np.all(resid <= s.max() * np.asarray(top.residuals) + 1e-12)
    np.testing.assert_allclose(bottom_eigenpairs(op, k=3, tol=1e-10).values, dense[:3], atol=1e-9)
    # stableness of preconditioned GD: at s = 0 it is eta * lambda_1(P^{-1} H)
    st = stableness(op, eta=0.05, n_points=2, tol=1e-10)
    assert float(st.sharpness[0]) == pytest.approx(dense[-1], rel=1e-8)
    step = np.asarray(jax.grad(obj)(obj.w0)) / np.asarray(p)
    H_end = np.asarray(hess(obj.w0 - 0.05 * step)) / np.asarray(p)[:, None]
    assert float(st.sharpness[1]) == pytest.approx(np.linalg.eigvals(H_end).real.max(), rel=1e-8)


def gd_path(obj, steps, lr=0.1):
    g = jax.jit(jax.grad(obj))
    out = [obj.w0]
    for _ in range(steps):
        out.append(out[-1] - lr * g(out[-1]))
    return out


def test_tracker_follows_an_operator_that_changes_every_update_and_resumes():
    # preconditioned GD: P_t changes with the step, so each update gets a new operator
    _, obj, _, p, _ = problem()
    path = gd_path(obj, 6)
    hess = jax.jit(jax.hessian(obj))
    ops = [
        PreconditionedOperator(HessianOperator(obj, w), p * (1 + 0.05 * t))
        for t, w in enumerate(path)
    ]
    tr = EigenTracker(k=2, tol=1e-8)  # no loss: it is given operators
    spent, saved = [], None
    for t, op in enumerate(ops):
        if t == 4:
            saved = tr.state()
        res = tr.update(op)
        PinvH = np.asarray(hess(op.w)) / np.asarray(op.p)[:, None]
        dense = np.sort(np.linalg.eigvals(PinvH).real)[::-1][:2]
        np.testing.assert_allclose(res.values, dense, rtol=1e-7)
        spent.append(int(res.matvecs))
    assert tr.total_matvecs == sum(spent) and tr.updates == len(ops)
    resumed = EigenTracker(k=2, tol=1e-8)
    resumed.load_state(saved)
    for op in ops[4:]:
        again = resumed.update(op)
    np.testing.assert_array_equal(again.values, res.values)
    np.testing.assert_array_equal(again.vectors, res.vectors)


def test_tracker_built_on_an_operator_moves_it_to_each_point():
    _, obj, _, p, _ = problem()
    w = gd_path(obj, 2)[-1]
    tr = EigenTracker(PreconditionedOperator(as_operator(obj), p), k=1, tol=1e-10)
    ref = top_eigenpairs(PreconditionedOperator(HessianOperator(obj, w), p), k=1, tol=1e-10)
    np.testing.assert_allclose(tr.update(w).values, ref.values, rtol=1e-9)


TRACES = [0]


def counted_loss(w, A):
    TRACES[0] += 1  # runs only while JAX traces
    return 0.5 * w @ A @ w + 0.1 * jnp.sum(jnp.cos(w))


def test_compiled_solvers_are_reused_across_points_data_and_preconditioners():
    rng = np.random.default_rng(0)
    data = [jnp.asarray(np.diag(rng.uniform(1, 5, 12))) for _ in range(2)]
    objs = [
        Objective.from_data_fn(counted_loss, A, rng.normal(size=12), dtype="float64") for A in data
    ]
    ps = [jnp.asarray(rng.uniform(0.5, 2, 12)) for _ in range(2)]
    key = jax.random.PRNGKey(0)
    tr = EigenTracker(k=1, tol=1e-8)

    def solve_all(obj, w, p):
        op = HessianOperator(obj, jnp.asarray(w))
        top_eigenpairs(op, k=1, tol=1e-8)
        hutchinson_trace(op, n_probes=3, key=key)
        grad_top_eigenvalue(op, jnp.ones(12))
        tr.update(PreconditionedOperator(op, p))

    solve_all(objs[0], objs[0].w0, ps[0])
    solve_all(objs[0], objs[0].w0 - 0.3, ps[0])  # the tracker's first warm start is a block
    before = TRACES[0]
    solve_all(objs[0], objs[0].w0 + 0.3, ps[1])  # another point and preconditioner
    solve_all(objs[1], objs[1].w0, ps[0])  # other data
    assert TRACES[0] == before


def test_operator_calls_reject_bad_input_before_any_work():
    f, obj, w, _, _ = problem()
    op = as_operator(obj)
    for call, field in [
        (lambda: top_eigenpairs(op, w), "w"),  # an operator has its point
        (lambda: top_eigenpairs(f), "w"),  # a plain callable has none
        (lambda: top_eigenpairs(op, k=0), "k"),
        (lambda: hutchinson_trace(op), "n_probes"),
        (lambda: stableness(op), "eta"),
        (lambda: grad_top_eigenvalue(op), "v"),
        (lambda: EigenTracker(k=1).update(w), "point"),
        (lambda: EigenTracker("sharpness"), "loss"),
    ]:
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.field == field
