"""The Delta storage layer, delta-rs engine (and delta-spark when its jars are present)."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from recsys_spark.errors import SchemaMismatchError, StorageError
from recsys_spark.session import delta_jars_loaded
from recsys_spark.storage.store import CommitInfo, TableStore, describe_table, file_stats, table_location

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import Config

COMMIT = CommitInfo("test", "run-1", "cfg123")
SCHEMA = StructType(
    [
        StructField("id", LongType()),
        StructField("name", StringType()),
        StructField("score", DoubleType()),
        StructField("day", DateType()),
        StructField("at", TimestampType()),
        StructField("vec", ArrayType(FloatType())),
    ]
)


def _rows(n: int, offset: int = 0) -> list[tuple]:
    return [
        (
            i,
            f"n{i % 5}" if i % 7 else None,
            i / 3,
            date(2026, 1, 1 + i % 3),
            datetime(2026, 1, 1, 12, 0, i % 60, 123456, tzinfo=timezone.utc),
            [float(i), 0.5],
        )
        for i in range(offset, offset + n)
    ]


def _df(spark: SparkSession, n: int = 50, offset: int = 0) -> DataFrame:
    return spark.createDataFrame(_rows(n, offset), SCHEMA)


def _arrow_rows(location: str) -> list[dict]:
    """Read a table with deltalake + pyarrow only (the no-JVM path lookups use)."""
    dt = DeltaTable(location)
    fs = pafs.SubTreeFileSystem(location, pafs.LocalFileSystem())
    return dt.to_pyarrow_dataset(filesystem=fs).to_table().to_pylist()


def test_round_trip(spark: SparkSession, store: TableStore) -> None:
    df = _df(spark)
    result = store.write(df, "things", "overwrite", COMMIT)
    assert (result.version, result.rows, result.engine) == (0, 50, "delta-rs")
    assert_df_equality(store.read("things"), df, ignore_row_order=True, ignore_nullable=True)
    assert store.schema("things").fieldNames() == SCHEMA.fieldNames()


def test_time_travel_after_overwrite(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 10), "things", "overwrite", COMMIT)
    store.write(_df(spark, 5, offset=100), "things", "overwrite", COMMIT)
    store.write(_df(spark, 3, offset=200), "things", "append", COMMIT)
    assert store.version("things") == 2
    assert sorted(r.id for r in store.read("things", version=0).collect()) == list(range(10))
    assert sorted(r.id for r in store.read("things", version=1).collect()) == list(range(100, 105))
    assert store.read("things").count() == 8
    with pytest.raises(StorageError, match="things"):
        store.read("things", version=9)


@pytest.fixture(params=["union", "join"])
def partitioned_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the delta-rs engine attaches partition values: a union of one scan per value, and
    (above delta_rs._UNION_LIMIT values) a join of every row to its file's values."""
    from recsys_spark.storage import delta_rs

    monkeypatch.setattr(delta_rs, "_UNION_LIMIT", 64 if request.param == "union" else 0)
    return str(request.param)


@pytest.mark.usefixtures("partitioned_reads")
def test_partitioned_round_trip_with_nulls_and_pruning(spark: SparkSession, store: TableStore) -> None:
    df = _df(spark, 30).withColumn("day", F.when(F.col("id") == 0, None).otherwise(F.col("day")))
    result = store.write(df, "parts", "overwrite", COMMIT, partition_by=["day"])
    assert result.files == 4  # three dates and the null partition: one file each
    assert_df_equality(store.read("parts"), df, ignore_row_order=True, ignore_nullable=True)
    only = store.read("parts", where="day = DATE'2026-01-02'")
    assert {r.day for r in only.collect()} == {date(2026, 1, 2)}
    assert store.read("parts", where="day IS NULL").count() == 1
    # Partition columns are not in the Parquet files, only in the log.
    dt = DeltaTable(store.location("parts"))
    assert dt.metadata().partition_columns == ["day"]
    some_file = next(Path(store.location("parts")).rglob("*.parquet"))
    assert "day" not in pads.dataset(str(some_file)).schema.names


def test_file_pruning_uses_min_max_stats(spark: SparkSession, store: TableStore) -> None:
    df = spark.range(0, 1000, numPartitions=4).select(F.col("id"), (F.col("id") * 2).alias("v"))
    store.write(df.repartitionByRange(4, "id").sortWithinPartitions("id"), "sorted", "overwrite", COMMIT)
    dt = DeltaTable(store.location("sorted"))
    assert len(dt.file_uris()) == 4
    assert len(dt.file_uris(file_pruning_predicate="id = 10")) == 1
    assert [r.v for r in store.read("sorted", where="id = 10").collect()] == [20]


def test_commit_stats_match_the_files(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 20).coalesce(1), "things", "overwrite", COMMIT)
    dt = DeltaTable(store.location("things"))
    log_file = Path(store.location("things")) / "_delta_log" / "00000000000000000000.json"
    adds = [json.loads(line)["add"] for line in log_file.read_text().splitlines() if '"add"' in line]
    stats = json.loads(adds[0]["stats"])
    assert stats["numRecords"] == 20
    assert stats["minValues"]["id"] == 0 and stats["maxValues"]["id"] == 19
    assert stats["nullCount"]["name"] == sum(1 for i in range(20) if i % 7 == 0)
    assert stats["minValues"]["at"] == "2026-01-01T12:00:00.123Z"
    # the max is rounded up to whole milliseconds so it still bounds .123456
    assert stats["maxValues"]["at"] == "2026-01-01T12:00:19.124Z"
    assert "score" not in stats["minValues"]  # floats carry no min/max (NaN ordering)
    assert dt.version() == 0


def test_empty_dataframes(spark: SparkSession, store: TableStore) -> None:
    empty = spark.createDataFrame([], SCHEMA)
    assert store.write(empty, "empty", "overwrite", COMMIT).rows == 0
    assert store.read("empty").count() == 0
    assert store.read("empty").schema.fieldNames() == SCHEMA.fieldNames()
    assert store.write(empty, "empty_parts", "overwrite", COMMIT, partition_by=["day"]).files == 0
    assert store.read("empty_parts").count() == 0
    store.write(_df(spark, 4), "empty_parts", "append", COMMIT, partition_by=["day"])
    assert store.read("empty_parts").count() == 4
    # overwriting with nothing truncates, and the old rows stay reachable by version
    store.write(empty, "empty_parts", "overwrite", COMMIT, partition_by=["day"])
    assert store.read("empty_parts").count() == 0
    assert store.read("empty_parts", version=1).count() == 4


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.withColumn("id", F.col("id").cast("string")), 'column \'id\' is "string", table has "long"'),
        (lambda df: df.withColumn("extra", F.lit(1)), "unexpected column 'extra'"),
        (lambda df: df.drop("score"), "missing column 'score'"),
        (lambda df: df.withColumn("id", F.col("id").cast(IntegerType())), "column 'id' is \"integer\""),
    ],
)
def test_schema_mismatch_is_an_error_and_writes_nothing(
    spark: SparkSession, store: TableStore, change: Callable[[DataFrame], DataFrame], message: str
) -> None:
    store.write(_df(spark, 5), "things", "overwrite", COMMIT)
    for mode in ("append", "overwrite"):
        with pytest.raises(SchemaMismatchError, match=message):
            store.write(change(_df(spark, 5)), "things", mode, COMMIT)
    assert store.version("things") == 0
    assert store.read("things").count() == 5
    # nothing was left behind: only the first write's folder and the log
    assert len([p for p in Path(store.location("things")).iterdir() if not p.name.startswith("_")]) == 1


def test_partitioning_mismatch_is_an_error(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 5), "things", "overwrite", COMMIT, partition_by=["day"])
    with pytest.raises(SchemaMismatchError, match="partitioned by"):
        store.write(_df(spark, 5), "things", "append", COMMIT)


def test_nullability_differences_are_not_mismatches(spark: SparkSession, store: TableStore) -> None:
    store.write(spark.range(3), "ids", "overwrite", COMMIT)  # id is NOT NULL here
    nullable = spark.createDataFrame([(None,), (7,)], "id BIGINT")
    store.write(nullable, "ids", "append", COMMIT)
    assert sorted((r.id is None, r.id) for r in store.read("ids").collect())[0] == (False, 0)
    assert store.read("ids").count() == 5


def test_deltalake_reads_the_rows_spark_wrote(spark: SparkSession, store: TableStore) -> None:
    df = _df(spark, 40)
    store.write(df, "things", "overwrite", COMMIT, partition_by=["day"])
    store.write(_df(spark, 10, offset=40), "things", "append", COMMIT, partition_by=["day"])
    via_arrow = sorted(_arrow_rows(store.location("things")), key=lambda r: r["id"])
    via_spark = sorted((r.asDict() for r in store.read("things").collect()), key=lambda r: r["id"])
    assert len(via_arrow) == 50
    assert [r["id"] for r in via_arrow] == [r["id"] for r in via_spark]
    assert [r["day"] for r in via_arrow] == [r["day"] for r in via_spark]
    assert [r["name"] for r in via_arrow] == [r["name"] for r in via_spark]
    # Spark hands back naive datetimes in the session time zone (UTC); deltalake aware UTC ones.
    assert [r["at"].replace(tzinfo=None) for r in via_arrow] == [r["at"] for r in via_spark]
    assert [list(r["vec"]) for r in via_arrow] == [list(r["vec"]) for r in via_spark]


def test_history_records_job_run_and_config(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 2), "things", "overwrite", COMMIT)
    store.write(_df(spark, 2), "things", "append", CommitInfo("ingest", "run-2", "cfg456", {"files": 3}))
    h = store.history("things")
    assert [e.version for e in h] == [1, 0]
    assert h[0].metadata["job"] == "ingest" and h[0].metadata["run_id"] == "run-2"
    assert h[0].metadata["config_hash"] == "cfg456" and h[0].metadata["files"] == 3
    assert h[1].metadata["run_id"] == "run-1"
    summary = describe_table(store.root, "things")
    assert (summary.version, summary.rows, summary.last_run_id) == (1, 4, "run-2")


def test_history_numbers_versions_right_when_a_commit_lands_during_the_read(
    spark: SparkSession,
    store: TableStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deltalake numbers history from the handle's loaded version but lists from the newest commit:
    a commit landing in between shifted every number down (a racing append reported version 0)."""
    store.write(_df(spark, 2), "things", "overwrite", COMMIT)
    store.write(_df(spark, 2), "things", "append", CommitInfo("ingest", "run-2", "cfg"))
    history = DeltaTable.history
    landed: list[int] = []

    def another_writer_commits_first(self: DeltaTable, limit: int | None = None) -> list[dict[str, Any]]:
        if not landed:  # once: between this handle's load and its listing
            landed.append(1)
            store.write(_df(spark, 1), "things", "append", CommitInfo("other", "run-3", "cfg"))
        return history(self, limit)

    monkeypatch.setattr(DeltaTable, "history", another_writer_commits_first)
    h = store.history("things")
    assert landed
    assert [(e.version, e.metadata["run_id"]) for e in h] == [(2, "run-3"), (1, "run-2"), (0, "run-1")]


def test_orphans_of_a_killed_write_are_invisible_and_vacuumed(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 10), "things", "overwrite", COMMIT)
    store.write(_df(spark, 6), "things", "overwrite", COMMIT)
    # A writer killed between its Parquet write and its commit leaves a folder the log never names.
    orphan = Path(store.location("things")) / "w20260101T000000-deadbeef0000"
    _df(spark, 99).write.parquet(str(orphan))
    assert store.read("things").count() == 6
    assert len(_arrow_rows(store.location("things"))) == 6
    dry = store.vacuum("things", retention_hours=0, dry_run=True)
    assert any("deadbeef" in f for f in dry)
    removed = store.vacuum("things", retention_hours=0)
    assert any("deadbeef" in f for f in removed)
    assert not orphan.exists()
    assert store.read("things").count() == 6  # the latest version is untouched
    assert store.vacuum("things", retention_hours=0) == []
    assert len([p for p in Path(store.location("things")).iterdir() if not p.name.startswith("_")]) == 1


def test_vacuum_keeps_files_inside_the_retention_window(spark: SparkSession, store: TableStore) -> None:
    store.write(_df(spark, 10), "things", "overwrite", COMMIT)
    store.write(_df(spark, 6), "things", "overwrite", COMMIT)
    assert store.vacuum("things", retention_hours=24) == []
    assert store.read("things", version=0).count() == 10


@pytest.mark.parametrize("name", ["../escape", "a/b", "Users", "", "x" * 70])
def test_table_names_cannot_escape_the_root(store: TableStore, name: str) -> None:
    with pytest.raises(StorageError, match="invalid table name"):
        store.location(name)
    with pytest.raises(StorageError, match="invalid table name"):
        table_location("/tmp/root", name)


def test_missing_table_is_a_clear_error(store: TableStore) -> None:
    assert not store.exists("nothing")
    assert store.version("nothing") is None
    with pytest.raises(StorageError, match="table 'nothing' does not exist"):
        store.read("nothing")


def test_missing_partition_column_is_an_error(spark: SparkSession, store: TableStore) -> None:
    with pytest.raises(StorageError, match="partition columns"):
        store.write(_df(spark, 2), "things", "overwrite", COMMIT, partition_by=["nope"])


def test_file_stats_skip_long_strings(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"s": ["a", "b" * 40], "t": ["x", None]})
    pq.write_table(table, tmp_path / "f.parquet")
    stats = file_stats(pq.read_metadata(tmp_path / "f.parquet"), table.schema)
    assert "s" not in stats["minValues"]  # a truncated max would be wrong
    assert stats["minValues"]["t"] == "x" and stats["nullCount"] == {"s": 0, "t": 1}


@pytest.mark.deltaspark
def test_delta_spark_engine_round_trip(spark: SparkSession, cfg: Config) -> None:
    if not delta_jars_loaded(spark):
        pytest.skip(
            "Delta Lake jars are not on the Spark classpath (Maven is unreachable here); "
            "run with spark.jars.packages=io.delta:delta-spark_4.2_2.13:4.4.1 to test this engine"
        )
    store = TableStore(spark, cfg.storage.model_copy(update={"engine": "delta-spark"}))
    df = _df(spark, 20)
    assert store.write(df, "native", "overwrite", COMMIT, partition_by=["day"]).engine == "delta-spark"
    assert_df_equality(store.read("native"), df, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)
    with pytest.raises(SchemaMismatchError):
        store.write(df.withColumn("x", F.lit(1)), "native", "append", COMMIT, partition_by=["day"])
    assert store.history("native")[0].metadata["run_id"] == "run-1"


def test_delta_spark_engine_without_jars_is_a_clear_error(spark: SparkSession, cfg: Config) -> None:
    if delta_jars_loaded(spark):
        pytest.skip("Delta jars are present; this checks the message when they are not")
    with pytest.raises(StorageError, match="Delta jars are not on the Spark classpath"):
        TableStore(spark, cfg.storage.model_copy(update={"engine": "delta-spark"}))


def test_cleanup_removes_the_write_folder_when_the_commit_fails(
    spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_spark.storage import delta_rs

    store.write(_df(spark, 3), "things", "overwrite", COMMIT)

    def boom(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(delta_rs, "_add_actions", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write(_df(spark, 3), "things", "append", COMMIT)
    folders = [p for p in Path(store.location("things")).iterdir() if not p.name.startswith("_")]
    assert len(folders) == 1
    assert store.read("things").count() == 3
    shutil.rmtree(store.location("things"))


@pytest.mark.usefixtures("partitioned_reads")
def test_partition_values_with_special_characters(spark: SparkSession, store: TableStore) -> None:
    values = ["a+b", "c d", "e%f", "g/h", "ü=1", "x:y"]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "id BIGINT, tag STRING")
    store.write(df, "tagged", "overwrite", COMMIT, partition_by=["tag"])
    assert sorted((r.id, r.tag) for r in store.read("tagged").collect()) == list(enumerate(values))
    assert [r.id for r in store.read("tagged", where="tag = 'a+b'").collect()] == [0]
    assert sorted(r["tag"] for r in _arrow_rows(store.location("tagged"))) == sorted(values)


def test_overwrite_of_one_partition_keeps_the_others(spark: SparkSession, store: TableStore) -> None:
    rows = [(1, "a", 0.1), (2, "a", 0.2), (3, "b", 0.3)]
    schema = "id INT, method STRING, v DOUBLE"
    store.write(spark.createDataFrame(rows, schema), "nb", "overwrite", COMMIT, ["method"])
    store.write(
        spark.createDataFrame([(9, "b", 0.9)], schema), "nb", "overwrite", COMMIT, ["method"], replace={"method": "b"}
    )
    got = sorted((r.id, r.method) for r in store.read("nb").collect())
    assert got == [(1, "a"), (2, "a"), (9, "b")]
    # a new partition value is added without touching the rest
    store.write(
        spark.createDataFrame([(5, "c", 0.5)], schema), "nb", "overwrite", COMMIT, ["method"], replace={"method": "c"}
    )
    assert store.read("nb").count() == 4 and store.read("nb", version=1).count() == 3
    # rows outside the replaced partition are refused, and nothing is committed or left behind
    before = {p.name for p in Path(store.location("nb")).iterdir()}
    with pytest.raises(StorageError, match="other partitions"):
        store.write(
            spark.createDataFrame([(7, "a", 0.7), (8, "c", 0.8)], schema),
            "nb",
            "overwrite",
            COMMIT,
            ["method"],
            replace={"method": "c"},
        )
    assert store.version("nb") == 2 and {p.name for p in Path(store.location("nb")).iterdir()} == before
    with pytest.raises(StorageError, match="mode 'overwrite'"):
        store.write(spark.createDataFrame(rows, schema), "nb", "append", COMMIT, ["method"], replace={"method": "a"})


# -- conditional commits: the version read, or nothing ----------------------------------------------


def _write_folders(location: str) -> list[Path]:
    return [p for p in Path(location).iterdir() if p.is_dir() and not p.name.startswith("_")]


def test_a_conditional_append_lands_right_after_the_version_it_read(spark: SparkSession, store: TableStore) -> None:
    first = store.write(_df(spark, 5), "cond", "append", COMMIT, expected_version=None)
    second = store.write(_df(spark, 5, 5), "cond", "append", COMMIT, expected_version=first.version)
    assert (first.version, second.version) == (0, 1)
    assert store.read("cond").count() == 10
    assert store.history("cond", limit=1)[0].metadata["write_id"]  # the usual commit metadata


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_a_conditional_write_to_a_table_that_moved_commits_nothing(
    spark: SparkSession, store: TableStore, mode: str
) -> None:
    from recsys_spark.errors import ConcurrentWriteError

    store.write(_df(spark, 5), "moved", "append", COMMIT)
    read = store.version("moved")
    store.write(_df(spark, 3, 100), "moved", "append", COMMIT)  # another writer, after our read
    with pytest.raises(
        ConcurrentWriteError,
        match=r"table 'moved' moved while this run worked: it expected the "
        r"table to be at version 0, and it is at version 1",
    ):
        store.write(_df(spark, 7, 200), "moved", mode, COMMIT, expected_version=read)
    assert store.version("moved") == 1 and store.read("moved").count() == 8
    assert len(_write_folders(store.location("moved"))) == 2  # no files of the refused write


def test_a_conditional_create_fails_when_the_table_already_exists(spark: SparkSession, store: TableStore) -> None:
    from recsys_spark.errors import ConcurrentWriteError

    store.write(_df(spark, 5), "created", "append", COMMIT, expected_version=None)
    with pytest.raises(ConcurrentWriteError, match="expected the table not to exist yet, and it is at version 0"):
        store.write(_df(spark, 5), "created", "append", COMMIT, expected_version=None)
    assert store.read("created").count() == 5


def test_the_commit_itself_refuses_a_stale_version(
    spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-front version check passes, then another commit lands before ours: Delta's log refuses
    the second writer of version 1 (the race a barrier forces in test_crash_safety, made sequential)."""
    from recsys_spark.errors import ConcurrentWriteError
    from recsys_spark.storage import delta_rs

    store.write(_df(spark, 5), "stale", "append", COMMIT)
    add_actions = delta_rs._add_actions

    def another_writer_first(*args: Any, **kwargs: Any) -> list[Any]:
        actions = add_actions(*args, **kwargs)
        DeltaTable(store.location("stale")).create_write_transaction(
            [], mode="append", schema=DeltaTable(store.location("stale")).schema()
        )
        return actions

    monkeypatch.setattr(delta_rs, "_add_actions", another_writer_first)
    with pytest.raises(ConcurrentWriteError, match="moved while this run worked"):
        store.write(_df(spark, 5, 5), "stale", "append", COMMIT, expected_version=0)
    monkeypatch.undo()
    assert store.version("stale") == 1 and store.read("stale").count() == 5
    assert len(_write_folders(store.location("stale"))) == 1  # the refused write's folder is removed


def test_reading_a_version_that_does_not_exist_names_the_versions_there_are(
    spark: SparkSession, store: TableStore
) -> None:
    for offset in (0, 5, 10):
        store.write(_df(spark, 5, offset), "versions", "append", COMMIT)
    with pytest.raises(StorageError, match=r"table 'versions' has no version 99: it has versions 0\.\.2$"):
        store.read("versions", version=99)


def test_an_unwritable_table_root_fails_up_front_naming_it(spark: SparkSession, cfg: Config) -> None:
    # /proc refuses new entries even to root, as a read-only mount or a foreign bucket would
    bad = TableStore(spark, cfg.with_overrides(["storage.root=/proc/recsys-warehouse"]).storage)
    with pytest.raises(
        StorageError,
        match=r"storage.root '/proc/recsys-warehouse' \(/proc/recsys-warehouse\) is "
        r"not writable: .*nothing was run",
    ):
        bad.check_writable()
    TableStore(spark, cfg.storage).check_writable()  # a normal root passes, and is left as it was
    assert not [p for p in Path(cfg.storage.root).iterdir() if p.name.startswith(".recsys-write-check")]
