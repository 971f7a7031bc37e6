"""examples/torch_cohen.py runs, and the lambda_1 it prints at the end is the top eigenvalue of
the dense Hessian of its final PyTorch weights (reverse-over-reverse autograd, float64)."""

import runpy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eoslab import load_run  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torch_cohen.py"


def test_torch_cohen_example(tmp_path, capsys):
    ns = runpy.run_path(str(EXAMPLE), run_name="example")
    model, results = ns["main"](n=64, width=12, lr=0.3, steps=20, every=10, out=tmp_path / "r")
    out = capsys.readouterr().out
    assert out.startswith(f"fc-tanh in PyTorch, {41 * 12 + 13 * 12 + 13 * 10} parameters")
    assert out.count("lambda_1") == 3 and "(2/lr = 6.66667)" in out

    from eoslab import data

    ds = data.load("mnist1d", n=64)
    X = torch.from_numpy(np.array(ds.x_train, np.float64))
    Y = torch.nn.functional.one_hot(torch.from_numpy(np.array(ds.y_train, np.int64)), 10).double()
    m64 = model.double()
    params = {n: p.detach() for n, p in m64.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    w0 = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(w):
        chunks = torch.split(w, [s.numel() for s in params.values()])
        p = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return ns["mse_half"](torch.func.functional_call(m64, p, (X,)), Y)

    H = torch.autograd.functional.hessian(loss, w0).numpy()
    lam = np.linalg.eigvalsh(H)[-1]
    last = results[-1]
    assert abs(last.sharpness - lam) <= last.error_bound[0] + 1e-5 * lam  # float32 weights
    assert last.sharpness == pytest.approx(lam, rel=1e-3)
    assert list(load_run(tmp_path / "r").metrics["step"]) == [0, 10, 20]
