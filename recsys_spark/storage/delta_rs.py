"""The delta-rs engine: Spark writes the Parquet, the ``deltalake`` package commits it.

For clusters and laptops without the Delta jars (Maven is out of reach here, so this is also what
CI and the demo run). Spark writes Parquet in parallel into a fresh folder inside the table,
named after the write; the driver then commits exactly those files as one Delta transaction.
Their add actions carry size, partition values and min/max/null statistics read from the Parquet
footers, so any Delta reader (delta-spark, Trino, the no-JVM lookups) can skip files. Reads take
the snapshot's file list from ``deltalake`` and scan it with Spark's native Parquet reader.

A write is visible only once its commit lands, so a job killed mid-write leaves the previous
version intact; the orphaned folder is invisible and ``vacuum`` removes it. A conditional commit
(``plan.expected`` is a version) is opened on the handle loaded at that version with no commit
retries, so deltalake tries exactly the next version and fails if another commit took it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from recsys_spark.errors import ConcurrentWriteError, StorageError
from recsys_spark.storage.delta_log import (
    ANY_VERSION,
    EngineName,
    TableHandle,
    WritePlan,
    WriteResult,
    moved,
    spark_schema,
    version_of,
)
from recsys_spark.uris import filesystem, is_uri, spark_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# String statistics longer than this are left out: a truncated max would be wrong for pruning.
_MAX_STRING_STAT = 32
#: A partitioned read with at most this many distinct partition values is a union of one scan per
#: value, the values as literals; above it, one scan joined to each file's values by its path.
#: The join's per-row path decoding made reading the demo's user_candidates (15M rows, three
#: strategies) take 67-98 s where the union took 3-5 s; a union of hundreds of scans (a table
#: partitioned by date) would cost more to plan than the join costs to run.
_UNION_LIMIT = 64


class DeltaRsEngine:
    """Reads and writes through deltalake's log, with Spark for the data files.

    Args:
        spark: the session whose executors write and scan the Parquet files.
        max_commit_retries: how often an unconditional commit retries past concurrent commits.
    """

    name: EngineName = "delta-rs"

    def __init__(self, spark: SparkSession, max_commit_retries: int) -> None:
        self.spark = spark
        self.max_commit_retries = max_commit_retries

    def read(self, t: TableHandle, version: int | None, where: str | None) -> DataFrame:
        dt = t.delta(version)
        df = self._scan(dt, where)
        return df.where(where) if where else df

    def _scan(self, dt: DeltaTable, where: str | None) -> DataFrame:
        """The snapshot's files, pruned by ``where`` on partition values and statistics."""
        schema = spark_schema(dt)
        parts = dt.metadata().partition_columns
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        if where:
            keep = set(dt.file_uris(file_pruning_predicate=where))
            actions = [a for a in actions if _join_uri(dt.table_uri, a["path"]) in keep]
        if not actions:
            return self.spark.createDataFrame([], schema)
        data_schema = StructType([f for f in schema.fields if f.name not in parts])
        base = _local_or_uri(dt.table_uri)
        if not parts:
            return self.spark.read.schema(data_schema).parquet(
                *[spark_uri(_join_uri(base, a["path"])) for a in actions]
            )
        # Partition values live in the log, not in the files. With few distinct values (strategies,
        # methods), one scan per value with the values as literals, unioned.
        groups: dict[tuple[str | None, ...], list[str]] = {}
        for a in actions:
            values = tuple(_partition_string(a.get(f"partition.{p}")) for p in parts)
            groups.setdefault(values, []).append(spark_uri(_join_uri(base, a["path"])))
        if len(groups) <= _UNION_LIMIT:
            scans = [
                self.spark.read.schema(data_schema)
                .parquet(*files)
                .select(
                    *data_schema.fieldNames(),
                    *[F.lit(v).cast(schema[p].dataType).alias(p) for p, v in zip(parts, values, strict=True)],
                )
                for values, files in groups.items()
            ]
            return functools.reduce(lambda a, b: a.union(b), scans).select(*schema.fieldNames())
        # Many values (a date partition): one scan of all files, then each row gets its file's
        # values by a broadcast join on the path relative to the table. (_metadata.file_path is
        # URL-encoded; '+' is protected because url_decode reads it as a space.)
        name = base.rstrip("/").rsplit("/", 1)[-1]
        mapping = self.spark.createDataFrame(
            [(unquote(a["path"]), *[_partition_string(a.get(f"partition.{p}")) for p in parts]) for a in actions],
            StructType(
                [
                    StructField("__rel", StringType(), False),
                    *[StructField(f"__p_{p}", StringType(), True) for p in parts],
                ]
            ),
        )
        files = [spark_uri(_join_uri(base, a["path"])) for a in actions]
        decoded = F.url_decode(F.regexp_replace(F.col("_metadata.file_path"), r"\+", "%2B"))
        df = (
            self.spark.read.schema(data_schema)
            .parquet(*files)
            .withColumn("__rel", F.substring_index(decoded, f"/{name}/", -1))
            .join(F.broadcast(mapping), "__rel")
        )
        for p in parts:
            df = df.withColumn(p, F.col(f"__p_{p}").cast(schema[p].dataType))
        return df.select(*schema.fieldNames())

    def write(self, df: DataFrame, t: TableHandle, plan: WritePlan) -> WriteResult:
        mode, partition_by, replace, expected = plan.mode, plan.partition_by, plan.replace, plan.expected
        write_id = plan.write_id
        folder = f"{t.location}/{write_id}"
        if partition_by and not replace:
            # One task per partition value: otherwise every task writes a small file into every
            # partition folder (tasks x partitions files). A single replaced partition keeps the
            # caller's layout (e.g. range-partitioned by a lookup key).
            df = df.repartition(*partition_by)
        writer = df.write.mode("errorifexists")
        if plan.row_group_bytes:
            writer = writer.option("parquet.block.size", str(plan.row_group_bytes))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(spark_uri(folder))
        try:
            actions = _add_actions(folder, write_id, partition_by, plan.arrow)
            if replace:
                wanted = {k: str(v) for k, v in replace.items()}
                stray = [a.path for a in actions if any(a.partition_values.get(k) != v for k, v in wanted.items())]
                if stray:
                    raise StorageError(
                        f"overwriting partitions {wanted} of table {t.name!r}: the data also has "
                        f"rows of other partitions (e.g. {stray[0]}); nothing was written"
                    )
            conditional = expected != ANY_VERSION
            # A conditional commit must land at exactly the version after the one it was computed
            # from: no retries on top of a winner.
            props = CommitProperties(
                custom_metadata={"userMetadata": json.dumps(plan.metadata)},
                max_commit_retries=0 if conditional else self.max_commit_retries,
            )
            # the table as it was read (a conditional commit) or as it is now; None: create it
            if conditional:
                base = t.delta(int(expected)) if expected is not None else None
            else:
                base = t.delta() if t.exists() else None
            if base is not None:
                base.create_write_transaction(
                    actions,
                    mode=mode,
                    schema=plan.schema,
                    partition_by=partition_by or None,
                    partition_filters=[(k, "=", str(v)) for k, v in replace.items()] if replace else None,
                    commit_properties=props,
                )
            else:
                create_table_with_add_actions(
                    t.rs_uri,
                    plan.schema,
                    actions,
                    mode="error",
                    partition_by=partition_by or None,
                    commit_properties=props,
                )
        except CommitFailedError as exc:
            _remove_tree(folder)
            if expected != ANY_VERSION:
                raise moved(t, expected, str(exc)) from None
            raise ConcurrentWriteError(
                f"another writer committed to table {t.name!r} first; this {mode} was rolled back "
                f"and can be re-run: {exc}"
            ) from None
        except DeltaError as exc:
            _remove_tree(folder)
            if "already exists" in str(exc).lower():
                if expected != ANY_VERSION:
                    raise moved(t, expected, str(exc)) from None
                raise ConcurrentWriteError(
                    f"table {t.name!r} was created by another writer at the same time; re-run: {exc}"
                ) from None
            raise StorageError(f"commit to table {t.name!r} failed, nothing was written: {exc}") from None
        except BaseException:
            # Uncommitted files are invisible anyway; removing them just saves a vacuum.
            _remove_tree(folder)
            raise
        # a conditional commit landed exactly after the version it expected
        version = version_of(t, write_id) if expected == ANY_VERSION else (0 if expected is None else int(expected) + 1)
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
        return WriteResult(t.name, version, rows, len(actions), sum(a.size for a in actions), "delta-rs")


def _stat_value(value: Any, arrow_type: pa.DataType, is_max: bool) -> Any:
    """A Parquet footer statistic as Delta's JSON stats expect it, or None to leave it out."""
    if value is None:
        return None
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type):
        return value
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if len(value) <= _MAX_STRING_STAT else None
    if pa.types.is_date(arrow_type):
        return value.isoformat() if isinstance(value, date) else None
    if pa.types.is_timestamp(arrow_type) and isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        # Delta stores millisecond precision; round the max up so it still bounds every row.
        if is_max and value.microsecond % 1000:
            value += timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return None  # floats (NaN ordering), decimals, binary, nested: no min/max, no pruning


def file_stats(md: pq.FileMetaData, schema: pa.Schema) -> dict[str, Any]:
    """Delta ``stats`` (numRecords, minValues, maxValues, nullCount) from one Parquet footer."""
    types = {f.name: f.type for f in schema}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    unknown_minmax: set[str] = set()
    unknown_nulls: set[str] = set()
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema
            if name not in types:  # nested leaf (list element, struct field)
                continue
            st = col.statistics
            if st is None or not st.has_null_count:
                unknown_nulls.add(name)
            else:
                nulls[name] = nulls.get(name, 0) + st.null_count
            if st is None or not st.has_min_max:
                # A row group of only nulls has no min/max and does not widen the range.
                if st is None or st.null_count != rg.num_rows:
                    unknown_minmax.add(name)
                continue
            lo = _stat_value(st.min, types[name], is_max=False)
            hi = _stat_value(st.max, types[name], is_max=True)
            if lo is None or hi is None:
                unknown_minmax.add(name)
                continue
            mins[name] = lo if name not in mins else min(mins[name], lo)
            maxs[name] = hi if name not in maxs else max(maxs[name], hi)
    for name in unknown_minmax:
        mins.pop(name, None)
        maxs.pop(name, None)
    for name in unknown_nulls:
        nulls.pop(name, None)
    return {"numRecords": md.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _partition_values(relative: str, partition_by: Sequence[str]) -> dict[str, str | None]:
    """Partition values from a Hive-style relative path written by Spark (col=value/...)."""
    if not partition_by:
        return {}
    values: dict[str, str | None] = {}
    for part in relative.split("/")[:-1]:
        key, sep, raw = part.partition("=")
        if sep and key in partition_by:
            value = unquote(raw)  # Spark escapes special characters as %XX in directory names
            values[key] = None if value == _HIVE_NULL else value
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise StorageError(f"cannot read partition values {missing} from written file {relative!r}")
    return values


def _partition_string(value: Any) -> str | None:
    """A partition value from deltalake's add actions back to the string Delta stores."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _local_or_uri(table_uri: str) -> str:
    return table_uri[len("file://") :] if table_uri.startswith("file://") else table_uri


def _join_uri(table_uri: str, relative: str) -> str:
    relative = unquote(relative)
    return (
        relative
        if is_uri(relative) or relative.startswith("/")
        else (f"{_local_or_uri(table_uri).rstrip('/')}/{relative}")
    )


def _add_actions(folder: str, write_id: str, partition_by: list[str], arrow: pa.Schema) -> list[AddAction]:
    """Add actions for the Parquet files Spark wrote into ``folder``, stats from their footers."""
    fs, base = filesystem(folder)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    data_files = []
    for info in infos:
        rel = info.path[len(base) :].lstrip("/")
        leaf = rel.rsplit("/", 1)[-1]
        if leaf.startswith(("_", ".")):
            fs.delete_file(info.path)  # _SUCCESS, .crc checksums: not table data
            continue
        data_files.append((info, rel))
    data_schema = pa.schema([f for f in arrow if f.name not in partition_by])

    def action(item: tuple[pafs.FileInfo, str]) -> AddAction:
        info, rel = item
        with fs.open_input_file(info.path) as fh:
            md = pq.read_metadata(fh)
        return AddAction(
            path=f"{write_id}/{rel}",  # deltalake percent-encodes it for the log itself
            size=info.size,
            partition_values=_partition_values(rel, partition_by),
            modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else int(time.time() * 1000),
            data_change=True,
            stats=json.dumps(file_stats(md, data_schema)),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:  # footer reads are I/O bound and release the GIL
        return list(pool.map(action, data_files))


def _remove_tree(folder: str) -> None:
    try:
        fs, base = filesystem(folder)
        fs.delete_dir(base)
    except (FileNotFoundError, OSError):
        pass
