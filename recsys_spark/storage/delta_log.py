"""What a table's Delta log says, read with ``deltalake`` alone: the part both engines share.

Versions, history, schemas, statistics-based summaries and vacuum need no Spark, so the CLI's
``tables``/``history``/``vacuum`` commands and the no-JVM readers use the same code as the
jobs. Whichever engine wrote a commit, it is read back here, which is also how a delta-spark
write finds the version it got and whether Delta skipped it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import DeltaError, TableNotFoundError
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructField, StructType

from recsys_spark.config.schema import StorageConfig
from recsys_spark.errors import ConcurrentWriteError, StorageError
from recsys_spark.tables import available_versions, table_location
from recsys_spark.uris import arrow_uri, filesystem, spark_uri

log = logging.getLogger(__name__)

WriteMode = Literal["overwrite", "append"]
EngineName = Literal["delta-spark", "delta-rs"]
#: ``write(expected_version=ANY_VERSION)``: commit on top of whatever version is latest.
ANY_VERSION: Final = "any"
ExpectedVersion = int | None | Literal["any"]


@dataclass(frozen=True)
class CommitInfo:
    """Who wrote a version: recorded in the commit and shown by ``history``."""

    job: str
    """Job name (ingest, train-als, ...)."""
    run_id: str
    """Identifier of the pipeline run that made the commit."""
    config_hash: str
    """Hash of the effective configuration of that run."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping with the commit (input versions, counts)."""

    def as_metadata(self, write_id: str) -> dict[str, Any]:
        return {
            "job": self.job,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "write_id": write_id,
            **self.extra,
        }


@dataclass(frozen=True)
class WriteResult:
    """What a write committed."""

    table: str
    version: int
    rows: int
    files: int
    bytes: int
    engine: EngineName


@dataclass(frozen=True)
class WritePlan:
    """One write as ``TableStore.write`` checked it, handed to an engine to carry out."""

    mode: WriteMode
    """overwrite or append."""
    partition_by: list[str]
    """Partition columns of the table (empty: unpartitioned)."""
    arrow: pa.Schema
    """The data's schema as Arrow, every column nullable."""
    schema: DeltaSchema
    """The same schema as Delta records it in the log."""
    write_id: str
    """Unique name of this write: its commit metadata and, for delta-rs, its data folder."""
    metadata: dict[str, Any]
    """The commit's user metadata (job, run id, config hash, write id, extras)."""
    replace: Mapping[str, str] | None
    """Partition values an overwrite replaces, leaving the other partitions as they are."""
    row_group_bytes: int | None
    """Parquet row-group size, or None for the writer's default."""
    expected: ExpectedVersion
    """Version the table must still be at for the commit to land (see ``TableStore.write``)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One committed version of a table."""

    version: int
    timestamp: datetime
    operation: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class TableSummary:
    """Latest state of a table, read from its Delta log alone (no Spark needed)."""

    name: str
    location: str
    version: int | None
    rows: int
    files: int
    bytes: int
    last_job: str | None
    last_run_id: str | None


class TableHandle:
    """One table's name and location, and its Delta log opened with deltalake (either engine)."""

    def __init__(self, name: str, location: str) -> None:
        self.name = name
        self.location = location
        self.spark_uri = spark_uri(location)
        self.rs_uri = arrow_uri(location)

    def delta(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.rs_uri, version=version)
        except TableNotFoundError:
            raise StorageError(f"table {self.name!r} does not exist at {self.location}") from None
        except DeltaError as exc:
            if version is not None:
                raise StorageError(
                    f"table {self.name!r} has no version {version}: {available_versions(self.rs_uri)}"
                ) from None
            raise StorageError(f"cannot open table {self.name!r} at {self.location}: {exc}") from None

    def exists(self) -> bool:
        return DeltaTable.is_deltatable(self.rs_uri)


def describe_table(root: str, table: str) -> TableSummary:
    """Version, row count (from file statistics) and last writer of a table, without Spark."""
    t = TableHandle(table, table_location(root, table))
    if not t.exists():
        return TableSummary(table, t.location, None, 0, 0, 0, None, None)
    last = history(t, 1)[0]
    # the files of the version whose writer is reported, even if another commit lands meanwhile
    adds = pa.table(t.delta(last.version).get_add_actions(flatten=True))
    rows = int(sum(v or 0 for v in adds.column("num_records").to_pylist())) if adds.num_rows else 0
    size = int(sum(adds.column("size_bytes").to_pylist())) if adds.num_rows else 0
    return TableSummary(
        table,
        t.location,
        last.version,
        rows,
        adds.num_rows,
        size,
        last.metadata.get("job"),
        last.metadata.get("run_id"),
    )


def table_history(root: str, table: str, limit: int | None = None) -> list[HistoryEntry]:
    """Committed versions of a table, newest first, with each commit's job metadata (no Spark)."""
    return history(TableHandle(table, table_location(root, table)), limit)


def vacuum_table(
    cfg: StorageConfig, table: str, retention_hours: float | None = None, dry_run: bool = False
) -> list[str] | None:
    """Delete files that no version within the retention window needs, including orphans of
    killed writes; None when the table does not exist. Files of a write still in progress are
    younger than any sane retention, so they are kept."""
    t = TableHandle(table, table_location(cfg.root, table))
    if not t.exists():
        return None
    hours = cfg.vacuum_retention_hours if retention_hours is None else retention_hours
    fs, base = filesystem(t.location)
    # deltalake keeps listing tombstones whose files an earlier vacuum already deleted: report
    # only files that exist.
    candidates = t.delta().vacuum(retention_hours=int(hours), dry_run=True, enforce_retention_duration=False, full=True)
    present = [f for f in candidates if fs.get_file_info(_absolute(base, f)).type == pafs.FileType.File]
    if present and not dry_run:
        t.delta().vacuum(retention_hours=int(hours), dry_run=False, enforce_retention_duration=False, full=True)
        _remove_empty_write_folders(fs, base)
    log.info(
        "vacuum %s: %s %d files older than %sh", table, "would remove" if dry_run else "removed", len(present), hours
    )
    return present


def _absolute(base: str, path: str) -> str:
    path = unquote(path)
    return path if path.startswith("/") else f"{base.rstrip('/')}/{path}"


def _remove_empty_write_folders(fs: pafs.FileSystem, base: str) -> None:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    dirs = sorted((i.path for i in infos if i.type == pafs.FileType.Directory), key=len, reverse=True)
    files = [i.path for i in infos if i.type == pafs.FileType.File]
    for d in dirs:
        if "/_delta_log" in d[len(base) :]:
            continue
        if not any(f.startswith(d + "/") for f in files):
            fs.delete_dir(d)


def history(t: TableHandle, limit: int | None) -> list[HistoryEntry]:
    entries = []
    for raw in _commit_infos(t.delta(), limit):
        meta: dict[str, Any] = {}
        user = raw.get("userMetadata")
        if isinstance(user, str):
            try:
                meta = json.loads(user)
            except json.JSONDecodeError:
                meta = {"userMetadata": user}
        ts = datetime.fromtimestamp(raw.get("timestamp", 0) / 1000, tz=timezone.utc)
        entries.append(HistoryEntry(int(raw["version"]), ts, str(raw.get("operation", "")), meta))
    return entries


def _commit_infos(dt: DeltaTable, limit: int | None, attempts: int = 20) -> list[dict[str, Any]]:
    """``dt.history(limit)`` with version numbers that are right under concurrent commits.

    deltalake numbers the commit infos downwards from the handle's loaded version, but lists them
    from the newest commit in the log: a commit landing after the load shifts every number down
    (deltalake 1.6.6; cf. delta-rs#4488). Versions only grow, so if the handle is still the latest
    once the list is in hand, no commit landed in between and the numbers are right.
    """
    for _ in range(attempts):
        loaded = dt.version()
        infos = dt.history(limit)
        dt.update_incremental()
        if dt.version() == loaded:
            return infos
    raise StorageError(
        f"the history of table at {dt.table_uri} kept moving: {attempts} commits landed while it was read; retry"
    )


def arrow_schema(schema: StructType) -> pa.Schema:
    # Delta columns are nullable: Spark reads Parquet as nullable anyway, and a NOT NULL flag that
    # differs between two writes of the same data must not make an append fail.
    nullable = StructType([StructField(f.name, f.dataType, True) for f in schema.fields])
    return to_arrow_schema(nullable, timezone="UTC")


def spark_schema(dt: DeltaTable) -> StructType:
    arrow = pa.schema(dt.schema().to_arrow())
    return from_arrow_schema(arrow, prefer_timestamp_ntz=True)


def _strip_nullability(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_nullability(v)
            for k, v in node.items()
            if k not in ("nullable", "containsNull", "valueContainsNull", "metadata")
        }
    if isinstance(node, list):
        return [_strip_nullability(v) for v in node]
    return node


def schema_diff(existing: DeltaSchema, new: DeltaSchema) -> list[str]:
    """Human-readable differences between two Delta schemas (nullability ignored)."""
    old_f = {f["name"]: _strip_nullability(f["type"]) for f in json.loads(existing.to_json())["fields"]}
    new_f = {f["name"]: _strip_nullability(f["type"]) for f in json.loads(new.to_json())["fields"]}
    problems = [f"missing column {n!r} ({json.dumps(t)})" for n, t in old_f.items() if n not in new_f]
    problems += [f"unexpected column {n!r} ({json.dumps(t)})" for n, t in new_f.items() if n not in old_f]
    problems += [
        f"column {n!r} is {json.dumps(new_f[n])}, table has {json.dumps(t)}"
        for n, t in old_f.items()
        if n in new_f and new_f[n] != t
    ]
    if not problems and list(old_f) != list(new_f):
        problems.append(f"column order {list(new_f)} differs from the table's {list(old_f)}")
    return problems


def version_of(t: TableHandle, write_id: str) -> int:
    """The version our commit got: concurrent writers may have committed right after it."""
    for entry in history(t, limit=50):
        if entry.metadata.get("write_id") == write_id:
            return entry.version
    raise StorageError(f"commit {write_id} to table {t.name!r} is not in its history")


def _describe_expected(expected: ExpectedVersion) -> str:
    return "not to exist yet" if expected is None else f"to be at version {expected}"


def moved(t: TableHandle, expected: ExpectedVersion, why: str) -> ConcurrentWriteError:
    now = t.delta().version() if t.exists() else None
    where = "does not exist" if now is None else f"is at version {now}"
    return ConcurrentWriteError(
        f"table {t.name!r} moved while this run worked: it expected the table {_describe_expected(expected)}, "
        f"and it {where}; another writer committed first, so nothing was committed ({why})"
    )


def check_expected(t: TableHandle, expected: ExpectedVersion) -> None:
    if expected == ANY_VERSION:
        return
    now = t.delta().version() if t.exists() else None
    if now != expected:
        raise moved(t, expected, "found before writing")
