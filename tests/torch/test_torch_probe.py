"""eoslab.torch: a user's own nn.Module (defined here only) gets certified curvature from eoslab's
solvers; every number is checked against a dense float64 Hessian computed by torch's reverse-over-
reverse autograd (``torch.autograd.functional.hessian``), independent of the jvp-of-grad path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eoslab.curvature import (  # noqa: E402
    PreconditionedOperator,
    hutchinson_trace,
    top_eigenpairs,
)
from eoslab.errors import ConfigError  # noqa: E402
from eoslab.torch import (  # noqa: E402
    SharpnessProbe,
    TorchHessianOperator,
    TorchModel,
    adam_preconditioner,
    adam_threshold,
    minibatch_sharpness,
    to_jax,
)
from torch import nn  # noqa: E402


class TinyNet(nn.Module):
    """A user's model: Linear -> LayerNorm -> a fixed per-unit scale (a registered buffer) ->
    tanh -> Linear."""

    def __init__(self, din=4, width=6, dout=3, norm=True):
        super().__init__()
        self.fc1 = nn.Linear(din, width)
        self.ln = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc2 = nn.Linear(width, dout)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, width))

    def forward(self, x):
        return self.fc2(torch.tanh(self.ln(self.fc1(x)) * self.scale))


def _problem(dtype=torch.float64, n=48, seed=0, width=6):
    torch.manual_seed(seed)
    net = TinyNet(width=width).to(dtype)
    X = torch.randn(n, 4, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    return net, X, y


def _loss(out, y):
    return nn.functional.cross_entropy(out, y)


def _dense_hessian(net, X, y):
    """float64 reverse-over-reverse Hessian of the mean loss in named_parameters() order."""
    names = [n for n, _ in net.named_parameters()]
    params = {n: p.detach().double() for n, p in net.named_parameters()}
    buffers = {n: b.double() for n, b in net.named_buffers()}
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    w0 = torch.cat([params[n].reshape(-1) for n in names])
    net64 = net.double() if next(net.parameters()).dtype != torch.float64 else net

    def f(w):
        chunks = torch.split(w, sizes)
        p = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = torch.func.functional_call(net64, (p, buffers), (X.double(),))
        return _loss(out, y)

    H = torch.autograd.functional.hessian(f, w0)
    return H.numpy()


def _holds(values, bounds, H):
    ev = np.linalg.eigvalsh(H)[::-1][: len(values)]
    err = np.abs(np.asarray(values, np.float64) - ev)
    return err, np.asarray(bounds, np.float64), bool(np.all(err <= np.asarray(bounds)))


def test_certified_top3_every_bound_holds_and_warm_call_is_cheaper():
    net, X, y = _problem(n=64, width=16)  # D = 163
    probe = SharpnessProbe(net, _loss, (X, y), k=3, tol=1e-3)
    cold = probe()
    assert cold.converged and cold.values.dtype == np.float64
    err, bound, ok = _holds(cold.values, cold.error_bound, _dense_hessian(net, X, y))
    assert ok, (err, bound)
    assert np.all(bound <= 1e-3 * np.abs(cold.values))

    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    opt.zero_grad()
    _loss(net(X), y).backward()
    opt.step()
    warm = probe()  # reads the stepped parameters
    err, bound, ok = _holds(warm.values, warm.error_bound, _dense_hessian(net, X, y))
    assert ok, (err, bound)
    assert warm.converged
    assert warm.matvecs < cold.matvecs, (warm.matvecs, cold.matvecs)
    assert warm.seconds > 0


def test_float32_module_bounds_hold_against_float64_hessian():
    net, X, y = _problem(torch.float32, seed=1)
    r = SharpnessProbe(net, _loss, (X, y), k=2, tol=1e-4)()
    assert r.values.dtype == np.float32
    err, bound, ok = _holds(r.values, r.error_bound, _dense_hessian(net, X, y))
    assert ok, (err, bound)


def test_batches_are_weighted_by_size_and_buffers_are_used(x64):
    net, X, y = _problem()
    one = TorchHessianOperator.of(net, _loss, (X, y))
    split = TorchHessianOperator.of(net, _loss, [(X[:30], y[:30]), (X[30:], y[30:])])
    V = jax.random.normal(jax.random.PRNGKey(0), (one.dim, 3), jnp.float64)
    np.testing.assert_allclose(split.mm(V), one.mm(V), rtol=1e-12, atol=1e-14)
    H = _dense_hessian(net, X, y)
    np.testing.assert_allclose(one.mm(V), H @ np.asarray(V), rtol=1e-10, atol=1e-12)
    for chunk in (1, 2):  # one callback per chunk of columns
        np.testing.assert_allclose(one.mm(V, chunk=chunk), H @ np.asarray(V), rtol=1e-10)
    with pytest.raises(ConfigError, match="chunk"):
        one.mm(V, chunk=0)
    np.testing.assert_allclose(one.as_matrix(), H, atol=1e-12)
    twice = TorchHessianOperator.of(
        net, _loss, [(X[:30], y[:30]), (X[30:], y[30:])], hvp="double_backward"
    )
    np.testing.assert_allclose(twice.mm(V), H @ np.asarray(V), rtol=1e-10, atol=1e-12)
    w2 = twice.w + 0.01  # a new point: the cached gradient graph is rebuilt
    np.testing.assert_allclose(twice.at(w2).mm(V), one.at(w2).mm(V), rtol=1e-10, atol=1e-12)
    net.scale.mul_(0.5)  # a buffer change changes the curvature: it is read at each product
    assert not np.allclose(np.asarray(one.mm(V)), H @ np.asarray(V))


def test_solvers_run_unchanged_on_the_operator(x64):
    net, X, y = _problem(seed=2)
    op = TorchHessianOperator.of(net, _loss, (X, y))
    H = _dense_hessian(net, X, y)
    r = top_eigenpairs(op, k=2, tol=1e-8)
    err, bound, ok = _holds(r.values, r.error_bound, H)
    assert ok, (err, bound)
    tr = hutchinson_trace(op, n_probes=60)  # one block of 60 products through one callback
    assert tr.matvecs == 60
    assert abs(float(tr.value) - np.trace(H)) <= 4 * float(tr.stderr)
    value, g, _ = op.linearize()
    assert abs(float(value) - float(_loss(net(X), y))) < 1e-12
    net.zero_grad()
    _loss(net(X), y).backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).numpy()
    np.testing.assert_allclose(g, g_ref, atol=1e-13)
    # the third derivative: torch 2.13 gets it wrong through nn.LayerNorm (torch.func and
    # autograd disagree with each other and with differences of exact HVPs), so a tanh net here
    torch.manual_seed(5)
    op = TorchHessianOperator.of(TinyNet(norm=False).double(), _loss, (X, y))
    u = top_eigenpairs(op, k=1, tol=1e-8).vectors[:, 0]
    q, dq = op.grad_quadratic_form(u)
    np.testing.assert_allclose(float(q), float(op.quadratic_form(u)), rtol=1e-12)
    eps = 1e-5  # d/dt of u^T H(w + t e) u by central differences along a random e
    e = jax.random.normal(jax.random.PRNGKey(3), (op.dim,), jnp.float64)
    fd = (op.at(op.w + eps * e).quadratic_form(u) - op.at(op.w - eps * e).quadratic_form(u)) / (
        2 * eps
    )
    np.testing.assert_allclose(float(jnp.vdot(dq, e)), float(fd), rtol=1e-5)


def test_adam_preconditioned_sharpness_matches_dense():
    net, X, y = _problem(seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(3):
        opt.zero_grad()
        _loss(net(X), y).backward()
        opt.step()
    probe = SharpnessProbe(net, _loss, (X, y), k=1, tol=1e-7, optimizer=opt, preconditioned=True)
    r = probe()
    # P by hand from torch's own state: sqrt(v / (1 - beta2^t)) + eps
    p = torch.cat(
        [
            (opt.state[q]["exp_avg_sq"] / (1 - 0.99**3)).sqrt().reshape(-1) + 1e-6
            for q in net.parameters()
        ]
    ).numpy()
    s = 1 / np.sqrt(p)
    A = s[:, None] * _dense_hessian(net, X, y) * s[None, :]
    err, bound, ok = _holds(r.values, r.error_bound, A)
    assert ok, (err, bound)
    assert probe.threshold() == pytest.approx(adam_threshold(opt)) == pytest.approx(38 / 1e-2)
    with jax.enable_x64(True):
        model = TorchModel(net, _loss, (X, y))
        op = PreconditionedOperator(
            TorchHessianOperator(model, to_jax(model.flat())), adam_preconditioner(opt, model)
        )
        np.testing.assert_allclose(op.as_matrix(), A, atol=1e-10)


def test_minibatch_sharpness_of_one_batch():
    net, X, y = _problem(seed=4)
    got = minibatch_sharpness(net, _loss, (X[:16], y[:16]))
    net.zero_grad()
    _loss(net(X[:16]), y[:16]).backward()
    g = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).numpy()
    H = _dense_hessian(net, X[:16], y[:16])
    assert got == pytest.approx(g @ H @ g / (g @ g), rel=1e-10)


def test_bad_input_is_refused_before_any_work():
    net, X, y = _problem()
    with pytest.raises(ConfigError, match="data"):
        SharpnessProbe(net, _loss, X)
    with pytest.raises(ConfigError, match="preconditioned"):
        SharpnessProbe(net, _loss, (X, y), preconditioned=True)
    with pytest.raises(ConfigError, match="optimizer"):
        SharpnessProbe(net, _loss, (X, y), optimizer=torch.optim.LBFGS(net.parameters()))
    with pytest.raises(ConfigError, match="x64"):  # a float64 module outside x64 mode
        top_eigenpairs(TorchHessianOperator(TorchModel(net, _loss, (X, y)), jnp.zeros(63)))
    with pytest.raises(ConfigError, match="out"):
        SharpnessProbe(net, _loss, (X, y)).log(0)
