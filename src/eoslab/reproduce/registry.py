"""The registry of the papers' reproductions: ``eoslab reproduce NAME``.

`REPRODUCTIONS` maps each name to its `Reproduction`, in the order ``eoslab reproduce`` lists
them; one module per paper defines its entries (``REPRODUCTIONS``, a tuple) and never imports
this one. `register` adds one, `get` looks one up.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import (
    andreyev2024,
    arora2022,
    arora2022_vgg,
    cohen2022,
    cohen2025,
    damian2023,
    proxies,
    torch_eos,
    transformer,
)
from ._common import Reproduction

__all__ = ["REPRODUCTIONS", "Reproduction", "get", "register"]

REPRODUCTIONS: dict[str, Reproduction] = {}


def register(entry: Reproduction) -> Reproduction:
    """Add a reproduction (its name must be new); returns it."""
    if not isinstance(entry, Reproduction):
        raise ConfigError("reproduction", entry, "an eoslab.reproduce.Reproduction")
    if entry.name in REPRODUCTIONS:
        raise ConfigError("reproduction name", entry.name, "a name not registered yet")
    REPRODUCTIONS[entry.name] = entry
    return entry


def get(name: str) -> Reproduction:
    """The reproduction called ``name``."""
    if name not in REPRODUCTIONS:
        raise ConfigError("name", name, "one of " + ", ".join(REPRODUCTIONS))
    return REPRODUCTIONS[name]


_PAPERS = (
    arora2022,
    arora2022_vgg,
    cohen2025,
    damian2023,
    cohen2022,
    transformer,
    andreyev2024,
    proxies,
    torch_eos,
)
for _entry in (e for paper in _PAPERS for e in paper.REPRODUCTIONS):
    register(_entry)
del _entry
