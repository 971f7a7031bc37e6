"""Helpers shared by the test modules of every folder: problems with known answers, runs in a
fresh interpreter, and a Markdown table reader."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


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


# -- runs in a fresh interpreter, killed with SIGKILL, and metrics compared bit for bit
#    (test_extending, test_lockstep_runs)

_SCRIPT = """
import time

import eoslab.runner.store as _store

_write = _store.RunStore.write_checkpoint


def _slow_write(self, step, arrays):  # leaves the killer time to strike mid-run
    out = _write(self, step, arrays)
    time.sleep({pause!r})
    return out


_store.RunStore.write_checkpoint = _slow_write
import {module} as _m

{code}
"""


def run_python(tmp_path, module, code, *, kill_at_checkpoint_of=None, cache=None, pause=0.0):
    """Run ``code`` (statements using ``_m``, the test module ``module``) in a fresh interpreter:
    float64, CPU, ``tests/`` and the module's folder importable, every checkpoint write followed
    by a ``pause``, and JAX's persistent compilation cache in ``cache`` if given (so a second
    interpreter loads the first one's executables instead of compiling them again).

    With ``kill_at_checkpoint_of`` (a run directory), SIGKILL the interpreter as soon as that
    directory holds a checkpoint and return the manifest read after the kill; otherwise wait for
    it to succeed and return None.
    """
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests_dir = Path(__file__).resolve().parent
    (module_file,) = tests_dir.rglob(f"{module}.py")  # test modules' basenames are unique
    name = f"{module}_{len(list(Path(tmp_path).glob(f'{module}_*.py')))}"
    script, log = Path(tmp_path) / f"{name}.py", Path(tmp_path) / f"{name}.log"
    script.write_text(_SCRIPT.format(pause=pause, module=module, code=code))
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1",
        PYTHONPATH=os.pathsep.join(
            [str(tests_dir.parent / "src"), str(tests_dir), str(module_file.parent)]
        ),
    )
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            if kill_at_checkpoint_of is None:
                assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
                return None
            ckpts = Path(kill_at_checkpoint_of) / "checkpoints"
            deadline = time.monotonic() + 300
            while not (ckpts.is_dir() and any(ckpts.glob("step-*.npz"))):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"the run ended (rc {proc.returncode}) before its first checkpoint:\n"
                        + log.read_text()[-3000:]
                    )
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    return json.loads((Path(kill_at_checkpoint_of) / "manifest.json").read_text())


def assert_same_metrics(a, b):
    """Two metrics tables are the same: rows, columns, dtypes, and every value bit for bit
    (float columns compared as their 64-bit patterns, so NaN = NaN and 0.0 != -0.0)."""
    import numpy as np
    import pandas as pd

    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for col in a.columns:
        x, y = a[col], b[col]
        assert x.dtype == y.dtype, col
        if x.dtype == object:
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                if u is None or v is None:
                    assert u is None and v is None, (col, i)
                    continue
                u, v = np.asarray(u), np.asarray(v)
                assert u.dtype == v.dtype and u.shape == v.shape, (col, i)
                if u.dtype.kind == "f":
                    u, v = (z.astype(np.float64).view(np.uint64) for z in (u, v))
                assert np.array_equal(u, v), (col, i)
        elif isinstance(x.dtype, pd.api.extensions.ExtensionDtype):
            pd.testing.assert_series_equal(x, y, check_exact=True)
        elif x.dtype.kind == "f":
            xa, ya = x.to_numpy(np.float64), y.to_numpy(np.float64)
            bad = np.flatnonzero(xa.view(np.uint64) != ya.view(np.uint64))
            assert bad.size == 0, (col, bad[:5], xa[bad[:5]], ya[bad[:5]])
        else:
            np.testing.assert_array_equal(x.to_numpy(), y.to_numpy(), err_msg=col)


# -- the eoslab command in a fresh interpreter (test_run_lock): Ctrl-C's handler restored, an
#    optional pause after each checkpoint write, and the step each chunk of steps reached logged

_CLI = """
import runpy, signal, sys, time

signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell ignores SIGINT
import eoslab.runner.loop as _loop
import eoslab.runner.store as _store

_write, _advance = _store.RunStore.write_checkpoint, _loop._Lockstep.advance
PAUSE, LOG = {pause!r}, {log!r}


def _slow_write(self, step, arrays):
    out = _write(self, step, arrays)
    time.sleep(PAUSE)
    return out


def _logged_advance(self, t0, n, log_every, **kw):  # the pause falls inside the chunk of steps
    time.sleep(PAUSE)
    out = _advance(self, t0, n, log_every, **kw)
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{{t0 + n}}\\n")
    return out


_store.RunStore.write_checkpoint = _slow_write
_loop._Lockstep.advance = _logged_advance
runpy.run_module("eoslab.cli", run_name="__main__", alter_sys=True)
"""


def eoslab_process(*args, cache=None, pause=0.0, log=None):
    """``eoslab ARGS`` in a fresh interpreter (CPU, this checkout's ``src``), as a `Popen` with
    text pipes: SIGINT's default handler restored (a shell's background job starts with it
    ignored), ``pause`` seconds after each checkpoint write and at the start of each chunk of
    steps (a test's signal then lands mid-chunk), the step each chunk reached appended to ``log``,
    and JAX's persistent compilation cache in ``cache`` if given."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"),
    )
    env.pop("JAX_ENABLE_X64", None)
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    code = _CLI.format(pause=float(pause), log=None if log is None else str(log))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the tables of a Markdown report (test_report, test_cli)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The tables of a Markdown text as rows of cell texts, read by an independent parser
    (markdown-it, GitHub tables) from the HTML it renders."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Cells()
    parser.feed(MarkdownIt("commonmark").enable("table").render(text))
    return parser.tables


def group_mask(params, groups):
    """Flat 0/1 vector selecting the parameters whose path contains one of ``groups``."""

    def pick(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return jnp.full(leaf.shape, float(any(g in name for g in groups)), jnp.float64)

    return ravel_pytree(jax.tree_util.tree_map_with_path(pick, params))[0]
