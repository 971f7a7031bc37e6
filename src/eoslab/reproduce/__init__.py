"""``eoslab reproduce NAME``: the experiments of the papers, each writing figures and a
predicted-vs-measured table (``docs/theory.md``, "Reproductions and their checks").

One module per paper (`arora2022`, `arora2022_vgg`, `cohen2025`, `damian2023`, `cohen2022`,
`andreyev2024`) and `transformer` (their claims on a transformer); `REPRODUCTIONS` holds them
all: ``get(name)(out, quick)`` runs one.
"""

from .registry import REPRODUCTIONS as REPRODUCTIONS
from .registry import Reproduction as Reproduction
from .registry import get as get
from .registry import register as register

__all__ = ["REPRODUCTIONS", "Reproduction", "get", "register"]
