"""A PyTorch training loop writes an eoslab run directory through `SharpnessProbe.log`; the
eoslab readers (`load_run`, ``eoslab report``, ``eoslab plot``) work on it as on any run."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eoslab import load_run  # noqa: E402
from eoslab.cli import main  # noqa: E402
from eoslab.errors import ConfigError  # noqa: E402
from eoslab.report.run_info import read_run_info  # noqa: E402
from eoslab.runner import RunExistsError  # noqa: E402
from eoslab.torch import SharpnessProbe  # noqa: E402
from torch import nn  # noqa: E402


def _mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


def test_a_torch_gd_loop_writes_an_eoslab_run(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    X, Y = torch.randn(32, 3), torch.randn(32, 2)
    lr = 0.2
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    out = tmp_path / "run"
    losses = {}
    with SharpnessProbe(net, _mse, (X, Y), k=2, tol=1e-3, optimizer=opt, out=out) as probe:
        with pytest.raises(RunExistsError):  # never over a run, even one being written
            SharpnessProbe(net, _mse, (X, Y), lr=lr, out=out)
        for step in range(6):
            if step % 2 == 0:
                r = probe.log(step, grad_norm=1.0 + step)
                losses[step] = float(_mse(net(X), Y))
                assert r.loss == pytest.approx(losses[step], rel=1e-6)
            opt.zero_grad()
            _mse(net(X), Y).backward()
            opt.step()

    run = load_run(out)
    m = run.metrics
    assert run.status == "completed"
    assert list(m["step"]) == [0, 2, 4]
    np.testing.assert_allclose(m["loss"], [losses[s] for s in (0, 2, 4)], rtol=1e-6)
    np.testing.assert_allclose(m["threshold"], 2 / lr)
    assert list(m["grad_norm"]) == [1.0, 3.0, 5.0]
    assert (m["sharpness_matvecs"] > 0).all()
    assert np.all(np.asarray([e[0] for e in m["eigs"]]) == m["sharpness"])
    assert float(m["sharpness"].iloc[-1]) == pytest.approx(probe.last.sharpness)

    info = read_run_info(out)
    assert info.rule.kind == "gd" and info.rule.threshold == pytest.approx(2 / lr)
    assert info.rule.label == "2/lr = 10"
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["dim"] == sum(p.numel() for p in net.parameters())
    assert cfg["problem"]["n"] == 32 and cfg["dtype"] == "float32"

    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "2/lr" in text and "Sequential" in text
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "overview.png").stat().st_size > 10_000

    with pytest.raises(RunExistsError):  # never overwrites a run
        SharpnessProbe(net, _mse, (X, Y), lr=lr, out=out)


def test_adam_rows_hold_the_preconditioned_sharpness(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    X, Y = torch.randn(16, 3), torch.randn(16, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.99))
    opt.zero_grad()
    _mse(net(X), Y).backward()
    opt.step()
    with SharpnessProbe(
        net, _mse, (X, Y), optimizer=opt, preconditioned=True, out=tmp_path / "a"
    ) as probe:
        probe.log(1)
    m = load_run(tmp_path / "a").metrics
    assert math.isnan(m["sharpness"].iloc[0]) and m["eff_sharpness"].iloc[0] > 0
    assert m["threshold"].iloc[0] == pytest.approx((2 + 2 * 0.8) / ((1 - 0.8) * 1e-2))
    with pytest.raises(ConfigError, match="extra"):
        with SharpnessProbe(net, _mse, (X, Y), lr=0.1, out=tmp_path / "b") as probe:
            probe.log(0, extra="text")
    assert load_run(tmp_path / "b").status == "failed"
