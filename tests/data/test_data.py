"""Datasets: shapes, subsets, preprocessing, on-disk formats, safe unpickling, verified fetch."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import time

import numpy as np
import pytest

from eoslab import data
from eoslab.data import builtin, disk, download, safe_pickle
from eoslab.data.registry import DATASETS
from eoslab.errors import ConfigError, UnsafeFileError


# ----------------------------------------------------------------------------- built in
@pytest.mark.parametrize(
    "name,train,test,shape,k",
    [
        ("mnist1d", (4000, 40), (1000, 40), (40,), 10),
        ("mnist-5k", (4000, 28, 28, 1), (1000, 28, 28, 1), (28, 28, 1), 10),
        ("digits", (1500, 8, 8, 1), (297, 8, 8, 1), (8, 8, 1), 10),
        ("chebyshev-3-20", (20, 1), (20, 1), (1,), 1),
        ("linear-50-50", (50, 50), (50, 50), (50,), 50),
        ("gaussian-mixture-4", (1000, 2), (1000, 2), (2,), 4),
    ],
)
def test_builtin_shapes(name, train, test, shape, k):
    ds = data.load(name)
    assert ds.x_train.shape == train and ds.x_test.shape == test
    assert ds.input_shape == shape and ds.num_classes == k and ds.name == name
    assert ds.x_train.dtype == np.float32
    if ds.task == "classification":
        assert ds.y_train.shape == (train[0],) and ds.y_train.dtype == np.int32
        assert set(np.unique(np.asarray(ds.y_train))) == set(range(k))
    else:
        assert ds.y_train.shape == (train[0], k)


def test_mnist1d_is_generated_offline_cached_and_leaves_global_rng_alone():
    state = np.random.get_state()[1].copy()
    data.load("mnist1d", n=4000)
    assert np.array_equal(np.random.get_state()[1], state)
    t = time.perf_counter()
    ds = data.load("mnist1d", n=4000)
    assert time.perf_counter() - t < 0.5  # cached in memory after the first generation
    assert ds.x_train.shape == (4000, 40)


def test_standardization_uses_training_statistics():
    for name, n in (("mnist1d", 4000), ("mnist-5k", 1000)):
        ds = data.load(name, n=n)
        x = np.asarray(ds.x_train, np.float64).reshape(n, -1)
        sd = x.std(axis=0)
        live = sd > 0  # blank MNIST border pixels are constant: only centred
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(sd[live], 1.0, atol=1e-4)
        assert live.sum() > 0.5 * x.shape[1]
    # mnist1d: no blank features
    x = np.asarray(data.load("mnist1d").x_train)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-4)


def test_global_scaling_centres_each_pixel_and_scales_all_by_one_number():
    raw = builtin.mnist_5k()[0][:1000].reshape(1000, -1).astype(np.float64)
    mu = raw.mean(axis=0)
    rms = np.sqrt(np.mean(((raw - mu) ** 2).mean(axis=0)))  # one std for all 784 pixels
    x = np.asarray(data.load("mnist-5k", n=1000, scaling="global").x_train, np.float64)
    np.testing.assert_allclose(x.reshape(1000, -1), (raw - mu) / rms, atol=1e-5)
    assert np.mean(x**2) == pytest.approx(1.0, rel=1e-5)
    # per-feature scaling blows up pixels that few digits touch; global scaling does not
    per = np.asarray(data.load("mnist-5k", n=1000).x_train)
    assert np.abs(per).max() > 20 > 5 > np.abs(x).max()
    with pytest.raises(ConfigError, match="scaling.*'per-feature', 'global'"):
        data.load("mnist-5k", n=10, scaling="pixel")


def test_the_config_s_scaling_reaches_the_objective():
    from eoslab import rules
    from eoslab.experiments import Experiment, ModelProblem, build, from_dict

    raw = builtin.mnist_5k()[0][:50].reshape(50, -1).astype(np.float64)
    centred = raw - raw.mean(axis=0)
    for scaling, sd in (("global", np.sqrt(np.mean(centred**2))), ("per-feature", None)):
        exp = Experiment(
            problem=ModelProblem(model="fc-tanh", dataset="mnist-5k", n=50, scaling=scaling),
            rule=rules.GD(lr=0.1),
            steps=1,
        )
        x = np.asarray(build(exp).objective.data["x"], np.float64).reshape(50, -1)
        if sd is None:  # per feature: every touched pixel has std 1
            live = centred.std(axis=0) > 0
            np.testing.assert_allclose(x.std(axis=0)[live], 1.0, atol=1e-4)
        else:
            np.testing.assert_allclose(x, centred / sd, atol=1e-5)
    cfg = {"problem": {"kind": "model", "dataset": "mnist-5k", "scaling": "pixel"}}
    with pytest.raises(ConfigError, match="scaling"):
        from_dict({**cfg, "rule": {"kind": "gd", "lr": 0.1}, "steps": 1})


def test_first_subset_keeps_file_order():
    raw_y = builtin.mnist1d()[1]
    ds = data.load("mnist1d", n=37)
    assert np.array_equal(np.asarray(ds.y_train), raw_y[:37])


def test_balanced_subset_is_balanced_and_seeded():
    ds = data.load("mnist-5k", n=105, subset="balanced", seed=3)
    # 105 = 10 * 10 + 5: classes 0..4 get 11, classes 5..9 get 10
    assert np.bincount(np.asarray(ds.y_train)).tolist() == [11] * 5 + [10] * 5
    again = data.load("mnist-5k", n=105, subset="balanced", seed=3)
    other = data.load("mnist-5k", n=105, subset="balanced", seed=4)
    assert np.array_equal(np.asarray(ds.x_train), np.asarray(again.x_train))
    assert not np.array_equal(np.asarray(ds.x_train), np.asarray(other.x_train))
    g = data.load("gaussian-mixture-2", n=40, subset="balanced")
    assert np.bincount(np.asarray(g.y_train)).tolist() == [20, 20]


def test_synthetic_sets_match_their_definitions():
    ch = data.load("chebyshev-3-20")
    x, y = np.asarray(ch.x_train[:, 0]), np.asarray(ch.y_train[:, 0])
    np.testing.assert_allclose(y, 4 * x**3 - 3 * x, atol=1e-5)  # T_3(x) = 4x^3 - 3x
    assert x[0] == -1.0 and x[-1] == 1.0
    lin = data.load("linear-50-50")
    xx = np.asarray(lin.x_train, np.float64)
    np.testing.assert_allclose(xx.T @ xx / 50, np.eye(50), atol=1e-4)  # X = sqrt(n) Q


def _boom(_):
    raise AssertionError("the loader ran before the arguments were checked")


def test_bad_arguments_raise_config_error_before_any_work(monkeypatch):
    monkeypatch.setitem(DATASETS, "mnist1d", dataclasses.replace(DATASETS["mnist1d"], loader=_boom))
    with pytest.raises(ConfigError, match="dataset='mnist-1d'.*'mnist1d'"):
        data.load("mnist-1d")
    with pytest.raises(ConfigError, match="subset='random'.*'balanced'"):
        data.load("mnist1d", subset="random")
    with pytest.raises(ConfigError, match="n=4001.*between 1 and 4000"):
        data.load("mnist1d", n=4001)
    with pytest.raises(ConfigError, match="n=0"):
        data.load("mnist1d", n=0)
    with pytest.raises(ConfigError, match="subset"):
        data.load("chebyshev-4-20", subset="balanced")
    with pytest.raises(ConfigError, match="n=2000"):
        data.load("gaussian-mixture-2", n=2000)


def test_list_and_table():
    names = sorted(data.DATASETS)
    assert {
        "mnist-5k",
        "digits",
        "mnist1d",
        "chebyshev-3-20",
        "chebyshev-4-20",
        "chebyshev-5-20",
        "linear-50-50",
        "cifar10",
        "mnist",
        "fashion-mnist",
    } <= set(names)
    table = data.list_datasets_table(data_dir="/nonexistent")
    for name in names:
        assert name in table
    assert "yes (built in)" in table and "no (eoslab data fetch" in table


# ----------------------------------------------------------------------------- sequence tasks
@pytest.mark.parametrize(
    "name,task,length,vocab",
    [
        ("sort-L4-V10", "sort", 4, 10),
        ("copy-L4-V10", "copy", 4, 10),
        ("reverse-L4-V10", "reverse", 4, 10),
        ("sort-L8-V32", "sort", 8, 32),
    ],
)
def test_sequence_datasets_hold_their_task(name, task, length, vocab):
    ds = data.load(name, n=50)
    t = 2 * length - 1
    assert ds.task == "sequence" and ds.name == name
    assert ds.input_shape == (t,) and ds.num_classes == vocab
    assert ds.x_train.shape == (50, t) and ds.y_train.shape == (50, t)
    assert ds.y_train.dtype == np.int32 and ds.x_test.shape[1] == t
    x, y = np.asarray(ds.x_train), np.asarray(ds.y_train)
    assert np.array_equal(x, np.round(x)) and x.min() >= 0 and x.max() < vocab  # raw token ids
    want = {"sort": sorted, "copy": list, "reverse": lambda a: a[::-1]}[task]
    for xi, yi in zip(x.astype(int).tolist(), y.tolist(), strict=True):
        a = xi[:length]
        b = list(want(a))
        assert xi == a + b[:-1]  # teacher forcing: source, then the target shifted
        assert yi == a[: length - 1] + b  # echo the source, then the target one token ahead
    spec = DATASETS[name]
    full = data.load(name)
    assert full.n_train == spec.train_size and full.n_test == spec.test_size
    assert np.array_equal(np.asarray(full.x_train[:50]), x)  # n keeps the first n


def test_sequence_datasets_refuse_a_balanced_subset_before_any_work(monkeypatch):
    monkeypatch.setitem(
        DATASETS, "sort-L4-V10", dataclasses.replace(DATASETS["sort-L4-V10"], loader=_boom)
    )
    with pytest.raises(ConfigError) as err:
        data.load("sort-L4-V10", n=20, subset="balanced")
    assert err.value.field == "subset" and "'first'" in err.value.accepted
    assert "sequence" in err.value.accepted
    with pytest.raises(ConfigError, match="n=4097"):
        data.load("sort-L4-V10", n=4097)


@pytest.mark.usefixtures("x64")
def test_losses_and_accuracy_on_token_sequences():
    """cross_entropy, mse_half and the accuracy probe of (N, T, V) logits against (N, T) labels,
    against loops over examples and positions."""
    import jax.numpy as jnp

    from eoslab import Objective, losses
    from eoslab.runner import Accuracy

    rng = np.random.default_rng(0)
    n, t, v = 5, 7, 4
    logits = rng.normal(size=(n, t, v))
    labels = rng.integers(0, v, size=(n, t)).astype(np.int32)
    ce = mse = hits = 0.0
    for i in range(n):
        for j in range(t):
            z = logits[i, j]
            ce += -(z[labels[i, j]] - np.log(np.sum(np.exp(z))))
            mse += 0.5 * sum((z[c] - (c == labels[i, j])) ** 2 for c in range(v))
            hits += int(np.argmax(z) == labels[i, j])
    out, y = jnp.asarray(logits), jnp.asarray(labels)
    assert float(losses.cross_entropy(out, y)) == pytest.approx(ce / (n * t), rel=1e-12)
    assert float(losses.mse_half(out, y)) == pytest.approx(mse / (n * t), rel=1e-12)
    assert float(losses.mse_sum(out, y)) == pytest.approx(2 * mse / (n * t), rel=1e-12)
    # the probe of a model whose outputs are the logits above (the parameters are the logits)
    obj = Objective.from_model(
        lambda p, x: p["z"] + 0 * x[..., None],
        {"z": logits},
        (np.zeros((n, t)), labels),
        "cross_entropy",
        dtype="float64",
    )
    probe = Accuracy.of(obj)
    assert probe is not None
    assert float(probe.value(obj.w0)) == pytest.approx(hits / (n * t), rel=1e-6)


# ----------------------------------------------------------------------------- CIFAR-10 files
def _cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    return x, y


def write_cifar_python(root, n=3, protocol=2):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _cifar_arrays(n, i)
        batch = {
            b"batch_label": b"fabricated",
            b"labels": y.tolist(),
            b"data": x,
            b"filenames": [b"img%d.png" % j for j in range(n)],
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return d


def test_cifar_python_batches(tmp_path):
    d = write_cifar_python(tmp_path)
    x, y = disk.read_cifar_python(d / "data_batch_1")
    raw, labels = _cifar_arrays(3, 0)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    assert y.tolist() == labels.tolist()
    # rows hold the R plane (1024 bytes), then G, then B, each row-major 32x32
    assert x[1, 2, 5, 0] == raw[1, 0 * 1024 + 2 * 32 + 5]
    assert x[1, 2, 5, 2] == raw[1, 2 * 1024 + 2 * 32 + 5]
    ds = data.load("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.num_classes == 10
    np.testing.assert_allclose(np.asarray(ds.x_train).mean(axis=0), 0.0, atol=1e-4)
    with pytest.raises(ConfigError, match="n=16"):
        data.load("cifar10", n=16, data_dir=tmp_path)


def test_cifar_python_protocol_4_str_keys(tmp_path):
    x, y = _cifar_arrays(2, 0)
    p = tmp_path / "b"
    p.write_bytes(pickle.dumps({"data": x, "labels": y.tolist()}, protocol=4))
    got, labels = disk.read_cifar_python(p)
    assert got.shape == (2, 32, 32, 3) and labels.tolist() == y.tolist()


def test_cifar_binary_batches_and_truncation(tmp_path, monkeypatch):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _cifar_arrays(2, i)
        rec = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        (d / f"{name}.bin").write_bytes(rec.tobytes())
    monkeypatch.setenv("EOSLAB_DATA", str(tmp_path))  # found through the environment
    ds = data.load("cifar10")
    assert ds.x_train.shape == (10, 32, 32, 3)
    assert np.asarray(ds.y_test).tolist() == _cifar_arrays(2, 5)[1].tolist()
    (d / "test_batch.bin").write_bytes((d / "test_batch.bin").read_bytes()[:-7])
    with pytest.raises(data.CorruptFileError, match="truncated"):
        data.load("cifar10")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch evil-eval-ran')",))


def test_malicious_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    d = write_cifar_python(tmp_path / "data")
    marker = tmp_path / "pwned"
    x, y = _cifar_arrays(3, 0)
    evil = {b"data": x, b"labels": y.tolist(), b"payload": Evil(marker)}
    (d / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeFileError, match="system"):
        data.load("cifar10", data_dir=tmp_path / "data")
    assert not marker.exists()
    # the same payload unpickled normally would have run: proof that the test file is live
    pickle.loads(pickle.dumps(Evil(tmp_path / "control")))
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize(
    "payload",
    [
        EvilEval(),
        np.array([1, "a"], dtype=object),  # object arrays could carry anything
        io.BytesIO(b"x"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeFileError):
        safe_pickle.loads(pickle.dumps({b"data": payload}, protocol=2))
    assert not (tmp_path / "evil-eval-ran").exists()


def test_restricted_unpickler_limits_codecs():
    # a protocol-2 pickle of bytes calls _codecs.encode(text, "latin1"); other codecs are refused
    payload = pickle.dumps(b"\xff\x00", protocol=2)
    assert safe_pickle.loads(payload) == b"\xff\x00"
    with pytest.raises(UnsafeFileError, match="codec"):
        safe_pickle.loads(payload.replace(b"latin1", b"rot_13"))


def test_restricted_unpickler_admits_plain_data():
    obj = {b"a": [1, 2.5, "s", b"b", None], "arr": np.arange(6, dtype=np.int64).reshape(2, 3)}
    for protocol in (2, 3, 4):
        got = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
        assert got[b"a"] == obj[b"a"] and np.array_equal(got["arr"], obj["arr"])
    with pytest.raises(UnsafeFileError):
        safe_pickle.loads(b"not a pickle")


# ----------------------------------------------------------------------------- IDX files
def idx_bytes(arr):
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_set(d, n_train=6, n_test=4, gz=True):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gz_and_raw(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "mnist", gz=gz)
    ds = data.load("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert np.asarray(ds.y_train).tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    x = disk.read_idx(tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert np.array_equal(x, arrays["train-images-idx3-ubyte"])


def test_idx_reader_types_and_corruption(tmp_path):
    p = tmp_path / "ints"
    p.write_bytes(idx_bytes(np.array([[1, -2], [3, 4]], dtype=np.int32)))
    assert disk.read_idx(p).tolist() == [[1, -2], [3, 4]]
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(data.CorruptFileError, match="truncated"):
        disk.read_idx(p)
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(data.CorruptFileError, match="magic"):
        disk.read_idx(p)


def test_fashion_mnist_and_missing_data(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "SYSTEM_FASHION_MNIST", tmp_path / "system")
    monkeypatch.setenv("EOSLAB_DATA", str(tmp_path / "default"))
    with pytest.raises(data.DatasetNotFoundError, match="eoslab data fetch fashion-mnist"):
        data.load("fashion-mnist")
    arrays = write_idx_set(tmp_path / "system", gz=True)  # where Debian's package puts it
    ds = data.load("fashion-mnist")  # the default places include the Debian directory
    assert ds.x_train.shape == (6, 28, 28, 1)
    assert np.asarray(ds.y_train).tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert DATASETS["fashion-mnist"].locate(None) == str(tmp_path / "system")
    assert "yes" in data.list_datasets_table().split("fashion-mnist")[1][:140]
    # an explicit data_dir is searched alone: the Debian copy does not stand in for it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert DATASETS["fashion-mnist"].locate(empty) is None
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion-mnist", data_dir=empty)
    msg = str(info.value)
    assert f"data_dir={str(empty)!r}" in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg and "make fashion-data" in msg
    # ... and the Debian directory itself may be given as data_dir (files directly in it)
    got = data.load("fashion-mnist", data_dir=tmp_path / "system")
    np.testing.assert_array_equal(np.asarray(got.x_test), np.asarray(ds.x_test))


def test_idx_subfolder_of_the_dataset_wins_over_other_files(tmp_path):
    """A data dir holding mnist/ and fashion-mnist/: each name reads its own folder; IDX files
    directly in the data dir are read only when the named folders hold none."""
    mn = write_idx_set(tmp_path / "mnist", n_train=7, gz=False)
    fa = write_idx_set(tmp_path / "fashion-mnist", n_train=9, gz=True)
    assert data.load("mnist", data_dir=tmp_path).x_train.shape[0] == 7
    assert data.load("fashion-mnist", data_dir=tmp_path).x_train.shape[0] == 9
    assert mn["train-images-idx3-ubyte"].shape[0] == 7 and fa["t10k-images-idx3-ubyte"].size
    write_idx_set(tmp_path / "direct", n_train=5)
    assert data.load("mnist", data_dir=tmp_path / "direct").x_train.shape[0] == 5


def test_require_names_the_field_and_the_files(tmp_path):
    assert data.require("mnist1d", tmp_path) == "built in"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.require("cifar10", tmp_path / "nowhere", field="--data-dir")
    msg = str(info.value)
    assert msg.startswith(f"--data-dir={str(tmp_path / 'nowhere')!r}")
    assert "cifar-10-batches-py/" in msg and "data_batch_5" in msg and "test_batch" in msg
    with pytest.raises(ConfigError, match="dataset"):
        data.require("no-such-set", tmp_path)
    write_cifar_python(tmp_path / "cifar10")
    assert data.require("cifar10", tmp_path) == f"{tmp_path / 'cifar10' / disk.CIFAR_PY} (python)"


# ----------------------------------------------------------------------------- fetch
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    mode = "ok"  # "ok", "truncate" (close after half), "corrupt" (flip bytes), "norange"
    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.mode == "corrupt":
            body = bytes(b ^ 0xFF for b in body)
        start = 0
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        if rng and self.mode != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        part = body[start:]
        if self.mode == "truncate":
            part = part[: len(part) // 2]
            self.close_connection = True
        self.wfile.write(part)
        self.wfile.flush()


@pytest.fixture
def server():
    _Handler.files, _Handler.mode, _Handler.ranges = {}, "ok", []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield _Handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _cifar_archive(tmp_path):
    src = write_cifar_python(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_fetch_cifar10_from_local_server_then_load(server, tmp_path):
    handler, url = server
    archive = _cifar_archive(tmp_path)
    handler.files["/cifar-10-python.tar.gz"] = archive
    md5 = hashlib.md5(archive).hexdigest()
    out = data.fetch_dataset(
        "cifar10",
        tmp_path / "store",
        mirror=url,
        checksums={"cifar-10-python.tar.gz": md5},
        progress=False,
    )
    assert out == tmp_path / "store" / "cifar-10-batches-py"
    assert data.load("cifar10", data_dir=tmp_path / "store").x_train.shape == (15, 32, 32, 3)
    leftovers = [p.name for p in (tmp_path / "store").iterdir()]
    assert sorted(leftovers) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    requests = len(handler.ranges)
    data.fetch_dataset("cifar10", tmp_path / "store", mirror=url, progress=False)
    assert len(handler.ranges) == requests  # already there: nothing downloaded again


def test_fetch_replaces_a_corrupt_local_copy(server, tmp_path):
    handler, url = server
    files = write_idx_set(tmp_path / "src", gz=True)
    sums = {}
    for stem in files:
        body = (tmp_path / "src" / f"{stem}.gz").read_bytes()
        handler.files[f"/{stem}.gz"] = body
        sums[f"{stem}.gz"] = hashlib.md5(body).hexdigest()
    (tmp_path / "store" / "mnist").mkdir(parents=True)
    (tmp_path / "store" / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"junk")
    out = data.fetch_dataset(
        "mnist", tmp_path / "store", mirror=url, checksums=sums, progress=False
    )
    assert out == tmp_path / "store" / "mnist"
    ds = data.load("mnist", data_dir=tmp_path / "store")
    assert np.asarray(ds.y_train).tolist() == files["train-labels-idx1-ubyte"].tolist()


def test_corrupt_download_is_detected_and_removed(server, tmp_path):
    handler, url = server
    body = os.urandom(50_000)
    handler.files["/f.bin"] = body
    handler.mode = "corrupt"
    dest = tmp_path / "f.bin"
    with pytest.raises(data.CorruptFileError, match="md5"):
        download.download(url + "/f.bin", dest, md5=hashlib.md5(body).hexdigest(), progress=False)
    assert list(tmp_path.iterdir()) == []  # neither dest nor a partial file is left


def test_truncated_download_is_detected_then_resumed(server, tmp_path):
    handler, url = server
    body = os.urandom(100_000)
    handler.files["/f.bin"] = body
    sha = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "f.bin"
    handler.mode = "truncate"
    with pytest.raises(data.DownloadError, match="50000 of 100000|stopped"):
        download.download(url + "/f.bin", dest, sha256=sha, progress=False)
    assert not dest.exists()  # nothing half-written at the destination
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 50_000  # kept only as the resume point
    handler.mode = "ok"
    download.download(url + "/f.bin", dest, sha256=sha, progress=False)
    assert handler.ranges[-1] == "bytes=50000-"  # resumed with an HTTP Range request
    assert dest.read_bytes() == body and not part.exists()


def test_server_ignoring_range_restarts_and_checksum_is_required(server, tmp_path):
    handler, url = server
    body = os.urandom(10_000)
    handler.files["/f.bin"] = body
    (tmp_path / "f.bin.part").write_bytes(b"garbage")
    handler.mode = "norange"
    download.download(
        url + "/f.bin", tmp_path / "f.bin", md5=hashlib.md5(body).hexdigest(), progress=False
    )
    assert (tmp_path / "f.bin").read_bytes() == body
    with pytest.raises(ConfigError, match="checksum"):
        download.download(url + "/f.bin", tmp_path / "g.bin", progress=False)
    with pytest.raises(ConfigError, match="dataset='digits'"):
        data.fetch_dataset("digits", tmp_path)


# ----------------------------------------------------------------------------- --data-dir (CLI)
def _fc_tanh_loss_by_hand(arrays, n):
    """mse_half of the fc-tanh preset at its seed-0 init on the first n generated images,
    standardized per pixel with numpy (the CLI's numbers are checked against this)."""
    import jax

    from eoslab import models

    x = arrays["train-images-idx3-ubyte"][:n].reshape(n, -1).astype(np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd < 1e-8, 1.0, sd)
    apply, params = models.create("fc-tanh", jax.random.PRNGKey(0), (28, 28, 1), 10)
    f = np.asarray(apply(params, x.reshape(n, 28, 28, 1).astype(np.float32)), np.float64)
    onehot = np.eye(10)[arrays["train-labels-idx1-ubyte"][:n]]
    return float(np.mean(0.5 * np.sum((f - onehot) ** 2, axis=1)))


def test_run_data_dir_reads_the_files_there(tmp_path, capsys):
    import json

    from eoslab.cli import main
    from eoslab.runner import load_run

    arrays = write_idx_set(tmp_path / "data" / "fashion-mnist", n_train=8)
    out = tmp_path / "run"
    args = ["run", "eos-gd", "--problem.dataset", "fashion-mnist", "--problem.n", "6"]
    args += ["--steps", "1", "--probes.no-sharpness", "--probes.no-alignment"]
    args += ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert main([*args, "--quiet", "--no-plot"]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["problem"]["data_dir"] == str(tmp_path / "data")
    loss0 = load_run(out).metrics.query("step == 0")["loss"].iloc[0]
    assert loss0 == pytest.approx(_fc_tanh_loss_by_hand(arrays, 6), rel=1e-5)
    # a directory without the files: exit 2 before anything is written, naming the field
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    args[-3:] = [str(tmp_path / "empty"), "--out", str(tmp_path / "run2")]
    assert main([*args, "--quiet", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir={str(tmp_path / 'empty')!r}" in err and "train-images-idx3-ubyte" in err
    assert not (tmp_path / "run2").exists()
    # a problem that reads no dataset
    assert main(["run", "toy", "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def _write_cifar_binary(root, n):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _cifar_arrays(n, i)
        (d / f"{name}.bin").write_bytes(np.concatenate([y[:, None], x], 1).astype(np.uint8))


def test_reproduce_data_dir_errors_name_the_field(tmp_path, capsys):
    from eoslab.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["reproduce", "cifar-vgg", "--data-dir", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir={str(empty)!r}" in err and "cifar-10-batches-bin/" in err
    assert not out.exists()
    assert main(["reproduce", "fashion-vgg", "--quick", "--data-dir", str(empty)]) == 2
    assert "t10k-images-idx3-ubyte" in capsys.readouterr().err
    assert main(["reproduce", "valley", "--data-dir", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "valley reads no dataset" in err and "cifar-vgg" in err and "fashion-vgg" in err
    assert not out.exists()


@pytest.mark.slow  # minutes on 2 busy cores
def test_reproduce_cifar_vgg_quick_reads_data_dir(tmp_path, capsys):
    """The smoke variant (16 images, 40 steps) on generated CIFAR-10 batches: the table says
    cifar10, not the synthetic stand-in, and its checks hold."""
    from eoslab.cli import main
    from eoslab.report.tables import read_table

    _write_cifar_binary(tmp_path / "data", 4)  # 20 training images
    out = tmp_path / "out"
    assert (
        main(
            [
                "reproduce",
                "cifar-vgg",
                "--quick",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "on cifar10" in (out / "table.md").read_text()
    assert read_table(out)["ok"].all()


# ----------------------------------------------------------------------------- fashion-vgg
_TINY_VGG = (4, "P", 4, "P", 4, 4, "P", 4, 4, "P", 4, 4, "P")


def test_fashion_vgg_data_and_head(tmp_path):
    """The experiment's images (10 generated 28x28 ones; CI has no Fashion-MNIST): zeros around
    the standardized pixels; the head's init std keeps the paper's output variance."""
    from eoslab.reproduce import arora2022_vgg as vgg

    arrays = write_idx_set(tmp_path / "data", n_train=10)
    ds = vgg.pad_to_32(
        data.load("fashion-mnist", n=10, subset="balanced", data_dir=tmp_path / "data")
    )
    x = arrays["train-images-idx3-ubyte"].astype(np.float64)
    sd = x.std(axis=0)
    want = (x - x.mean(axis=0)) / np.where(sd < 1e-8, 1.0, sd)
    got = np.asarray(ds.x_train)[..., 0]
    assert got.shape == (10, 32, 32) and ds.input_shape == (32, 32, 1)
    np.testing.assert_allclose(got[:, 2:30, 2:30], want, atol=1e-5)
    assert not got[:, :2].any() and not got[:, 30:].any() and not got[:, :, :2].any()
    assert vgg.head_std(_TINY_VGG) == pytest.approx(0.01 * np.sqrt(128))
    assert vgg.head_std(vgg.VGG11) == pytest.approx(0.01)


@pytest.mark.slow  # compiling a VGG's HVPs takes minutes on 2 busy cores
def test_fashion_vgg_end_to_end_on_generated_idx_files(tmp_path):
    """The experiment on 10 generated images: each rule's last step is w - lr_eff grad with the
    gradient taken apart from the loop; the figure and table are written."""
    from eoslab.reproduce import arora2022_vgg as vgg

    write_idx_set(tmp_path / "data", n_train=10)
    settings = vgg.FashionVGG(n=10, steps=4, every=2, config=_TINY_VGG)
    rows = vgg.fashion_vgg(tmp_path / "out", settings, data_dir=tmp_path / "data")
    steps = [r for r in rows if "step = lr_eff * grad" in r["quantity"]]
    assert len(steps) == 2 and all(r["ok"] for r in steps)
    assert (tmp_path / "out" / "fashion_vgg.png").stat().st_size > 10_000
    assert "fashion-vgg" in (tmp_path / "out" / "table.md").read_text()


_DEBIAN = disk.SYSTEM_FASHION_MNIST
_NO_DEBIAN = "Debian's dataset-fashion-mnist is not installed (make fashion-data)"


@pytest.mark.skipif(not _DEBIAN.is_dir(), reason=_NO_DEBIAN)
def test_debian_fashion_mnist_is_the_published_set():
    """60,000 + 10,000 images of 28x28, 6,000 / 1,000 per class (Xiao et al. 2017)."""
    files = disk.find_idx([_DEBIAN])
    x_tr, y_tr = disk.read_idx(files[disk.IDX_FILES[0]]), disk.read_idx(files[disk.IDX_FILES[1]])
    x_te, y_te = disk.read_idx(files[disk.IDX_FILES[2]]), disk.read_idx(files[disk.IDX_FILES[3]])
    assert x_tr.shape == (60000, 28, 28) and x_te.shape == (10000, 28, 28)
    assert np.bincount(y_tr).tolist() == [6000] * 10 and np.bincount(y_te).tolist() == [1000] * 10
    assert x_tr.dtype == np.uint8 and x_tr.max() == 255


@pytest.mark.slow
@pytest.mark.skipif(not _DEBIAN.is_dir(), reason=_NO_DEBIAN)
def test_fashion_vgg_quick_on_real_images(tmp_path):
    from eoslab import reproduce

    rows = reproduce.get("fashion-vgg")(tmp_path, quick=True)
    assert [r["quantity"] for r in rows if not r["ok"]] == []
