"""Errors of the data layer (candidates to move into `eoslab.errors`)."""

from __future__ import annotations

from ..errors import EoslabError


class CorruptFileError(EoslabError, ValueError):
    """A data file or a download is truncated, malformed or fails its checksum.

    Delete the file (downloads remove a corrupt file themselves) and fetch it again.
    """


class DatasetNotFoundError(EoslabError, FileNotFoundError):
    """A dataset read from disk is not under any searched directory.

    Put it under ``--data-dir`` / ``$EOSLAB_DATA`` or run ``eoslab data fetch NAME``.
    """
