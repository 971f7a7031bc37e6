"""One name per thing in the public API (``tools/public_names.py`` walks every ``__all__``).

- no alias: one object under two different public names (re-exports under its own name aside);
- no object at two addresses: exported by two namespaces neither of which contains the other (the
  facade ``eoslab`` aside);
- every pair of public names differing only by case and underscores is reviewed below.

Each allow-list holds what another part of issue 25 is still removing, with who removes it, or a
reviewed pair that is one concept each. An entry that no longer occurs fails the test (delete it),
so the lists shrink as the removals land.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "public_names.py"
_spec = importlib.util.spec_from_file_location("public_names", _PATH)
names = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("public_names", names)
_spec.loader.exec_module(names)

# one object under two different public names: none today
ALIASES: dict[str, str] = {}

TWO_ADDRESSES: dict[str, str] = {}

_RESULT = "kept: a function and the result type it returns, one concept (diffrax's Solution)"
TWINS: dict[str, str] = {
    "eoslab.dynamics.LimitingFlow ~ eoslab.theory.limiting_flow": _RESULT,
    "eoslab.dynamics.PhiResult ~ eoslab.dynamics.phi_result": _RESULT,
    "eoslab.dynamics.StabilityQuantities ~ eoslab.dynamics.stability_quantities": _RESULT,
    "eoslab.dynamics.TangentProjector ~ eoslab.dynamics.tangent_projector": _RESULT,
    "eoslab.losses.accuracy ~ eoslab.runner.Accuracy": (
        "kept: the metric (a function of outputs and labels) and the probe that records it"
    ),
    "eoslab.curvature.batch_sharpness ~ eoslab.runner.BatchSharpness": (
        "kept: the estimator at a point and the probe that records it (with the batch "
        "lambda_max and the GNI) at probed steps"
    ),
    "eoslab.curvature.SpectralDensity ~ eoslab.curvature.spectral_density": _RESULT,
    "eoslab.curvature.Stableness ~ eoslab.curvature.stableness": _RESULT,
    "eoslab.runner.Run ~ eoslab.runner.run": _RESULT,
    **{
        f"eoslab.curvature.{f} ~ eoslab.runner.{c}": (
            "kept: the estimator at a point and the probe that records it with its cost"
        )
        for f, c in [
            ("critical_sharpness", "CriticalSharpness"),
            ("directional_sharpness", "DirectionalSharpness"),
            ("layer_sharpness", "LayerSharpness"),
            ("trace_per_parameter", "TracePerParameter"),
        ]
    },
}


@pytest.fixture(scope="module")
def entries():
    return names.walk("eoslab")


def _check(found: set[str], allowed: dict[str, str], what: str) -> None:
    new = sorted(found - set(allowed))
    assert not new, f"{what}:\n" + "\n".join(new)
    stale = sorted(set(allowed) - found)
    assert not stale, "allow-list entries that no longer occur (delete them):\n" + "\n".join(stale)


def test_no_aliases(entries):
    found = {" = ".join(e.qualname for e in g) for g in names.aliases(entries)}
    _check(found, ALIASES, "one object under two public names")


def test_no_object_at_two_addresses(entries):
    found = {" = ".join(e.qualname for e in g) for g in names.two_addresses(entries)}
    _check(found, TWO_ADDRESSES, "one object exported by two unrelated namespaces")


def test_names_differing_by_case_or_underscores_are_reviewed(entries):
    found = {f"{a.qualname} ~ {b.qualname}" for a, b in names.twins_by_spelling(entries)}
    _check(found, TWINS, "public names that differ only by case/underscores (review them)")


def test_the_walk_finds_aliases_twins_and_addresses(tmp_path, monkeypatch):
    """On a package written here: every kind of duplicate is found, and nothing else."""
    pkg = tmp_path / "namesprobe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "other").mkdir()
    (pkg / "impl.py").write_text(
        "class Thing:\n    pass\n\ndef thing():\n    return Thing()\n\n"
        "def helper():\n    '''The same as `thing`.'''\n\nCONST = 3\n"
    )
    (pkg / "__init__.py").write_text(
        "from .impl import Thing, thing\nfrom . import sub\n__all__ = ['Thing', 'thing', 'sub']\n"
    )
    (pkg / "sub" / "__init__.py").write_text(
        "from ..impl import Thing, helper, CONST\nThing2 = Thing\nOTHER = 3\n"
        "__all__ = ['Thing', 'Thing2', 'helper', 'CONST', 'OTHER']\n"
    )
    (pkg / "other" / "__init__.py").write_text("from ..impl import helper\n__all__ = ['helper']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m.split(".")[0] == "namesprobe"]:
        monkeypatch.delitem(sys.modules, m)
    found = names.walk("namesprobe")
    assert len(found) == 9
    assert [[e.qualname for e in g] for g in names.aliases(found)] == [
        ["namesprobe.Thing", "namesprobe.sub.Thing", "namesprobe.sub.Thing2"]
    ]  # CONST and OTHER are one int (3), a value, not an alias
    assert [(a.name, b.name) for a, b in names.twins_by_spelling(found)] == [("Thing", "thing")]
    assert [e.name for e, _ in names.twins_by_docstring(found)] == ["helper"]
    assert [[e.qualname for e in g] for g in names.two_addresses(found, "namesprobe")] == [
        ["namesprobe.other.helper", "namesprobe.sub.helper"]
    ]
