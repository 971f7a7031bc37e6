"""The GPU-sized presets (issue 28): each tiny variant runs end to end on synthetic stand-in data
(warned, and recorded in the manifest); real files are used when present; the byte-level token
windows against plain Python slicing; a 20-step resnet20-cifar run on 1,000 synthetic images
with certified sharpness probes (slow)."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import data
from eoslab.data.tokens import synthetic_token_windows
from eoslab.errors import ConfigError
from eoslab.experiments import PRESETS, ModelProblem, build, execute
from eoslab.experiments.scaled import SCALED_PRESETS, TINY_OF
from eoslab.runner import Probes


def test_every_scaled_preset_has_a_tiny_variant_of_the_same_family():
    full = [n for n in SCALED_PRESETS if not n.endswith("-tiny")]
    assert sorted(TINY_OF) == sorted(full)
    for name, tiny in TINY_OF.items():
        a, b = PRESETS[name].problem, PRESETS[tiny].problem
        assert (a.model, a.dataset, a.loss, a.if_missing) == (
            b.model,
            b.dataset,
            b.loss,
            "synthetic",
        )
    assert PRESETS["resnet20-cifar"].problem.n == 5000
    assert PRESETS["resnet20-cifar-sgd"].problem.n == 50000
    assert PRESETS["resnet20-cifar-sgd"].batch_size == 128


@pytest.mark.parametrize("name", sorted(set(TINY_OF.values())))
def test_tiny_variant_runs_on_synthetic_data_and_says_so(name, tmp_path):
    exp = PRESETS[name]
    exp = dataclasses.replace(
        exp,
        problem=dataclasses.replace(exp.problem, data_dir=str(tmp_path / "empty")),
        steps=3,
        probes=Probes(sharpness=False, distances=False),
    )
    with pytest.warns(UserWarning, match="synthetic data of the same shapes"):
        run = execute(exp, tmp_path / "run")
    m = run.metrics
    assert len(m) == 4 and np.isfinite(m["loss"]).all()
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["synthetic_data"] is True and manifest["status"] == "completed"
    assert manifest["synthetic_dataset"].endswith("-synthetic")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["notes"]["synthetic_data"] is True


def _fake_cifar_binary(root, n_per_batch=20):
    """Six CIFAR-10 binary batches of random records (label byte + 3072 pixel bytes)."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rec = rng.integers(0, 256, size=(n_per_batch, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(d / f"{name}.bin")
    return d


def test_real_files_are_used_when_present(tmp_path):
    d = _fake_cifar_binary(tmp_path)
    exp = dataclasses.replace(PRESETS["resnet20-cifar-tiny"].problem, data_dir=str(tmp_path), n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = build(dataclasses.replace(PRESETS["resnet20-cifar-tiny"], problem=exp))
    assert built.info["synthetic_data"] is False and built.info["dataset"] == "cifar10"
    # the first 30 training images are the first batch's first 20 and the second's first 10
    raw = np.concatenate(
        [np.fromfile(d / f"data_batch_{i}.bin", np.uint8).reshape(-1, 3073) for i in (1, 2)]
    )
    labels = built.objective.base().data["y"]
    np.testing.assert_array_equal(np.asarray(labels), raw[:30, 0])


def test_if_missing_needs_a_stand_in():
    with pytest.raises(ConfigError, match="if_missing"):
        ModelProblem(dataset="mnist1d", if_missing="synthetic")
    with pytest.raises(data.DatasetNotFoundError, match="text.txt or input.txt"):
        data.require("text-T256", "/nonexistent-eoslab-dir")


def test_byte_token_windows_against_python_slicing(tmp_path):
    text = ("To be, or not to be, that is the question: " * 40).encode()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "input.txt").write_bytes(text)
    ds = data.load("text-T256", data_dir=tmp_path)
    n_windows = (len(text) - 1) // 256
    n_train = round(0.9 * n_windows)
    assert ds.task == "sequence" and ds.num_classes == 256 and ds.input_shape == (256,)
    assert ds.n_train == n_train and ds.n_test == n_windows - n_train
    for j in (0, n_train - 1):
        assert np.asarray(ds.x_train[j], int).tolist() == list(text[256 * j : 256 * j + 256])
        assert np.asarray(ds.y_train[j]).tolist() == list(text[256 * j + 1 : 256 * j + 257])
    x, y = synthetic_token_windows(50, 16, seed=1)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # labels are the next tokens
    assert x.min() >= 0 and x.max() < 256


def test_synthetic_cifar_has_cifars_shapes_and_classes():
    ds = data.load("cifar10-synthetic", n=500)
    assert ds.input_shape == (32, 32, 3) and ds.num_classes == 10 and ds.n_test == 10000
    assert set(np.unique(np.asarray(ds.y_train)).tolist()) == set(range(10))
    assert abs(float(jnp.mean(ds.x_train))) < 1e-5  # standardized like CIFAR-10


@pytest.mark.slow
def test_resnet20_cifar_20_steps_on_1000_synthetic_images_with_certified_sharpness(tmp_path):
    """The issue's check: 20 GD steps of resnet20-cifar on 1,000 synthetic images, the certified
    sharpness every 5 steps; the step-0 value against scipy's ARPACK on the same HVP."""
    import scipy.sparse.linalg as sla

    exp = PRESETS["resnet20-cifar"]
    exp = dataclasses.replace(
        exp,
        problem=dataclasses.replace(exp.problem, n=1000, data_dir=str(tmp_path / "none")),
        steps=20,
        probe_every=5,
        microbatch=250,  # im2col activations of 1,000 images would hold ~12 GB on a CPU
    )
    with pytest.warns(UserWarning, match="synthetic"):
        run = execute(exp)
    probed = run.metrics[run.metrics["sharpness"].notna()]
    assert probed["step"].tolist() == [0, 5, 10, 15, 20]
    assert (probed["sharpness_error"] >= 0).all() and np.isfinite(probed["sharpness_error"]).all()
    assert (probed["sharpness"] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = build(exp).objective
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(obj), (obj.w0,), (v,))[1])
    op = sla.LinearOperator(
        (obj.dim, obj.dim), matvec=lambda v: np.asarray(hvp(jnp.asarray(v, jnp.float32)))
    )
    lam = float(sla.eigsh(op, k=1, which="LA", tol=1e-4, return_eigenvectors=False)[0])
    s0, e0 = probed["sharpness"].iloc[0], probed["sharpness_error"].iloc[0]
    assert abs(s0 - lam) <= e0 + 1e-3 * lam, (s0, e0, lam)
