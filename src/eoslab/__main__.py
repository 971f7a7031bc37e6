"""``python -m eoslab``: the eoslab command line."""

from .cli import _entry

if __name__ == "__main__":
    _entry()
