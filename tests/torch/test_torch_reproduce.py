"""``eoslab reproduce torch-eos --quick`` passes every row of its table (about 3 CPU minutes)."""

import pytest

pytest.importorskip("torch")

from eoslab import reproduce  # noqa: E402


@pytest.mark.slow
def test_torch_eos_quick_passes_its_table(tmp_path):
    rows = reproduce.get("torch-eos")(tmp_path, quick=True)
    assert len(rows) == 5 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert (tmp_path / "table.md").exists() and (tmp_path / "sharpness.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "config.json").exists()
