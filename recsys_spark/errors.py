"""Errors a user can act on.

Every error raised on purpose by recsys-spark derives from :class:`RecsysError`;
the CLI prints its message (no stack trace) and exits non-zero. Anything else
escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class: the message alone must tell the user what to fix."""

    exit_code = 2


class ConfigError(RecsysError):
    """A config file, key or override is wrong."""


class InputError(RecsysError):
    """An input file or directory is missing, unreadable or not what it claims."""


class StorageError(RecsysError):
    """A table is missing, unreadable, or a commit failed."""


class SchemaMismatchError(StorageError):
    """An append or overwrite does not match the table's schema."""


class ConcurrentWriteError(StorageError):
    """Another writer committed to the table first; the write was rolled back."""


class RejectThresholdError(RecsysError):
    """Too many input rows were rejected; nothing was committed."""


class GateRefusedError(RecsysError):
    """New lists failed the quality gate: the publication in force stays, readers keep it."""
