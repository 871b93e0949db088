"""Paths and URIs, spelled once: a location is either a local path or a ``scheme://`` URI.

Spark reads Hadoop's ``s3a://``; pyarrow and deltalake read the same bucket as ``s3://``. Local
paths are made absolute (links resolved) so that a relative root means the same folder to the
driver, the executors and a later job started elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["absolute", "arrow_uri", "filesystem", "is_uri", "spark_uri"]


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` (s3a, gs, abfss, file, ...); False for a local path."""
    return "://" in location


def absolute(location: str) -> str:
    """A URI as given; a local path expanded (``~``) and resolved to an absolute path."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def spark_uri(location: str) -> str:
    """What Spark should read or write: a URI as given, a local path as ``file://`` + path."""
    return location if is_uri(location) else "file://" + location


def arrow_uri(location: str) -> str:
    """What pyarrow and deltalake should open: Hadoop's ``s3a://`` spelled ``s3://``."""
    return re.sub(r"^s3a://", "s3://", location)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path (taken as given) or URI."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), location
    return pafs.FileSystem.from_uri(arrow_uri(location))
