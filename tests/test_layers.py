"""The import graph of ``src/eoslab`` respects the layer order written down in ``LAYERS``.

Every ``import`` / ``from ... import`` statement of every module is read with ``ast`` (nothing is
imported), function-level and ``TYPE_CHECKING`` imports included, and mapped to the layer of the
module it names. A module may import its own unit (package or top-level module) and any unit of a
lower layer; an import of a unit of the same layer (a sibling) or of a higher one fails the test,
and the failure lists each offending ``module:line -> target``. ``docs/architecture.md`` draws the
same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Top to bottom. A unit is a subpackage (``runner``) or a top-level module (``objective``) of
# ``eoslab``; ``eoslab`` itself is the package's ``__init__`` (the public facade). Units on one
# line are side by side: neither imports the other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("eoslab",),  # the facade: re-exports the public names, imports anything below it
    ("reproduce",),  # the papers' experiments
    ("experiments", "torch"),  # typed run configs, presets, build, execute | PyTorch models
    ("theory",),  # limiting_flow: a limiting flow through the loop
    ("runner",),  # the loop, probes, the run store
    ("dynamics", "parallel"),  # processes and rules | sharding and micro-batching
    ("curvature",),  # operators (the only Hessian products), eigensolvers, trackers
    ("batches",),  # mini-batches of a mean objective
    ("mean_objective",),  # a mean objective as a weighted sum (padding, micro-batch scan)
    ("objective",),  # Objective: a loss on a flat vector and its data
    ("losses", "models", "data", "report"),  # report: figures and tables from a run directory
    ("precision",),  # mixed precision: the layers' products in bfloat16
    ("rundir", "runlock", "helptext", "_version"),  # rundir: the one reader of a run directory
    ("errors",),
)

# Imports that break the order today, each with the change that removes it. Empty when the
# package is layered; an entry that no longer matches an import fails the test, so it is removed
# when its fix lands.
ALLOWED: dict[str, str] = {}


def _rank() -> dict[str, int]:
    rank: dict[str, int] = {}
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            assert unit not in rank, f"{unit} is placed twice in LAYERS"
            rank[unit] = len(LAYERS) - i
    return rank


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (SRC / "eoslab").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "eoslab"


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The eoslab modules named by one import statement (``from pkg import mod`` names ``mod``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "eoslab"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif (node.module or "").split(".")[0] == "eoslab":
        target = node.module
    else:
        return []
    named = (f"{target}.{a.name}" for a in node.names)
    return sorted({m if m in mods else target for m in named})


def _imports() -> list[tuple[str, int, str]]:
    """(module, line, imported eoslab module) for every import statement in the package."""
    mods = _modules()
    out = []
    for module, path in sorted(mods.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, path, node, mods):
                out.append((module, node.lineno, target))
    return out


def _violations() -> list[tuple[str, str]]:
    """(``module:line -> target``, ``module -> target``) for each import against the order."""
    rank = _rank()
    bad = []
    for module, line, target in _imports():
        a, b = _unit(module), _unit(target)
        if a != b and rank[b] >= rank[a]:
            bad.append((f"{module}:{line} -> {target}", f"{module} -> {target}"))
    return bad


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    missing = sorted(units - set(_rank()))
    assert not missing, f"place these in LAYERS (tests/test_layers.py): {missing}"
    gone = sorted(set(_rank()) - units)
    assert not gone, f"LAYERS names units that no longer exist: {gone}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = _violations()
    unexpected = [where for where, edge in bad if edge not in ALLOWED]
    assert not unexpected, "imports against the layer order:\n" + "\n".join(unexpected)
    stale = sorted(set(ALLOWED) - {edge for _, edge in bad})
    assert not stale, f"ALLOWED entries that no longer occur (remove them): {stale}"


def test_the_reader_sees_imports_at_every_depth(tmp_path, monkeypatch):
    """The parser finds a function-level import and resolves ``from .. import mod`` to ``mod``."""
    pkg = tmp_path / "eoslab"
    (pkg / "curvature").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "runner.py").write_text("")
    (pkg / "curvature" / "__init__.py").write_text("")
    (pkg / "curvature" / "x.py").write_text(
        "from .. import errors\n\ndef f():\n    if True:\n        from ..runner import run\n"
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    found = {(m, t) for m, _, t in _imports()}
    x = "eoslab.curvature.x"
    assert found == {(x, "eoslab.errors"), (x, "eoslab.runner")}
    assert [where for where, _ in _violations()] == ["eoslab.curvature.x:5 -> eoslab.runner"]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
