"""Extending eoslab: a new update rule (one class), a new process (one class) and a new
probe (one class), each defined here and nowhere else, run in lockstep with a built-in optimizer
through the one loop: probed (the probe at every step inside the compiled steps, and at probed
steps), stored, resumed after SIGKILL and plotted, each number against a closed form on a
quadratic $L(w) = \\tfrac12 w^\\top A w$ of known spectrum."""

from __future__ import annotations

import json
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.figure
import numpy as np
import pytest
from jaxtyping import Array

from eoslab import Objective
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.process import CompiledProcess
from eoslab.dynamics.rules import GD, Rule, StepInfo
from eoslab.report import plot_runs
from eoslab.runner import Probes, RunStore, ScanProbe, load_run, run
from helpers import assert_same_metrics, quadratic_with_spectrum, run_python

# float64 throughout: every column is held to its closed form at 1e-11 and below
pytestmark = pytest.mark.usefixtures("x64")

EIGS = (4.0, 2.0, 1.0, 0.5)
W0 = np.array([1.0, -0.5, 0.75, 2.0])
LR = 0.2  # GD and the Euler flow: lr * lambda_1 = 0.8
LR0, DECAY = 0.3, 0.05  # the new rule: lr_t = LR0 / (1 + DECAY t), lr_0 * lambda_1 = 1.2
SUBSTEPS = 4
STEPS, PROBE_EVERY = 60, 10


# --------------------------------------------------------------------------- the user's code


class DecayingGD(Rule):
    """GD with a decaying learning rate, lr_t = lr / (1 + decay t): a user's new rule."""

    lr: float
    decay: float

    kind: ClassVar[str] = "decaying_gd"
    name: ClassVar[str] = "GD, decaying lr"
    threshold_formula: ClassVar[str] = "2/lr_t"
    adaptive: ClassVar[bool] = False

    def init(self, w):
        return jnp.zeros((), jnp.int32)  # the step count

    def step(self, w, t, g, loss):
        del loss
        lr_t = self.lr / (1.0 + self.decay * t.astype(w.dtype))
        return w - lr_t * g, t + 1, StepInfo(lr_t, 2.0 / lr_t)

    def preconditioner(self, state):
        return None

    def threshold(self):
        return None  # changes every step


class EulerFlowState(NamedTuple):
    w: Array
    time: Array


class EulerFlow(CompiledProcess):
    """Gradient flow by explicit Euler: one step integrates flow time ``lr`` in ``substeps``
    equal Euler steps (a user's new process)."""

    lr: float
    substeps: int = 4

    def init(self, objective, w0):
        return EulerFlowState(w0, jnp.zeros((), w0.dtype))

    def point(self, state):
        return state.w

    def step(self, objective, state):
        base = objective.base()
        h = self.lr / self.substeps
        loss, g = jax.value_and_grad(base)(state.w)
        w = jax.lax.fori_loop(0, self.substeps, lambda _, w: w - h * jax.grad(base)(w), state.w)
        row = {
            "loss": loss,
            "grad_norm": jnp.linalg.norm(g),
            "lr_eff": jnp.asarray(self.lr, w.dtype),
            "threshold": jnp.asarray(2.0 * self.substeps / self.lr, w.dtype),  # Euler's bound
            "flow_time": state.time,
        }
        return EulerFlowState(w, state.time + self.lr), row


# --------------------------------------------------------------------------- the run


def _quad(w, A):
    return 0.5 * w @ A @ w


def _objective() -> Objective:
    _, A = quadratic_with_spectrum(EIGS, seed=3)
    return Objective.from_data_fn(_quad, A, W0, dtype="float64")


def lockstep_run(out, resume=False):
    """The run every test here looks at (the SIGKILL victim runs it too, in its own process)."""
    processes = {
        "gd": Optimizer(GD(LR)),
        "decay": Optimizer(DecayingGD(LR0, DECAY)),
        "euler": EulerFlow(lr=LR, substeps=SUBSTEPS),
    }
    return run(
        processes,
        _objective(),
        STEPS,
        probe_every=PROBE_EVERY,
        probes=Probes(k=2, tol=1e-8),
        out=out,
        flush_seconds=0,
        resume=resume,
    )


# --------------------------------------------------------------------------- closed forms


def _closed_form():
    """Per process: the coordinates c_t = V^T w_t in A's eigenbasis (rows t = 0..STEPS), and
    the effective LR and threshold of each step, all from the spectral decomposition of A."""
    A = np.asarray(_objective().data)
    lam, V = np.linalg.eigh(A)
    c0 = V.T @ W0
    t = np.arange(STEPS + 1)[:, None]
    lrs = LR0 / (1.0 + DECAY * np.arange(STEPS + 1))
    decay = np.vstack([np.ones_like(lam), np.cumprod(1.0 - lrs[:STEPS, None] * lam, axis=0)])
    coords = {
        "gd": (1.0 - LR * lam) ** t * c0,
        "decay": decay * c0,
        "euler": (1.0 - LR * lam / SUBSTEPS) ** (SUBSTEPS * t) * c0,
    }
    lr_eff = {"gd": np.full(STEPS + 1, LR), "decay": lrs, "euler": np.full(STEPS + 1, LR)}
    thr = {
        "gd": 2.0 / lr_eff["gd"],
        "decay": 2.0 / lrs,
        "euler": np.full(STEPS + 1, 2.0 * SUBSTEPS / LR),
    }
    return lam, V, coords, lr_eff, thr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, written to its own directory (float64: a module fixture is set up
    before the tests' x64 fixture)."""
    with jax.enable_x64(True):
        return lockstep_run(tmp_path_factory.mktemp("ext") / "ref")


def test_the_spectrum_is_known():
    # the oracle's A by a dense Hessian of the objective (not through eoslab)
    obj = _objective()
    H = np.asarray(jax.hessian(lambda w: obj(w))(jnp.asarray(W0)))
    np.testing.assert_allclose(np.linalg.eigvalsh(H)[::-1], EIGS, rtol=1e-12)


def test_new_rule_and_new_process_run_in_lockstep_against_closed_forms(reference):
    run_ = reference
    assert run_.status == "completed" and run_.step == STEPS
    lam, V, coords, lr_eff, thr = _closed_form()
    probed = list(range(0, STEPS + 1, PROBE_EVERY))
    assert set(run_.metrics["process"]) == {"gd", "decay", "euler"}
    for name, c in coords.items():
        df = run_.series(name)
        assert list(df["step"]) == list(range(STEPS + 1)), name
        loss = 0.5 * np.sum(lam * c**2, axis=1)
        grad_norm = np.sqrt(np.sum((lam * c) ** 2, axis=1))
        np.testing.assert_allclose(df["loss"], loss, rtol=1e-11, err_msg=name)
        np.testing.assert_allclose(df["grad_norm"], grad_norm, rtol=1e-11, err_msg=name)
        np.testing.assert_allclose(df["lr_eff"], lr_eff[name], rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(df["threshold"], thr[name], rtol=1e-14, err_msg=name)
        # probes: exactly on the probed steps, against the known spectrum
        pr = df[df["sharpness"].notna()]
        assert list(pr["step"]) == probed, name
        np.testing.assert_allclose(pr["sharpness"], EIGS[0], rtol=1e-7, err_msg=name)
        np.testing.assert_allclose(np.stack(pr["eigs"].to_list()), [EIGS[:2]] * 7, rtol=1e-7)
        assert (pr["sharpness_error"] <= 1e-7 * EIGS[0]).all(), name
        g = lam * c[probed]  # the gradient's coordinates
        align = np.sum(lam * g**2, axis=1) / (np.sum(g**2, axis=1) * EIGS[0])
        np.testing.assert_allclose(pr["grad_top_alignment"], align, rtol=1e-7, err_msg=name)
        np.testing.assert_allclose(pr["lr_sharpness"], lr_eff[name][probed] * EIGS[0], rtol=1e-7)
        assert df["eff_sharpness"].isna().all()  # no preconditioner anywhere
        # distances to the other processes, on probed rows only
        for other, d in coords.items():
            if other == name:
                assert df[f"dist_{other}"].isna().all()  # the column is another process's
                continue
            dist = np.linalg.norm(c[probed] - d[probed], axis=1)  # V is orthogonal
            np.testing.assert_allclose(pr[f"dist_{other}"], dist, rtol=1e-10, err_msg=name)
            assert df[f"dist_{other}"].isna().sum() == STEPS + 1 - len(probed)
        # the final point, as stored in the checkpoint
        np.testing.assert_allclose(run_.point(name), V @ c[-1], rtol=1e-11, atol=1e-15)
    # the columns the process and the optimizer add on their own
    gf_time = np.concatenate([[0.0], np.cumsum(lr_eff["decay"][:STEPS])])
    np.testing.assert_allclose(run_.series("decay")["gf_time"], gf_time, rtol=1e-13)
    np.testing.assert_allclose(run_.series("gd")["gf_time"], LR * np.arange(STEPS + 1))
    np.testing.assert_allclose(run_.series("euler")["flow_time"], LR * np.arange(STEPS + 1))
    assert run_.series("gd")["flow_time"].isna().all()


def test_the_store_holds_all_three_processes(reference):
    back = load_run(reference.path)
    assert back.status == "completed" and back.step == STEPS
    assert_same_metrics(back.metrics, reference.metrics)
    assert set(back.final_points) == {"gd", "decay", "euler"}
    for name, w in reference.final_points.items():
        np.testing.assert_array_equal(back.point(name), np.asarray(w))
    procs = json.loads((reference.path / "config.json").read_text())["config"]["processes"]
    assert procs["euler"] == {"kind": "EulerFlow", "lr": LR, "substeps": SUBSTEPS}
    assert procs["decay"] == {
        "kind": "optimizer",
        "rule": "decaying_gd",
        "lr": LR0,
        "decay": DECAY,
        "name": "GD, decaying lr",
        "threshold_formula": "2/lr_t",
        "threshold": None,
    }
    assert procs["gd"]["rule"] == "gd" and procs["gd"]["threshold"] == 2 / LR


@pytest.mark.subprocess
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    cut = tmp_path / "cut"
    code = f"_m.lockstep_run({str(cut)!r})"
    man = run_python(tmp_path, "test_extending", code, kill_at_checkpoint_of=cut, pause=0.2)
    assert man["status"] == "running"  # its step may lag the checkpoint on disk by one write
    step, _ = RunStore(cut).latest_checkpoint()
    assert 0 < step < STEPS
    resumed = lockstep_run(cut, resume=True)
    assert resumed.status == "completed" and resumed.step == STEPS
    assert_same_metrics(resumed.metrics, reference.metrics)
    assert_same_metrics(load_run(cut).metrics, reference.metrics)
    for name, w in reference.final_points.items():
        np.testing.assert_array_equal(np.asarray(resumed.point(name)), np.asarray(w))


def test_the_run_is_plotted(reference, tmp_path):
    png = plot_runs([reference.path], tmp_path / "fig.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # four panels with curves, not an empty canvas


def test_the_plot_overlays_one_line_per_process(reference, tmp_path, monkeypatch):
    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_runs([reference.path], tmp_path / "fig.png")
    (fig,) = figures
    lines = fig.axes[0].get_lines()  # the loss panel
    assert len(lines) == 3
    for name in ("gd", "decay", "euler"):
        df = reference.series(name)
        same = [
            ln
            for ln in lines
            if np.array_equal(ln.get_xdata(), df["step"])
            and np.array_equal(ln.get_ydata(), df["loss"])
        ]
        assert len(same) == 1, name
        assert name in same[0].get_label()


# --------------------------------------------------------------------------- a new probe

U = np.array([1.0, 1.0, -1.0, 1.0]) / 2.0  # a fixed unit vector


class CurvatureAndLossSum(ScanProbe):
    """A user's probe: the curvature u^T H u along a fixed unit vector u (its Hessian product
    from the step's own linearization) and, in its state, the running sum of the loss over the
    points it has probed and their count."""

    u: Array
    linearize = True

    def init(self, at):
        return jnp.zeros((), at.objective.dtype), jnp.zeros((), jnp.int32)

    def __call__(self, at, state):
        total, count = state
        hu = at.lin.matmat(self.u[:, None])[:, 0]
        total, count = total + at.lin.loss, count + 1
        row = {"u_curvature": jnp.vdot(self.u, hu), "loss_sum": total, "probe_calls": count}
        return row, (total, count)


def probe_run(out, every_step: bool, resume=False):
    """The lockstep run with the new probe: at every step inside the compiled steps
    (``probe_every=1``), or at the probed steps only."""
    processes = {
        "gd": Optimizer(GD(LR)),
        "decay": Optimizer(DecayingGD(LR0, DECAY)),
        "euler": EulerFlow(lr=LR, substeps=SUBSTEPS),
    }
    return run(
        processes,
        _objective(),
        STEPS,
        probe_every=1 if every_step else PROBE_EVERY,
        probes=Probes(k=2, tol=1e-8, host_every=PROBE_EVERY),
        out=out,
        flush_seconds=0,
        resume=resume,
        custom_probes=(CurvatureAndLossSum(jnp.asarray(U)),),
    )


@pytest.fixture(scope="module", params=[True, False], ids=["every-step", "probed"])
def probe_reference(request, tmp_path_factory):
    every = request.param
    with jax.enable_x64(True):  # as in `reference`
        return every, probe_run(tmp_path_factory.mktemp("probe") / "ref", every)


def test_new_probe_against_closed_forms(probe_reference):
    every, run_ = probe_reference
    assert run_.status == "completed"
    lam, V, coords, _, _ = _closed_form()
    A = np.asarray(_objective().data)
    probed = np.arange(STEPS + 1) if every else np.arange(0, STEPS + 1, PROBE_EVERY)
    for name, c in coords.items():
        df = run_.series(name)
        pr = df[df["loss_sum"].notna()]
        assert list(pr["step"]) == list(probed), name
        np.testing.assert_allclose(pr["u_curvature"], U @ A @ U, rtol=1e-12, err_msg=name)
        loss = 0.5 * np.sum(lam * c**2, axis=1)
        np.testing.assert_allclose(pr["loss_sum"], np.cumsum(loss[probed]), rtol=1e-11)
        assert list(pr["probe_calls"]) == list(range(1, len(probed) + 1)), name
        # the built-in probes beside it: in the step too, or at the probed steps
        assert df["sharpness"].notna().sum() == len(probed), name
        assert (df["grad_top_alignment"].notna()).sum() == STEPS // PROBE_EVERY + 1, name


def test_new_probe_is_stored_and_plotted(probe_reference, tmp_path):
    _, run_ = probe_reference
    back = load_run(run_.path)
    assert_same_metrics(back.metrics, run_.metrics)
    ckpt = RunStore(run_.path).read_checkpoint(RunStore(run_.path).latest_checkpoint()[1])
    # its state (loss sum, count) from before the last step was probed (a resume measures it)
    calls = ckpt["gd__probe_CurvatureAndLossSum_1"]
    probed = run_.series("gd").dropna(subset=["loss_sum"])
    assert int(calls) == int(probed["probe_calls"].iloc[-1]) - 1
    assert float(ckpt["gd__probe_CurvatureAndLossSum_0"]) == probed["loss_sum"].iloc[-2]
    png = plot_runs([run_.path], tmp_path / "fig.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_new_probe_resumes_after_sigkill_bit_identical(probe_reference, tmp_path):
    every, ref = probe_reference
    cut = tmp_path / "cut"
    code = f"_m.probe_run({str(cut)!r}, {every})"
    run_python(tmp_path, "test_extending", code, kill_at_checkpoint_of=cut, pause=0.2)
    step, _ = RunStore(cut).latest_checkpoint()
    assert 0 < step < STEPS
    resumed = probe_run(cut, every, resume=True)
    assert resumed.status == "completed"
    assert_same_metrics(resumed.metrics, ref.metrics)
