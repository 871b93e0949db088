"""Hostile inputs, end to end: every case of tests/hostile/expected.toml through the ingest job.

Each case is a file (committed under tests/hostile/, or built here when big or binary) and its exact
expected outcome: rows accepted and quarantined, with the reason of every rejected line, or one
clear error naming the file. Cases of one batch share a reader config and are ingested together in
one run (outcomes are told apart by source file), so the whole corpus costs five ingests; error
cases run alone, and most of them fail on the driver before Spark reads anything.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomllib
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config
from recsys_spark.errors import ConfigError, InputError, RecsysError, RejectThresholdError
from recsys_spark.pipeline.ingest import IngestReport, run_ingest
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.storage.store import TableStore

HOSTILE = Path(__file__).resolve().parent / "hostile"
TABLE: dict[str, Any] = tomllib.loads((HOSTILE / "expected.toml").read_text(encoding="utf-8"))
ERRORS: dict[str, type[RecsysError]] = {e.__name__: e for e in (ConfigError, InputError, RejectThresholdError)}

HEADER = "event_id,user_id,item_id,event_type,timestamp,value\n"
WHEN = "2026-09-01T10:00:00Z"


@dataclass(frozen=True)
class Case:
    """One row of the table (see the key list at the top of expected.toml)."""

    name: str
    batch: str
    file: str
    why: str
    make: str | None = None
    also: tuple[str, ...] = ()
    also_make: dict[str, str] = field(default_factory=dict)
    set: tuple[str, ...] = ()
    source: str = "dir"
    rows: int | None = None
    accepted: int | None = None
    duplicates: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    users: tuple[str, ...] | None = None
    times: dict[str, str] | None = None
    values: dict[str, float] | None = None
    raw: dict[int, str] | None = None
    error: str | None = None
    message: tuple[str, ...] = ()

    @classmethod
    def parse(cls, row: dict[str, Any]) -> Case:
        row = dict(row)
        for key in ("also", "set", "message", "users"):
            if key in row:
                row[key] = tuple(row[key])
        for key in ("rejected", "raw"):
            if key in row:
                row[key] = {int(line): v for line, v in row[key].items()}
        return cls(**row)


CASES = [Case.parse(row) for row in TABLE["case"]]
ROW_CASES = [c for c in CASES if not c.error]
ERROR_CASES = [c for c in CASES if c.error]


# -- files too big or too binary to commit ---------------------------------------------------------


def _row(prefix: str, i: int, item: str | None = None) -> str:
    return f"{prefix}{i},{prefix}-u{i},{item if item is not None else f'{prefix}-i{i}'},view,{WHEN},1\n"


def _parquet(users: pa.Array, n: int | None = None) -> pa.Table:
    nan, inf = float("nan"), float("inf")
    table = pa.table(
        {
            "user": users,
            "item": ["p-i1", "p-i2", "p-i3", "p-i4", "p-i5", "", "p-i7", "p\x00i8", "p-i9"],
            "ts": pa.array(
                [
                    1788000000,
                    1788000000000,
                    1788000000,
                    1788000000,
                    1788000000,
                    1788000000,
                    None,
                    1788000000,
                    1788000000000,
                ],
                pa.int64(),
            ),
            "w": pa.array([1.0, nan, inf, -1.0, None, 2.0, 1.0, 1.0, 1.0], pa.float64()),
        }
    )
    return table if n is None else table.slice(0, n)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


_INT64_IDS = pa.array([2**63 - 1, 3, 4, 5, 6, 7, 8, 9, -(2**63)], pa.int64())

MAKERS: dict[str, Callable[[Path], Any]] = {
    "ten_mb_line": lambda p: p.write_text(
        HEADER + _row("tm", 1) + "tm9,tm-u9," + "x" * 10_000_000 + f",view,{WHEN},1\n" + _row("tm", 2)
    ),
    "ten_mb_header": lambda p: p.write_text("h" * 10_000_000 + "\n" + _row("th", 1)),
    "gzipped": lambda p: p.write_bytes(
        gzip.compress((HEADER + _row("gz", 1) + _row("gz", 2) + _row("gz", 3, "")).encode())
    ),
    "bzipped": lambda p: p.write_bytes(bz2.compress((HEADER + _row("bz", 1) + _row("bz", 2)).encode())),
    "header_only_gz": lambda p: p.write_bytes(gzip.compress(HEADER.encode())),
    # cut in the middle: the driver's first look at the file already runs out of data
    "truncated_early_gz": lambda p: p.write_bytes(
        gzip.compress((HEADER + "".join(_row("te", i) for i in range(50))).encode())[:300]
    ),
    # cut near the end of ~250 KB of text: only Spark's full read reaches the cut
    "truncated_late_gz": lambda p: p.write_bytes(
        gzip.compress((HEADER + "".join(_row("tz", i) for i in range(5000))).encode())[:-100]
    ),
    "gzip_named_csv": lambda p: p.write_bytes(gzip.compress((HEADER + _row("gn", 1)).encode())),
    "deflated": lambda p: p.write_bytes(zlib.compress((HEADER + _row("df", 1)).encode())),
    "parquet_named_csv": lambda p: p.write_bytes(_parquet_bytes(pa.table({"event_id": ["x"], "user_id": ["u"]}))),
    "parquet_values": lambda p: pq.write_table(_parquet(_INT64_IDS), p),
    "parquet_empty": lambda p: pq.write_table(_parquet(_INT64_IDS, 0), p),
    "parquet_string_user": lambda p: pq.write_table(_parquet(pa.array([str(i) for i in range(9)])), p),
    # what pandas writes: datetime64[ns] as INT64 TIMESTAMP(NANOS, false), and NaT as null
    "pandas_naive_ns": lambda p: pd.DataFrame(
        {
            "user": ["pd-u1", "pd-u2", "pd-u3"],
            "item": ["pd-i1", "pd-i2", "pd-i3"],
            "ts": pd.to_datetime(["2026-08-29 10:40:00.123456789", "1999-12-31 23:59:59.9999999", None]),
            "w": [1.0, 2.0, 1.0],
        }
    ).to_parquet(p),
    # an int column with a missing value: pandas makes it float64
    "pandas_float_ids": lambda p: pd.DataFrame(
        {"user": [1, None], "item": ["pf-i1", "pf-i2"], "ts": [1788000000, 1788000000], "w": [1.0, 1.0]}
    ).to_parquet(p),
    "one_row": lambda p: p.write_text(HEADER + f"one-{p.name},one-{p.name},one-i,view,{WHEN},1\n"),
    "fifo": lambda p: os.mkfifo(p),
    "empty_dir": lambda p: p.mkdir(),
    "nothing": lambda p: None,
}


def _place(case: Case, folder: Path, keep_dirs: bool) -> Path:
    """Put the case's file(s) under ``folder``; returns the path of its main file."""

    def dest(name: str) -> Path:
        p = folder / (name if keep_dirs else Path(name).name)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    for name in case.also:
        shutil.copyfile(HOSTILE / name, dest(name))
    for name, maker in case.also_make.items():
        MAKERS[maker](dest(name))
    target = dest(case.file)
    if case.make:
        MAKERS[case.make](target)
    else:
        shutil.copyfile(HOSTILE / case.file, target)
    return target


def _ingest(spark: SparkSession, cfg: Config) -> IngestReport:
    # what `recsys-spark ingest` runs (cli._cmd_ingest), on a config validated as --set values are
    return run_ingest(spark, cfg, RunContext.new("ingest", cfg))


# -- one ingest per batch ------------------------------------------------------------------------------


@dataclass
class FileOutcome:
    rows: int
    rows_rejected: int
    rejected: dict[int, str]
    raw: dict[int, str]
    users: list[str]
    times: dict[str, str]
    values: dict[str, float]


@dataclass
class BatchOutcome:
    report: IngestReport
    store: TableStore
    files: dict[str, FileOutcome]


def _utc(ts: str | None) -> str | None:
    return None if ts is None else ts.removesuffix(".000000") + "Z"


def _run_batch(spark: SparkSession, base: Config, work: Path, batch: str) -> BatchOutcome:
    for case in ROW_CASES:
        if case.batch == batch:
            _place(case, work, keep_dirs=True)
    cfg = base.with_overrides(
        [
            f"storage.root={work / 'warehouse'}",
            f"ingest.source.path={work / batch}",
            "ingest.max_reject_fraction=1.0",
            *TABLE["batch"][batch]["set"],
        ]
    )
    report = _ingest(spark, cfg)
    store = TableStore(spark, cfg.storage)
    files = {
        r.path: FileOutcome(r.rows_read, r.rows_rejected, {}, {}, [], {}, {})
        for r in store.read(T.INGESTED_FILES).collect()
    }
    if store.exists(T.REJECTED_INTERACTIONS):
        for r in store.read(T.REJECTED_INTERACTIONS).collect():
            files[r.source_file].rejected[r.line_number] = r.reason
            files[r.source_file].raw[r.line_number] = r.raw_line
    if store.exists(T.INTERACTIONS):
        when = F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS").alias("when")
        for r in store.read(T.INTERACTIONS).select("source_file", "user_id", "item_id", when, "value").collect():
            f = files[r.source_file]
            f.users.append(r.user_id)
            f.times[r.item_id] = _utc(r.when)
            f.values[r.item_id] = r.value
    return BatchOutcome(report, store, files)


@pytest.fixture(scope="module")
def batch_outcome(
    spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], BatchOutcome]:
    done: dict[str, BatchOutcome] = {}

    def get(batch: str) -> BatchOutcome:
        if batch not in done:
            done[batch] = _run_batch(spark, base_config, tmp_path_factory.mktemp(f"hostile-{batch}"), batch)
        return done[batch]

    return get


@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: c.name)
def test_rows_are_accepted_or_quarantined_exactly(case: Case, batch_outcome: Callable[[str], BatchOutcome]) -> None:
    outcome = batch_outcome(case.batch)
    path = str(next(p for p in outcome.files if p.endswith("/" + case.file)))
    got = outcome.files[path]
    assert got.rejected == case.rejected, f"{case.name}: {case.why}\nraw lines: {got.raw}"
    assert (got.rows, len(got.users)) == (case.rows, case.accepted), case.why
    # nothing is lost: every row is accepted, quarantined, or a duplicate of an accepted event
    assert got.rows == len(got.users) + len(got.rejected) + case.duplicates, case.why
    assert got.rows_rejected == len(case.rejected)
    if case.users is not None:
        assert sorted(got.users) == sorted(case.users)
    if case.times is not None:
        assert got.times == case.times
    if case.values is not None:
        assert {k: got.values[k] for k in case.values} == case.values
    if case.raw is not None:
        assert {line: got.raw[line] for line in case.raw} == case.raw


@pytest.mark.parametrize("batch", sorted(TABLE["batch"]))
def test_batch_report_adds_up(batch: str, batch_outcome: Callable[[str], BatchOutcome]) -> None:
    outcome = batch_outcome(batch)
    cases = [c for c in ROW_CASES if c.batch == batch]
    reasons = Counter(r for c in cases for r in c.rejected.values())
    r = outcome.report
    assert r.files_seen == len(outcome.files) == len(cases)  # hidden files (_SUCCESS, .crc) are not inputs
    assert r.rows_read == sum(c.rows or 0 for c in cases)
    assert r.reject_reasons == dict(reasons)
    assert r.rows_duplicate == sum(c.duplicates for c in cases)
    assert r.events_added == sum(c.accepted or 0 for c in cases)


def test_quarantine_is_valid_utf8_for_any_delta_reader(batch_outcome: Callable[[str], BatchOutcome]) -> None:
    """Raw lines of invalid_encoding rows are stored as valid UTF-8, so delta-rs / Polars / DuckDB read them."""
    from deltalake import DeltaTable

    store = batch_outcome("csv").store
    table = DeltaTable(store.location(T.REJECTED_INTERACTIONS)).to_pyarrow_table()
    table.validate(full=True)
    assert "m3,mix-café,mix-i3,view,2026-09-01T10:00:00Z,1" in table.column("raw_line").to_pylist()


# -- errors ----------------------------------------------------------------------------------------


def _error_setup(case: Case, base: Config, work: Path) -> tuple[list[str], Path, Path]:
    """(--set overrides, the case's file, its folder) for a case that runs on its own."""
    folder = work / "in"
    folder.mkdir()
    path = _place(case, folder, keep_dirs=False)
    source = path if case.source == "file" else folder
    extra = [s.replace("{file}", str(path)).replace("{dir}", str(folder)) for s in case.set]
    sets = [
        f"storage.root={work / 'warehouse'}",
        f"ingest.source.path={source}",
        "ingest.max_reject_fraction=1.0",
        *TABLE["batch"][case.batch]["set"],
        *extra,
    ]
    return sets, path, folder


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.name)
def test_bad_files_and_options_fail_clearly_and_commit_nothing(
    case: Case, spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    sets, path, folder = _error_setup(case, base_config, tmp_path)
    with pytest.raises(ERRORS[case.error]) as err:
        _ingest(spark, base_config.with_overrides(sets))
    message = str(err.value)
    for part in case.message:
        assert part.replace("{file}", str(path)).replace("{dir}", str(folder)) in message, case.why
    assert "Traceback" not in message and "\tat " not in message  # no JVM or Python stack in the text
    warehouse = tmp_path / "warehouse"
    if warehouse.is_dir():
        store = TableStore(spark, base_config.with_overrides([f"storage.root={warehouse}"]).storage)
        assert all(store.version(t) is None for t in T.CATALOG), "a failed ingest must commit nothing"


@pytest.mark.parametrize("name", ["gz-that-is-not-gzip", "utf16-configured", "truncated-gzip-found-by-spark"])
def test_cli_prints_one_clear_error_without_a_traceback(
    name: str, spark: SparkSession, base_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in ERROR_CASES if c.name == name)
    sets, path, _ = _error_setup(case, base_config, tmp_path)
    s = base_config.spark  # the shared session's own settings, so that the CLI reuses it unchanged
    sets += [
        f"spark.master={s.master}",
        f"spark.shuffle_partitions={s.shuffle_partitions}",
        "spark.ui_enabled=false",
        f"spark.checkpoint_dir={s.checkpoint_dir}",
    ]
    assert main([arg for s_ in sets for arg in ("--set", s_)] + ["ingest"]) == 2
    out = capsys.readouterr()
    first = out.err[out.err.index("error: ") :].splitlines()[0]
    assert ("ingest.source.encoding" if case.error == "ConfigError" else str(path)) in first
    assert "Traceback" not in out.err + out.out


def test_every_corpus_file_is_in_the_table() -> None:
    listed = {c.file for c in CASES if not c.make} | {name for c in CASES for name in c.also}
    committed = {
        str(p.relative_to(HOSTILE))
        for p in HOSTILE.rglob("*")
        if p.is_file() and p.name not in ("expected.toml", ".gitattributes")
    }
    assert committed == listed
    assert {c.make for c in CASES if c.make} | {m for c in CASES for m in c.also_make.values()} <= set(MAKERS)
    assert len({c.name for c in CASES}) == len(CASES)
