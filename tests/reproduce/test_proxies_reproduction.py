"""``reproduce proxies``: its summary on curves with known answers, its theory rows, and (slow)
the quick variant passing every row."""

import math

import numpy as np
import pandas as pd
import pytest

from eoslab import ConfigError
from eoslab.reproduce import get
from eoslab.reproduce.proxies import (
    Trajectory,
    gauss_newton_rows,
    proxy_summary,
    quadratic_rows,
    trajectory_rows,
)


def test_trajectory_settings_name_the_field():
    for kw, field in [
        (dict(problem="cifar"), "problem"),
        (dict(rule="sgd"), "rule"),
        (dict(every=7), "every"),
    ]:
        base = dict(name="t", problem="digits", rule="gd", lr=0.5, steps=100, every=10)
        with pytest.raises(ConfigError) as info:
            Trajectory(**{**base, **kw})
        assert info.value.field == field


def test_summary_on_known_curves():
    # lambda_1 rises through 2/lr = 4 at step 30; a proxy at half of it, one at exactly it
    t = Trajectory("t", "digits", "gd", 0.5, 60, 10)
    steps = np.arange(0, 70, 10)
    lam = np.array([2.0, 2.5, 3.0, 4.1, 4.0, 3.9, 4.05])
    frame = pd.DataFrame(
        {
            "step": steps,
            "threshold": 4.0,
            "sharpness": lam,
            "sharpness_matvecs": 12,
            "directional_sharpness": lam / 2,
            "directional_sharpness_hvp": 2,
            "critical_sharpness": lam * np.array([1, 1, 1, 1, 1, 1, 1.5]),
            "critical_sharpness_fwd": [3, 3, 3, 5, 5, 5, 5],
        }
    )
    table = proxy_summary(frame, t).set_index("proxy")
    d, c = table.loc["directional"], table.loc["critical"]
    assert d["ratio_median_ps"] == 0.5 and d["ratio_median_edge"] == 0.5
    assert math.isnan(d["onset_step"]) and d["lambda1_onset_step"] == 30
    assert d["hvp_per_probe"] == 2 and d["fwd_per_probe"] == 0 and d["lambda1_hvp_per_probe"] == 12
    assert c["onset_step"] == 30 and c["ratio_worst_edge"] == 1.5 and c["ratio_median_ps"] == 1
    assert c["fwd_per_probe"] == 5  # the median of 3, 3, 3, 5, 5, 5, 5
    rows = {r["quantity"]: r for r in trajectory_rows(frame, table.reset_index(), t)}
    assert rows["t: directional / lambda_1, largest (<= 1)"]["ok"]
    assert rows["t: sharpness reaches its threshold (onset step <= steps)"]["measured"] == 30


@pytest.mark.slow  # ~2 minutes of compiling under load; the claims are tested in tests/curvature
def test_theory_rows_pass():
    rows = quadratic_rows(3) + gauss_newton_rows()
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


@pytest.mark.slow  # four trajectories with every proxy (mnist-5k SGD among them): minutes
def test_quick_variant_passes_its_rows(tmp_path):
    rows = get("proxies")(tmp_path, True)
    assert all(r["ok"] for r in rows), [r["quantity"] for r in rows if not r["ok"]]
    for name in ("table.md", "proxies.csv", "proxies.md", "curves.csv", "proxies.png"):
        assert (tmp_path / name).exists()
