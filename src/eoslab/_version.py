"""The installed version of eoslab (``eoslab.__version__``), readable from any layer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eoslab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
