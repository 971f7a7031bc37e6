"""`eoslab reproduce`: every experiment is listed, the quick variants meet their tables, and each
experiment scopes its own precision."""

import jax
import numpy as np
import pytest

import eoslab
from eoslab import ConfigError, reproduce


def test_all_paper_experiments_are_listed():
    names = reproduce.names()
    for name in ("valley", "quadratic", "flow-tracking", "mnist-flow", "cifar-vgg", "central-flow"):
        assert name in names
    with pytest.raises(ConfigError, match="name"):
        reproduce.get("no-such-experiment")


@pytest.mark.parametrize("name", ["valley", "quadratic", "flow-tracking", "cifar-vgg"])
def test_quick_variants_write_figures_and_pass_their_tables(name, tmp_path):
    rows = reproduce.run(name, tmp_path, quick=True)
    assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert (tmp_path / "table.md").exists() and (tmp_path / "table.csv").exists()
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.slow
def test_mnist_flow_quick(tmp_path):
    rows = reproduce.run("mnist-flow", tmp_path, quick=True)
    assert (tmp_path / "mnist_flow.png").exists()
    ok = {r["quantity"]: r["ok"] for r in rows}
    assert ok["sqrt L_T + sqrt L_T+1 vs lr sqrt(lambda_1/2)"]


def test_cli_reproduce_lists_runs_and_refuses(tmp_path, capsys):
    from eoslab.cli import main

    assert main(["reproduce"]) == 0
    assert "flow-tracking" in capsys.readouterr().out
    assert main(["reproduce", "valley", "--quick", "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "valley.png").exists()
    assert main(["reproduce", "valley", "--out", str(tmp_path / "v")]) == 2  # never overwritten
    assert main(["reproduce", "no-such"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_registry_lists_the_modules_experiments():
    from eoslab.reproduce import beyond, paper, vgg

    listed = [e.name for e in (*paper.EXPERIMENTS, *vgg.EXPERIMENTS, *beyond.EXPERIMENTS)]
    assert reproduce.names() == listed
    for name in ("central-flow", "self-stabilization", "adam-eos"):
        assert reproduce.get(name).run is not None


def test_experiments_scope_their_own_precision(tmp_path):
    # valley runs in float64 whatever the caller's mode, and leaves the mode as it found it
    before = jax.enable_x64.get_global()
    with jax.enable_x64(False):
        rows_32 = reproduce.run("valley", tmp_path / "a", quick=True)
        assert not jax.config.jax_enable_x64
    assert jax.enable_x64.get_global() == before
    assert rows_32 == reproduce.run("valley", tmp_path / "b", quick=True)


def test_gd_beside_flows_with_the_sdp_central_flow():
    # the full central-flow variant (k = 2, SDP) through the loop, on a tiny net
    from eoslab import data, models
    from eoslab.reproduce.beyond import gd_beside_flows

    with jax.enable_x64(True):
        ds = data.load("mnist1d", n=20)
        apply, params = models.create(
            "mlp", jax.random.key(0), (40,), 10, widths=(4, 4), activation="tanh"
        )
        obj = eoslab.Objective.from_model(apply, params, ds, "mse_half", dtype="float64")
        wide, gd_loss = gd_beside_flows(obj, lr=0.1, steps=10, every=5, k=2, window=2)
    assert wide["step"].tolist() == [0, 5]
    assert gd_loss.shape == (10,) and wide["loss_gd"].tolist() == gd_loss[[0, 5]].tolist()
    assert (
        wide[["loss_cf", "sharpness_gd", "sharpness_gf", "sharpness_cf", "gd_cf"]]
        .notna()
        .all(axis=None)
    )
    assert wide["gd_gf"].iloc[0] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["central-flow", "self-stabilization", "adam-eos"])
def test_beyond_quick_variants_write_figures_and_tables(name, tmp_path):
    rows = reproduce.run(name, tmp_path, quick=True)
    assert rows and all(np.isfinite(r["measured"]) for r in rows)
    assert (tmp_path / "table.md").exists() and (tmp_path / "table.csv").exists()
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
