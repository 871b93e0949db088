"""What the driver makes of input files before and while Spark reads them: Parquet column types
(every Arrow type an exporter may write, for every mapped field) and symbolic links in input folders.

Parquet cases read through ``read_source`` + ``validate_events`` (the ingest job's own path, without
the commits), so each costs one small Spark read; rejections happen on the driver, before Spark.
Line endings, headers and compression extensions are cases of tests/hostile/expected.toml.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import InputError
from recsys_spark.ingest import sources as sources
from recsys_spark.ingest.sources import SourceFile, list_source_files, read_source, scan_source_files
from recsys_spark.ingest.transforms import validate_events
from recsys_spark.storage.store import TableStore

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
# Two instants, one before 1970 (floor, not truncation toward zero, matters there), both whole seconds
# so that every unit holds them exactly.
INSTANTS = [
    dt.datetime(2026, 8, 29, 10, 40, tzinfo=dt.timezone.utc),
    dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=dt.timezone.utc),
]
ISO = ["2026-08-29T10:40:00Z", "1969-07-20T20:17:40Z"]
UNIT_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _parquet_config(base: Config, tmp_path: Path, **cols: str) -> Config:
    mapping = {"user_col": "user", "item_col": "item", "timestamp_col": "ts", **cols}
    return base.with_overrides(
        [
            f"storage.root={tmp_path / 'warehouse'}",
            "ingest.source.preset=custom",
            "ingest.source.format=parquet",
            'ingest.min_event_time="1900-01-01T00:00:00Z"',
            *[f"ingest.source.{k}={v}" for k, v in mapping.items()],
        ]
    )


def _events(n: int, **columns: pa.Array) -> pa.Table:
    """A Parquet-ready table of ``n`` rows: user, item and ts (unix seconds), with ``columns`` replacing or added."""
    base: dict[str, pa.Array] = {
        "user": pa.array([f"u{i}" for i in range(n)]),
        "item": pa.array([f"i{i}" for i in range(n)]),
        "ts": pa.array([int(INSTANTS[0].timestamp())] * n, pa.int64()),
    }
    return pa.table({**base, **columns})


def _validated(spark: SparkSession, cfg: Config, path: Path) -> list[dict[str, Any]]:
    src = cfg.ingest.source
    raw = read_source(spark, src, list_source_files(str(path)), cfg.ingest.max_line_bytes)
    when = F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias("when")
    rows = (
        validate_events(raw, src, cfg.ingest, NOW)
        .select("line_number", "user_id", "item_id", "event_type", "event_id", when, "value_num", "reason")
        .orderBy("line_number")
        .collect()
    )
    return [r.asDict() for r in rows]


def _iso(rows: list[dict[str, Any]]) -> list[str | None]:
    return [None if r["when"] is None else r["when"].replace(".000000", "") for r in rows]


# -- Parquet times: every unit and zone gives the same instant ------------------------------------------


def _epoch(unit: str) -> list[int]:
    return [int(i.timestamp()) * UNIT_PER_S[unit] for i in INSTANTS]


TIME_COLUMNS: dict[str, Callable[[Path], None]] = {
    **{
        f"timestamp[{unit}, {zone}]": (
            lambda p, unit=unit, zone=zone: pq.write_table(
                _events(2, ts=pa.array(_epoch(unit), pa.timestamp(unit, None if zone == "no zone" else zone))), p
            )
        )
        for unit in UNIT_PER_S
        for zone in ("no zone", "UTC", "Europe/Berlin")
    },
    "int96 (use_deprecated_int96_timestamps)": lambda p: pq.write_table(
        _events(2, ts=pa.array(_epoch("ns"), pa.timestamp("ns"))), p, use_deprecated_int96_timestamps=True
    ),
    "pandas datetime64[ns] (to_parquet)": lambda p: (
        _events(2).to_pandas().assign(ts=pd.to_datetime([i.replace(tzinfo=None) for i in INSTANTS])).to_parquet(p)
    ),
    "pandas datetime64[ns, Europe/Berlin] (to_parquet)": lambda p: (
        _events(2).to_pandas().assign(ts=pd.to_datetime(INSTANTS).tz_convert("Europe/Berlin")).to_parquet(p)
    ),
}


@pytest.mark.parametrize("kind", TIME_COLUMNS)
def test_every_parquet_timestamp_unit_and_zone_reads_as_the_same_utc_instant(
    kind: str, spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    path = tmp_path / "t.parquet"
    TIME_COLUMNS[kind](path)
    rows = _validated(spark, _parquet_config(base_config, tmp_path), path)
    assert _iso(rows) == ISO
    assert [r["reason"] for r in rows] == [None, None]


def test_a_date32_column_is_midnight_utc(spark: SparkSession, base_config: Config, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(_events(2, ts=pa.array([i.date() for i in INSTANTS], pa.date32())), path)
    assert _iso(_validated(spark, _parquet_config(base_config, tmp_path), path)) == [
        "2026-08-29T00:00:00Z",
        "1969-07-20T00:00:00Z",
    ]


def test_nanoseconds_are_floored_to_microseconds_exactly_on_both_sides_of_1970(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    # -1 ns is 1969-12-31T23:59:59.999999999: floored, not rounded to 1970; the last two are the
    # int64 extremes, where a double (53 bits) would be off by hundreds of nanoseconds.
    nanos = [-1, 1, -1_000, 1_999, 1_788_000_000_123_456_789, -14_182_939_876_543_211, 2**63 - 1, -(2**63) + 1]
    path = tmp_path / "ns.parquet"
    pq.write_table(_events(len(nanos), ts=pa.array(nanos, pa.timestamp("ns"))), path)
    cfg = _parquet_config(base_config, tmp_path).with_overrides(["ingest.max_future_days=200000"])
    got = [r["when"] for r in _validated(spark, cfg, path)]
    assert got == [
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00.000000Z",
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00.000001Z",
        "2026-08-29T10:40:00.123456Z",
        "1969-07-20T20:17:40.123456Z",
        "2262-04-11T23:47:16.854775Z",
        "1677-09-21T00:12:43.145224Z",
    ]


def test_a_nanosecond_column_outside_the_mapping_is_an_instant_in_the_quarantined_raw_line(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    path = tmp_path / "raw.parquet"
    pq.write_table(_events(1, user=pa.array([""]), seen=pa.array([-1], pa.timestamp("ns"))), path)
    cfg = _parquet_config(base_config, tmp_path)
    raw = read_source(spark, cfg.ingest.source, list_source_files(str(path)), cfg.ingest.max_line_bytes)
    assert raw.collect()[0]["raw_line"] == '{"user":"","item":"i0","ts":1788000000,"seen":"1969-12-31T23:59:59.999Z"}'


# -- Parquet types for every mapped field ----------------------------------------------------------------

# (field, Arrow array) -> what the field reads as: the id / event type text, the value, or the instant.
READ = [
    *[
        (
            "user_col",
            pa.array([-(2 ** (w - 1)), 2 ** (w - 1) - 1], getattr(pa, f"int{w}")()),
            [str(-(2 ** (w - 1))), str(2 ** (w - 1) - 1)],
        )
        for w in (8, 16, 32, 64)
    ],
    *[("user_col", pa.array([0, 2**w - 1], getattr(pa, f"uint{w}")()), ["0", str(2**w - 1)]) for w in (8, 16, 32, 64)],
    ("user_col", pa.array([decimal.Decimal(10**37), decimal.Decimal(-5)], pa.decimal128(38, 0)), [str(10**37), "-5"]),
    ("item_col", pa.array(["a", "é"], pa.large_string()), ["a", "é"]),
    ("item_col", pa.array(["a", "é"], pa.string_view()), ["a", "é"]),
    ("item_col", pa.array(["a", "b"]).dictionary_encode(), ["a", "b"]),
    ("item_col", pa.array([b"a", "é".encode()], pa.binary()), ["a", "é"]),
    ("item_col", pa.array([b"a", b"b"], pa.large_binary()), ["a", "b"]),
    ("event_id_col", pa.array([7, 8], pa.uint64()), ["7", "8"]),
    ("event_id_col", pa.array([None, None], pa.null()), [None, None]),
    ("event_type_col", pa.array(["view", "purchase"]).dictionary_encode(), ["view", "purchase"]),
    ("value_col", pa.array([2, 255], pa.uint8()), [2.0, 255.0]),
    ("value_col", pa.array([2**64 - 1, 0], pa.uint64()), [float(2**64 - 1), 0.0]),
    ("value_col", pa.array([0.1, 2.5], pa.float32()), [0.1, 2.5]),
    ("value_col", pa.array([0.1, 1e30], pa.float64()), [0.1, 1e30]),
    ("value_col", pa.array([decimal.Decimal("1.50"), decimal.Decimal("0.01")], pa.decimal128(10, 2)), [1.5, 0.01]),
    ("value_col", pa.array(["1.5", "3"]), [1.5, 3.0]),
    (
        "timestamp_col",
        pa.array([1788000000, 1788000000123], pa.int64()),
        ["2026-08-29T10:40:00Z", "2026-08-29T10:40:00.123000Z"],
    ),
    ("timestamp_col", pa.array([1788000000, -14182940], pa.int32()), ["2026-08-29T10:40:00Z", "1969-07-20T20:17:40Z"]),
    (
        "timestamp_col",
        pa.array([1788000000.5, -14182939.5], pa.float64()),
        ["2026-08-29T10:40:00.500000Z", "1969-07-20T20:17:40.500000Z"],
    ),
    (
        "timestamp_col",
        pa.array([decimal.Decimal("1788000000.25"), decimal.Decimal(0)], pa.decimal128(12, 2)),
        ["2026-08-29T10:40:00.250000Z", "1970-01-01T00:00:00Z"],
    ),
    ("timestamp_col", pa.array(["2026-08-29T12:40:00+02:00", "1969-07-20 20:17:40"]).dictionary_encode(), ISO),
    (
        "timestamp_col",
        pa.array([dt.date(2026, 8, 29), dt.date(1969, 7, 20)], pa.date64()),
        ["2026-08-29T00:00:00Z", "1969-07-20T00:00:00Z"],
    ),
]


def _field_of(option: str) -> str:
    return {
        "user_col": "user_id",
        "item_col": "item_id",
        "event_id_col": "event_id",
        "event_type_col": "event_type",
        "value_col": "value_num",
        "timestamp_col": "when",
    }[option]


@pytest.mark.parametrize(("option", "array", "expected"), READ, ids=lambda v: str(getattr(v, "type", v)))
def test_each_parquet_type_a_field_accepts_reads_as_its_exact_value(
    option: str, array: pa.Array, expected: list[Any], spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    column = {"user_col": "user", "item_col": "item", "timestamp_col": "ts"}.get(option, "extra")
    path = tmp_path / "x.parquet"
    pq.write_table(_events(2, **{column: array}), path)
    rows = _validated(spark, _parquet_config(base_config, tmp_path, **{option: column}), path)
    got = [r[_field_of(option)] for r in rows]
    if option == "timestamp_col":
        got = _iso(rows)
    assert got == expected
    assert [r["reason"] for r in rows] == [None, None]


def test_binary_that_is_not_utf8_is_invalid_encoding(spark: SparkSession, base_config: Config, tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pq.write_table(_events(2, item=pa.array([b"ok", b"caf\xe9"], pa.binary())), path)
    rows = _validated(spark, _parquet_config(base_config, tmp_path), path)
    assert [(r["item_id"], r["reason"]) for r in rows] == [("ok", None), ("café", "invalid_encoding")]


# (field, Arrow array, what the message must say besides the file, column and type)
REFUSED = [
    *[("user_col", pa.array([1.0, 2.0], t), "a float id reads as '1.0'") for t in (pa.float32(), pa.float64())],
    ("item_col", pa.array([decimal.Decimal("1.5")] * 2, pa.decimal128(5, 1)), "a decimal with a fraction is not an id"),
    ("user_col", pa.array([True, False]), "a boolean is not a user id"),
    ("value_col", pa.array([True, False]), "write it as a number (1 / 0)"),
    ("event_type_col", pa.array([1.0, 2.0]), "write it as int64 or string"),
    ("event_id_col", pa.array([uuid.UUID(int=1).bytes] * 2, pa.binary(16)), "a UUID in its 36-character text form"),
    ("item_col", pa.array([dt.date(2026, 1, 1)] * 2, pa.date32()), "a date is not a item id"),
    ("value_col", pa.array([1, 2], pa.timestamp("ns")), "a time is not a value"),
    ("value_col", pa.array([5, 6], pa.duration("s")), "a plain number in the unit you mean"),
    ("timestamp_col", pa.array([5, 6], pa.duration("s")), "a duration is not a point in time"),
    ("timestamp_col", pa.array([1.788e9] * 2, pa.float32()), "float32 cannot hold a unix time"),
    ("timestamp_col", pa.array([True, False]), "a boolean is not a event time"),
    ("user_col", pa.array([["a"], ["b"]]), "a list, struct or map is not a user id"),
    ("item_col", pa.array([{"a": 1}, {"a": 2}]), "flatten it to one scalar column"),
    ("value_col", pa.array([[("a", 1)]] * 2, pa.map_(pa.string(), pa.int64())), "a list, struct or map"),
    ("user_col", pa.array([None, None], pa.null()), "holds no values at all"),
    ("value_col", pa.array([None, None], pa.null()), "every row would be rejected"),
]


@pytest.mark.parametrize(("option", "array", "fix"), REFUSED, ids=lambda v: str(getattr(v, "type", v)))
def test_a_parquet_type_a_field_cannot_read_is_refused_naming_file_column_type_and_fix(
    option: str, array: pa.Array, fix: str, base_config: Config, tmp_path: Path
) -> None:
    column = {"user_col": "user", "item_col": "item", "timestamp_col": "ts"}.get(option, "extra")
    path = tmp_path / "x.parquet"
    pq.write_table(_events(2, **{column: array}), path)
    cfg = _parquet_config(base_config, tmp_path, **{option: column})
    with pytest.raises(InputError) as err:
        read_source(None, cfg.ingest.source, list_source_files(str(path)), 65536)  # type: ignore[arg-type]
    message = str(err.value)
    shown = pq.read_schema(path).field(column).type
    assert f"column {column!r} of {path} (the " in message and f"ingest.source.{option}) is {shown}" in message
    assert fix in message


@pytest.mark.parametrize(
    ("array", "fix"),
    [
        (pa.array([1.5, 2.5], pa.float16()), "Spark cannot read float16; cast it to float32 or float64"),
        (pa.array([dt.time(12, 0)] * 2, pa.time64("us")), "Spark cannot read a time of day"),
        (pa.array([dt.time(12, 0)] * 2, pa.time32("ms")), "Spark cannot read a time of day"),
        (pa.array([uuid.UUID(int=1).bytes] * 2, pa.uuid()), "Spark cannot read the Parquet UUID type"),
        (pa.array([decimal.Decimal(1)] * 2, pa.decimal256(40, 0)), "Spark reads decimals of at most 38 digits"),
        (pa.array([{"w": 1.0}] * 2, pa.struct([("w", pa.float16())])), "its field 'extra.w'"),
    ],
    ids=lambda v: str(getattr(v, "type", v)),
)
def test_a_column_spark_cannot_read_at_all_is_refused_even_when_not_mapped(
    array: pa.Array, fix: str, base_config: Config, tmp_path: Path
) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(_events(2, extra=array), path)
    cfg = _parquet_config(base_config, tmp_path)
    with pytest.raises(InputError) as err:
        read_source(None, cfg.ingest.source, list_source_files(str(path)), 65536)  # type: ignore[arg-type]
    assert f"column 'extra' of {path} is {array.type}" in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "array", "fix"),
    [
        (
            "unix_s",
            pa.array([1, 2], pa.timestamp("ns")),
            "a native time, but ingest.source.timestamp_format = 'unix_s'",
        ),
        ("unix_ms", pa.array([dt.date(2026, 1, 1)] * 2, pa.date32()), "set it to 'auto' (or 'iso')"),
        ("iso", pa.array([1788000000] * 2, pa.int64()), "a number, but ingest.source.timestamp_format = 'iso'"),
    ],
    ids=["ns-as-unix_s", "date-as-unix_ms", "int-as-iso"],
)
def test_a_time_column_whose_type_contradicts_timestamp_format_is_refused(
    fmt: str, array: pa.Array, fix: str, base_config: Config, tmp_path: Path
) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(_events(2, ts=array), path)
    cfg = _parquet_config(base_config, tmp_path).with_overrides([f"ingest.source.timestamp_format={fmt}"])
    with pytest.raises(InputError, match=f"column 'ts' of {path}") as err:
        read_source(None, cfg.ingest.source, list_source_files(str(path)), 65536)  # type: ignore[arg-type]
    assert fix in str(err.value)


def test_an_empty_parquet_file_is_not_refused_for_a_null_typed_column(base_config: Config, tmp_path: Path) -> None:
    # pandas types the empty object columns of an empty frame as null: there is nothing to misread
    path = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"user": pa.array([], pa.null()), "item": pa.array([], pa.string()), "ts": pa.array([], pa.int64())}),
        path,
    )
    cfg = _parquet_config(base_config, tmp_path)
    assert sources._parquet_schemas(cfg.ingest.source, [SourceFile(str(path), 1, 0)]) == (["user", "item", "ts"], set())


# -- symbolic links in input folders --------------------------------------------------------------------


def _tree(root: Path) -> Path:
    """in/a.csv, in/sub/b.csv, in/sub/up -> .. (a loop), in/sub/self -> . (a loop), in/gone -> missing."""
    (root / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.csv", "in/sub/b.csv"):
        (root / name).write_text(
            f"event_id,user_id,item_id,event_type,timestamp,value\n{name},u-{name},i,view,2026-09-01T10:00:00Z,1\n"
        )
    os.symlink("..", root / "in" / "sub" / "up")
    os.symlink(".", root / "in" / "sub" / "self")
    os.symlink(root / "missing.csv", root / "in" / "gone.csv")
    return root / "in"


def test_a_symlink_loop_is_entered_once_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tree(tmp_path)
    listed: list[str] = []
    scandir = os.scandir
    monkeypatch.setattr(sources.os, "scandir", lambda p: (listed.append(str(p)), scandir(p))[1])
    with caplog.at_level(logging.WARNING, logger="recsys_spark.ingest.sources"):
        scan = scan_source_files(str(folder))
    assert [f.path for f in scan.files] == [str(folder / "a.csv"), str(folder / "sub" / "b.csv")]
    assert sorted(listed) == [str(folder), str(folder / "sub")]  # each directory listed once, not 41 times
    assert sorted(scan.symlink_loops) == [str(folder / "sub" / "self"), str(folder / "sub" / "up")]
    assert scan.dangling_links == [str(folder / "gone.csv")]
    text = caplog.text
    assert f"not entering {folder / 'sub' / 'up'}: a symbolic link to {folder}" in text
    assert (
        f"skipping {folder / 'gone.csv'}: a symbolic link to {tmp_path / 'missing.csv'}, which does not exist" in text
    )
    assert list_source_files(str(folder)) == scan.files


def test_a_cycle_of_links_that_never_reaches_a_file_is_skipped_and_named(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n")
    os.symlink(folder / "ping", folder / "pong")
    os.symlink(folder / "pong", folder / "ping")
    scan = scan_source_files(str(folder))
    assert [f.path for f in scan.files] == [str(folder / "a.csv")]
    assert scan.symlink_loops == [str(folder / "ping"), str(folder / "pong")] and scan.dangling_links == []


def test_links_to_files_and_to_directories_elsewhere_are_followed_once_per_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "deep" / "c.csv").write_text("x\n" * 3)
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(elsewhere / "deep" / "c.csv", folder / "c-link.csv")
    os.symlink(elsewhere, folder / "more")
    scan = scan_source_files(str(folder))
    assert [(f.path, f.size) for f in scan.files] == [
        (str(folder / "c-link.csv"), 6),
        (str(folder / "more" / "deep" / "c.csv"), 6),
    ]
    assert (scan.dangling_links, scan.symlink_loops) == ([], [])


def test_a_folder_with_links_ingests_each_file_once_under_its_link_path(
    spark: SparkSession, ingest: Callable[..., Any], base_config: Config, tmp_path: Path
) -> None:
    folder = _tree(tmp_path)
    os.symlink(folder / "a.csv", folder / "sub" / "a-again.csv")  # the same file by a second path
    cfg = base_config.with_overrides(
        [f"storage.root={tmp_path / 'warehouse'}", f"ingest.source.path={folder}", "ingest.source.preset=synthetic"]
    )
    report = ingest(cfg)
    assert (report.files_seen, report.rows_read, report.rows_duplicate, report.events_added) == (3, 3, 1, 2)
    # the links it did not follow are counted in the report, not only logged
    assert report.dangling_links == [str(folder / "gone.csv")] and len(report.symlink_loops) == 2
    assert "links skipped: 1 dangling, 2 looping back into a folder already read" in report.render()
    store = TableStore(spark, cfg.storage)
    ledger = sorted(r.path for r in store.read(T.INGESTED_FILES).collect())
    assert ledger == [str(folder / "a.csv"), str(folder / "sub" / "a-again.csv"), str(folder / "sub" / "b.csv")]
    stored = sorted(r.source_file for r in store.read(T.INTERACTIONS).collect())
    assert stored == [str(folder / "a.csv"), str(folder / "sub" / "b.csv")]
