r"""Help text from docstrings: a docstring's first paragraph in plain Unicode.

The command line's help is generated from the configs' docstrings (tyro), which are written for
the API docs: LaTeX math between dollars and reST literals. `plain` turns such text into what a
terminal shows well: ``$w_{t+1} = w_t - \eta\nabla L(w_t)$`` becomes ``wₜ₊₁ = wₜ - η∇L(wₜ)``,
double backquotes are dropped. `plain_docstrings` lends the classes a CLI parses their plain first
paragraph for the parse (the details stay in the API docs), and gives their docstrings back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["config_classes", "plain", "plain_docstrings", "summary"]

_SYMBOLS = {
    "alpha": "α",
    "beta": "β",
    "delta": "δ",
    "epsilon": "ε",
    "eta": "η",
    "lambda": "λ",
    "mu": "μ",
    "nu": "ν",
    "phi": "φ",
    "sigma": "σ",
    "tau": "τ",
    "theta": "θ",
    "Phi": "Φ",
    "Sigma": "Σ",
    "Gamma": "Γ",
    "nabla": "∇",
    "partial": "∂",
    "dagger": "†",
    "top": "ᵀ",
    "perp": "⊥",
    "leftarrow": "←",
    "rightarrow": "→",
    "to": "→",
    "cdot": "·",
    "times": "×",
    "langle": "⟨",
    "rangle": "⟩",
    "le": "≤",
    "leq": "≤",
    "ge": "≥",
    "geq": "≥",
    "approx": "≈",
    "infty": "∞",
    "sum": "Σ",
    "min": "min",
    "max": "max",
    "log": "log",
    "exp": "exp",
    "dots": "...",
    "ldots": "...",
    "lVert": "‖",
    "rVert": "‖",
    "|": "‖",
    ",": " ",
    ";": " ",
    " ": " ",
    "!": "",
}
_SUB = dict(
    zip("0123456789+-=()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ", strict=True)
)
_SUP = dict(zip("0123456789+-=()niT", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱᵀ", strict=True))
_SUP.update({"ᵀ": "ᵀ", "⊥": "⊥", "†": "†", "*": "*"})
_ACCENTS = {"hat": "\u0302", "dot": "\u0307", "tilde": "\u0303", "bar": "\u0304"}


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument at ``s[i]``: a {braced group}, a \\command or one character; and the end."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth, j = 0, i
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                break
        return s[i + 1 : j], j + 1
    if s[i] == "\\":
        m = re.match(r"\\([A-Za-z]+|.)", s[i:])
        assert m is not None
        return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def _script(text: str, table: dict[str, str], mark: str) -> str:
    if text and all(c in table for c in text):
        return "".join(table[c] for c in text)
    return f"{mark}{text}" if len(text) == 1 else f"{mark}({text})"


def _math(s: str) -> str:
    """LaTeX math (the inside of $...$) in Unicode."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", s[i:])
            assert m is not None
            name, i = m.group(1), i + len(m.group(0))
            while name.isalpha() and i < len(s) and s[i] == " ":  # as TeX: spaces end a name
                i += 1
            if name == "sqrt":
                arg, i = _group(s, i)
                out.append(f"√({_math(arg)})" if len(_math(arg)) > 1 else f"√{_math(arg)}")
            elif name in _ACCENTS:
                arg, i = _group(s, i)
                out.append(_math(arg) + _ACCENTS[name])
            elif name in ("mathrm", "mathcal", "mathbf", "text", "operatorname", "rm"):
                arg, i = _group(s, i)
                out.append(_math(arg))
            elif name in ("tfrac", "frac", "dfrac"):
                num, i = _group(s, i)
                den, i = _group(s, i)
                half = {("1", "2"): "½", ("1", "4"): "¼", ("1", "8"): "⅛"}.get((num, den))
                out.append(half or f"({_math(num)})/({_math(den)})")
            elif name in ("left", "right", "big", "Big", "bigl", "bigr"):
                continue
            else:
                out.append(_SYMBOLS.get(name, name))
        elif c in "_^":
            arg, i = _group(s, i + 1)
            table = _SUB if c == "_" else _SUP
            out.append(_script(_math(arg), table, c))
        elif c in "{}":
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def plain(text: str) -> str:
    """``text`` with its $math$ in Unicode and reST literals (double or single backquotes) as
    plain words; lines joined."""
    text = re.sub(r"\$([^$]+)\$", lambda m: _math(m.group(1)), text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return " ".join(text.split())


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring, `plain`."""
    if not doc:
        return ""
    return plain(inspect.cleandoc(doc).split("\n\n")[0])


def _classes_in(tp: Any) -> Iterator[type]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        yield from _classes_in(typing.get_args(tp)[0])
    elif origin in (typing.Union, types.UnionType, dict, tuple, list):
        for arg in typing.get_args(tp):
            yield from _classes_in(arg)
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        yield tp


def config_classes(roots: Iterable[type]) -> list[type]:
    """The dataclasses reachable from ``roots`` through their fields' types (unions, dicts,
    tuples and `typing.Annotated` included), roots first."""
    seen: list[type] = []
    todo = [c for r in roots for c in _classes_in(r)]
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            todo.extend(_classes_in(hints.get(f.name)))
    return seen


@contextlib.contextmanager
def plain_docstrings(classes: Iterable[type]) -> Iterator[None]:
    """While inside: each class's docstring is its `summary` (what a generated CLI shows as a
    group's description); their own docstrings come back on leaving."""
    saved = {cls: cls.__doc__ for cls in classes}
    try:
        for cls, doc in saved.items():
            cls.__doc__ = summary(doc)
        yield
    finally:
        for cls, doc in saved.items():
            cls.__doc__ = doc
