"""The delta-spark engine: native ``format("delta")``, for clusters with the Delta jars.

Delta's own writer commits; the version a write got, and whether Delta skipped it, are read back
from the log with deltalake (``delta_log``), the same way as for delta-rs writes.

Conditional commits use Delta's idempotent-write options, with the table's own app id and the
version the commit will create as ``txnVersion``. A second writer that read version V either
meets the first one's transaction record (Delta skips its write, which we detect: its write id is
not in the log) or commits at the same moment and gets Delta's ``ConcurrentTransactionException``.
This holds against other conditional writers, which every writer of the ingest tables is.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pyarrow as pa

from recsys_spark.storage.delta_log import (
    ANY_VERSION,
    EngineName,
    TableHandle,
    WritePlan,
    WriteResult,
    history,
    moved,
    version_of,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class DeltaSparkEngine:
    """Reads and writes with Spark's Delta data source.

    Args:
        spark: a session with the Delta jars and ``DeltaSparkSessionExtension`` loaded.
    """

    name: EngineName = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def read(self, t: TableHandle, version: int | None, where: str | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(t.spark_uri)
        return df.where(where) if where else df

    def write(self, df: DataFrame, t: TableHandle, plan: WritePlan) -> WriteResult:
        mode, partition_by, replace, expected = plan.mode, plan.partition_by, plan.replace, plan.expected
        if partition_by and not replace:
            df = df.repartition(*partition_by)
        writer = df.write.format("delta").mode(mode).option("userMetadata", json.dumps(plan.metadata))
        if expected is None:
            writer = writer.mode("errorifexists")  # version 0 is created by exactly one writer
        elif expected != ANY_VERSION:
            # Delta skips a write whose (app id, txnVersion) is not above the table's record, and
            # fails one committing at the same moment: see the module docstring.
            writer = writer.option("txnAppId", _txn_app_id(t)).option("txnVersion", str(int(expected) + 1))
        if plan.row_group_bytes:
            writer = writer.option("parquet.block.size", str(plan.row_group_bytes))
        if replace:
            # delta-spark itself rejects rows outside the replaced partitions
            writer = writer.option(
                "replaceWhere",
                " AND ".join(f"`{k}` = '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in replace.items()),
            )
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        try:
            writer.save(t.spark_uri)
        except Exception as exc:
            text = str(exc)
            if expected == ANY_VERSION or not any(
                m in text
                for m in (
                    "ConcurrentTransaction",
                    "DELTA_CONCURRENT",
                    "already exists",
                    "PATH_ALREADY_EXISTS",
                    "TABLE_ALREADY_EXISTS",
                )
            ):
                raise
            raise moved(t, expected, text.splitlines()[0]) from None
        if expected != ANY_VERSION and not any(
            e.metadata.get("write_id") == plan.write_id for e in history(t, limit=50)
        ):
            # Delta skipped the write: another conditional writer recorded this txnVersion first.
            raise moved(t, expected, "Delta skipped the write: another writer committed that version")
        version = version_of(t, plan.write_id)
        stats = pa.table(t.delta(version).get_add_actions(flatten=True))
        rows = int(sum(v or 0 for v in stats.column("num_records").to_pylist()))
        size = int(sum(stats.column("size_bytes").to_pylist()))
        return WriteResult(t.name, version, rows, stats.num_rows, size, "delta-spark")


def _txn_app_id(t: TableHandle) -> str:
    """The Delta app id of conditional writes to a table (its transaction record lives in its log)."""
    return f"recsys-spark/conditional/{t.name}"
