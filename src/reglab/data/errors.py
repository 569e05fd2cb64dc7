"""Errors of the data layer; each message names the file or mirror and what to do."""

from __future__ import annotations

from reglab.core.errors import ReglabError


class DataError(ReglabError):
    """Raw or processed data is missing, malformed or does not match the config."""


class IdxFormatError(DataError):
    """An IDX file is malformed: the message names the file and the problem."""


class DownloadError(DataError):
    """No mirror delivered a verified copy of a file; the message lists each mirror and why."""
