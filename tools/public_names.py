"""The public names of eoslab: every ``__all__``, aliases, likely twins and clashes.

Usage: PYTHONPATH=src python tools/public_names.py [--package eoslab]

A *public namespace* is the package, each of its subpackages, and each module that a public
namespace exports in its ``__all__`` (``eoslab.losses``, ``eoslab.rules``). A *public name* is one
entry of a public namespace's ``__all__``. The report prints:

- the count of public names, in total and per namespace, with the names;
- **aliases**: one object (same ``id``) under two or more different public names (re-exports of
  an object under its own name, ``eoslab.Run`` = ``eoslab.runner.Run``, are one name);
- **twins by spelling**: different public callables or modules whose names differ only by case
  and underscores (``GD`` / ``gd``, ``AccuracyProbe`` / ``accuracy_probe``);
- **twins by docstring**: public callables whose docstring says they are another one ("same as",
  "alias", "shorthand", "equivalent to", or a summary that ends by naming another public
  callable, ``gd``: "Gradient descent at learning rate ``lr`` (`GD`).");
- **clashes**: one name for different objects in different namespaces (``Experiment``);
- **one object at two addresses**: an object exported under its own name by two namespaces
  neither of which contains the other, the facade ``eoslab`` aside (``experiments.GD`` and
  ``rules.GD``; ``eoslab.runner.Run`` and ``eoslab.Run`` is the facade's, ``eoslab.report.tables``
  and ``eoslab.report`` are one package's).

Twins and clashes are heuristics, to be read; aliases are exact (``tests/test_public_api.py``).
The script lives in ``tools/`` and not ``benchmarks/``: it measures the API, not speed, and the
test imports it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
import types
from collections import defaultdict
from collections.abc import Iterable

# values that Python may share between unrelated names (interned strings, small ints)
_VALUES = (int, float, complex, str, bytes, bool, type(None))
_SAYS_SAME = re.compile(r"same as|alias (?:of|for)|shorthand|shortcut for|equivalent to", re.I)
_ENDS_NAMING = re.compile(r"\(`([A-Za-z_][\w.]*)`\)\.?$")


@dataclasses.dataclass(frozen=True)
class Entry:
    namespace: str
    name: str
    obj: object = dataclasses.field(compare=False, repr=False)

    @property
    def qualname(self) -> str:
        return f"{self.namespace}.{self.name}"


def public_namespaces(package: str = "eoslab") -> dict[str, types.ModuleType]:
    """The package, its subpackages and every module a public namespace exports, by name."""
    root = importlib.import_module(package)
    found = {package: root}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.ispkg and not any(p.startswith("_") for p in info.name.split(".")):
            found[info.name] = importlib.import_module(info.name)
    todo = list(found)
    while todo:
        mod = found[todo.pop()]
        for name in getattr(mod, "__all__", ()):
            value = getattr(mod, name, None)
            if isinstance(value, types.ModuleType) and value.__name__.startswith(package):
                key = f"{mod.__name__}.{name}"
                if value not in found.values():
                    found[key] = value
                    todo.append(key)
    return dict(sorted(found.items()))


def walk(package: str = "eoslab") -> list[Entry]:
    """Every public name: one `Entry` per item of every public namespace's ``__all__``."""
    out = []
    for ns, mod in public_namespaces(package).items():
        for name in getattr(mod, "__all__", ()):
            if not hasattr(mod, name):
                raise AttributeError(f"{ns}.__all__ lists {name!r}, which {ns} does not define")
            out.append(Entry(ns, name, getattr(mod, name)))
    return out


def aliases(entries: Iterable[Entry]) -> list[list[Entry]]:
    """Groups of entries holding one object under two or more different names."""
    by_id: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        if not isinstance(e.obj, _VALUES):
            by_id[id(e.obj)].append(e)
    groups = [g for g in by_id.values() if len({e.name for e in g}) > 1]
    groups = [sorted(g, key=lambda e: e.qualname) for g in groups]
    return sorted(groups, key=lambda g: g[0].qualname)


def _kind(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        return "class"
    return "function" if callable(obj) else type(obj).__name__


def _callables(entries: Iterable[Entry]) -> dict[int, list[Entry]]:
    by_id: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        if callable(e.obj) or isinstance(e.obj, types.ModuleType):
            by_id[id(e.obj)].append(e)
    return by_id


def _first(group: list[Entry]) -> Entry:
    """The entry nearest the object's home module (``eoslab.runner.Run`` for ``Run``)."""
    home = getattr(group[0].obj, "__module__", None) or getattr(group[0].obj, "__name__", "")

    def distance(e: Entry) -> tuple[int, int, str]:
        near = _contains(e.namespace, home)
        return (0 if near else 1, -e.namespace.count(".") if near else 0, e.qualname)

    return min(group, key=distance)


def twins_by_spelling(entries: Iterable[Entry]) -> list[tuple[Entry, Entry]]:
    """Pairs of different callables/modules whose names differ only by case and underscores."""
    groups = list(_callables(entries).values())
    by_key: dict[str, list[Entry]] = defaultdict(list)
    for g in groups:
        e = _first(g)
        by_key[e.name.lower().replace("_", "")].append(e)
    pairs = []
    for same in by_key.values():
        for i, a in enumerate(same):
            for b in same[i + 1 :]:
                if a.name != b.name:
                    pairs.append(tuple(sorted((a, b), key=lambda e: e.qualname)))
    return sorted(pairs, key=lambda p: p[0].qualname)


def _returns(a: Entry, b: Entry) -> str:
    """``; f -> X`` when one of the pair is a function annotated to return something."""
    for e in (a, b):
        if inspect.isfunction(e.obj):
            ret = inspect.signature(e.obj).return_annotation
            if ret is not inspect.Signature.empty:
                return f"; {e.name} -> {getattr(ret, '__name__', ret)}"
    return ""


def twins_by_docstring(entries: Iterable[Entry]) -> list[tuple[Entry, str]]:
    """Public callables whose docstring presents them as another public callable."""
    entries = list(entries)
    callables = {e.name for e in entries if callable(e.obj)}
    out = []
    for g in _callables(entries).values():
        e = _first(g)
        if isinstance(e.obj, types.ModuleType):
            continue
        doc = inspect.getdoc(e.obj) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ").strip()
        said = _SAYS_SAME.search(doc)
        named = _ENDS_NAMING.search(summary)
        if said:
            out.append((e, doc[max(0, said.start() - 60) : said.end() + 60].replace("\n", " ")))
        elif named and named.group(1).split(".")[-1] in callables:
            out.append((e, summary))
    return sorted(out, key=lambda p: p[0].qualname)


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + ".")


def two_addresses(entries: Iterable[Entry], facade: str = "eoslab") -> list[list[Entry]]:
    """Objects exported by two namespaces neither of which contains the other (facade aside)."""
    by_id: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        if not isinstance(e.obj, _VALUES) and e.namespace != facade:
            by_id[id(e.obj)].append(e)
    out = []
    for g in by_id.values():
        spaces = sorted({e.namespace for e in g})
        if any(
            not _contains(a, b) and not _contains(b, a) for a in spaces for b in spaces if a < b
        ):
            out.append(sorted(g, key=lambda e: e.qualname))
    return sorted(out, key=lambda g: g[0].qualname)


def clashes(entries: Iterable[Entry]) -> list[list[Entry]]:
    """One name bound to different objects in different namespaces."""
    by_name: dict[str, dict[int, Entry]] = defaultdict(dict)
    for e in entries:
        if not isinstance(e.obj, _VALUES):
            by_name[e.name].setdefault(id(e.obj), e)
    return [
        sorted(d.values(), key=lambda e: e.qualname)
        for _, d in sorted(by_name.items())
        if len(d) > 1
    ]


def report(package: str = "eoslab") -> str:
    entries = walk(package)
    spaces = public_namespaces(package)
    pkgs = [ns for ns, m in spaces.items() if hasattr(m, "__path__")]
    lines = [
        f"public names: {len(entries)} entries of {len(spaces)} __all__ lists; "
        f"{len({e.name for e in entries})} distinct names; "
        f"{len({id(e.obj) for e in entries if not isinstance(e.obj, _VALUES)})} distinct objects",
        f"  of which {sum(e.namespace in pkgs for e in entries)} in the {len(pkgs)} lists of the "
        "package and its subpackages",
        "",
        "per namespace:",
    ]
    for ns, mod in spaces.items():
        names = list(getattr(mod, "__all__", ()))
        lines.append(f"  {ns} ({len(names)}): {', '.join(names)}")
    found = aliases(entries)
    lines += ["", f"aliases (one object, several names): {len(found)}"]
    for g in found:
        lines.append("  " + " = ".join(e.qualname for e in g))
    pairs = twins_by_spelling(entries)
    lines += ["", f"twins by spelling (case/underscores): {len(pairs)}"]
    for a, b in pairs:
        pair = f"{a.qualname} ({_kind(a.obj)}) ~ {b.qualname} ({_kind(b.obj)})"
        lines.append(f"  {pair}{_returns(a, b)}")
    docs = twins_by_docstring(entries)
    lines += ["", f"twins by docstring: {len(docs)}"]
    for e, text in docs:
        lines.append(f"  {e.qualname}: {text}")
    two = two_addresses(entries, package)
    lines += ["", f"one object at two addresses (facade aside): {len(two)}"]
    for g in two:
        lines.append("  " + " = ".join(e.qualname for e in g))
    clash = clashes(entries)
    lines += ["", f"clashes (one name, different objects): {len(clash)}"]
    for g in clash:
        lines.append(f"  {g[0].name}: " + ", ".join(f"{e.namespace} ({_kind(e.obj)})" for e in g))
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(report(args[args.index("--package") + 1] if "--package" in args else "eoslab"))
