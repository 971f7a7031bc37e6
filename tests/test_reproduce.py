"""`eoslab reproduce`: every experiment is registered and the quick variants meet their tables."""

import pytest

from eoslab import ConfigError, reproduce


def test_all_paper_experiments_are_listed():
    names = reproduce.names()
    for name in ("valley", "quadratic", "flow-tracking", "mnist-flow", "cifar-vgg"):
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
