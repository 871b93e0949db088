"""Crash safety and concurrent writers.

A writer process is SIGKILLed at several points of a table write (mid Parquet write, between the
Parquet write and the Delta commit, right after the commit) and of a multi-table ingest. Readers,
Spark and the Spark-free lookup API alike, see the previous version intact (or the new one, once
its commit has landed), orphaned files are never visible and ``vacuum`` removes them, and a re-run
succeeds. Two writers committing at once: one wins and the other fails with a clear conflict error,
or retries correctly; a lookup reader polling meanwhile always sees one complete version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import ConcurrentWriteError
from recsys_spark.serving.lookup import Recommendations
from recsys_spark.storage import delta_rs
from recsys_spark.storage.delta_log import TableHandle
from recsys_spark.storage.store import CommitInfo, TableStore
from tests._crash_writer import USERS, K, candidates
from tests.conftest import subprocess_env

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import IngestRun

REPO = Path(__file__).resolve().parent.parent
COMMIT = CommitInfo("test", "run-test", "cfg")
_TIMEOUT_S = 300


def _writer(root: Path, point: str, version: int, raw: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tests._crash_writer", str(root), point, str(version), *([str(raw)] if raw else [])]
    env = subprocess_env(PYTHONPATH=str(REPO))
    # a process group of its own: SIGKILL reaches the driver JVM and the Python workers too
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=_TIMEOUT_S)
    return proc.returncode, out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _scores_version(recs: list) -> set[int]:
    return {int(r.score // 1000) for r in recs}


def _write_folders(location: str) -> list[Path]:
    return [p for p in Path(location).iterdir() if p.is_dir() and not p.name.startswith(("_", "strategy="))]


def _assert_reads_version(spark: SparkSession, store: TableStore, root: Path, version: int) -> None:
    """Spark and the lookup API both see exactly the rows that ``version`` of the writer wrote."""
    assert_df_equality(
        store.read(T.USER_CANDIDATES),
        candidates(spark, version),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    recs = Recommendations.open(str(root))
    for user in ("u000", f"u{USERS - 1:03d}"):
        got = recs.for_user(user, k=K)
        assert [r.rank for r in got] == list(range(1, K + 1)) and _scores_version(got) == {version}


@pytest.fixture
def table_v0(spark: SparkSession, cfg: Config) -> tuple[TableStore, Path]:
    store = TableStore(spark, cfg.storage)
    store.write(candidates(spark, 0), T.USER_CANDIDATES, "overwrite", COMMIT, partition_by=["strategy"])
    return store, Path(cfg.storage.root)


@pytest.mark.parametrize("point", ["during-write", "before-commit", "after-commit"])
def test_sigkill_during_a_table_write(spark: SparkSession, table_v0: tuple[TableStore, Path], point: str) -> None:
    store, root = table_v0
    location = store.location(T.USER_CANDIDATES)
    before = set(_write_folders(location))
    proc = _writer(root, point, 1)
    if point == "during-write":
        # kill once Spark's tasks are writing Parquet into this write's own (new) folder
        deadline = time.monotonic() + _TIMEOUT_S
        while (
            not any(any(f.rglob("*.parquet")) for f in set(_write_folders(location)) - before)
            and time.monotonic() < deadline
        ):
            assert proc.poll() is None, f"the writer ended before it could be killed:\n{proc.stdout.read()}"
            time.sleep(0.1)
        _kill_group(proc)
    code, out = _finish(proc)
    assert code == -signal.SIGKILL, f"writer was not killed ({code}):\n{out[-3000:]}"

    landed = point == "after-commit"
    assert store.version(T.USER_CANDIDATES) == (1 if landed else 0)
    _assert_reads_version(spark, store, root, 1 if landed else 0)
    if not landed:
        # the killed write's folder holds Parquet files that no version names: invisible orphans
        committed = TableHandle(T.USER_CANDIDATES, location).delta().file_uris()
        orphans = [
            f
            for f in _write_folders(location)
            if any(f.rglob("*.parquet")) and not any(f"/{f.name}/" in u for u in committed)
        ]
        assert orphans, "the killed write left no files: the kill came too late to test anything"
        removed = store.vacuum(T.USER_CANDIDATES, retention_hours=0)
        assert removed and not any(f.exists() and any(f.rglob("*.parquet")) for f in orphans)
        _assert_reads_version(spark, store, root, 0)

    code, out = _finish(_writer(root, "none", 2))  # the re-run
    assert code == 0, out[-3000:]
    _assert_reads_version(spark, store, root, 2)


@pytest.fixture
def raw_log(spark: SparkSession, cfg: Config) -> Path:
    from recsys_spark.pipeline.generate import run_generate

    c = cfg.with_overrides(["generate.num_events=3000", "generate.num_users=200", "generate.num_items=80"])
    run_generate(spark, c)
    return Path(c.generate.output)


def _ingest_tables(store: TableStore) -> dict[str, DataFrame]:
    names = (T.INTERACTIONS, T.USERS, T.ITEMS, T.INTERACTION_MATRIX, T.INGESTED_FILES)
    return {t: store.read(t).drop("run_id", "ingested_at", "model_version") for t in names}


@pytest.mark.parametrize("commits_before_kill", [1, 2, 4])
def test_sigkill_between_the_commits_of_an_ingest(
    spark: SparkSession,
    ingest: IngestRun,
    cfg: Config,
    raw_log: Path,
    tmp_path: Path,
    commits_before_kill: int,
) -> None:
    root = tmp_path / "killed"
    proc = _writer(root, f"ingest-after-{commits_before_kill}", 0, raw_log)
    code, out = _finish(proc)
    assert code == -signal.SIGKILL and "dying" in out, f"ingest was not killed ({code}):\n{out[-3000:]}"
    killed = TableStore(spark, cfg.with_overrides([f"storage.root={root}"]).storage)
    landed = [t for t in T.CATALOG if killed.exists(t)]
    assert len(landed) == commits_before_kill  # each table write is one commit; the rest never appeared
    assert not killed.exists(T.INGESTED_FILES), "the ledger landed, so a re-run would skip the files"

    report = ingest(cfg.with_overrides([f"storage.root={root}"]))  # the re-run
    assert report.files_skipped == 0
    # events that landed before the kill are recognised, not added twice
    assert (report.events_added > 0) == (T.INTERACTIONS not in landed)
    clean = TableStore(spark, cfg.with_overrides([f"storage.root={tmp_path / 'clean'}"]).storage)
    ingest(cfg.with_overrides([f"storage.root={tmp_path / 'clean'}"]))
    got, want = _ingest_tables(killed), _ingest_tables(clean)
    for table in want:
        if table == T.INGESTED_FILES:
            got[table], want[table] = got[table].drop("mtime_ms"), want[table].drop("mtime_ms")
        assert_df_equality(got[table], want[table], ignore_row_order=True, ignore_nullable=True)


# -- concurrent writers --------------------------------------------------------------------------


def _racing(monkeypatch: pytest.MonkeyPatch, parties: int) -> threading.Barrier:
    """Hold every writer after its Parquet write until all have written: then they commit at once."""
    barrier = threading.Barrier(parties, timeout=120)
    add_actions = delta_rs._add_actions

    def synchronised(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        actions = add_actions(*args, **kwargs)
        barrier.wait()
        return actions

    monkeypatch.setattr(delta_rs, "_add_actions", synchronised)
    return barrier


def _in_threads(*calls: Callable[[], object]) -> list[object]:
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=_TIMEOUT_S)
    return results


def _frame(spark: SparkSession, tag: str, n: int) -> DataFrame:
    return spark.range(n).select(F.col("id").cast("int").alias("id"), F.lit(tag).alias("writer"))


def _race(
    spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch, table: str, mode: str
) -> list[object]:
    """Version 0 of ``table`` by a base writer (5 rows), then writers a (10 rows) and b (20 rows)
    committing in ``mode`` at the same moment; their results or exceptions."""
    store.write(_frame(spark, "base", 5), table, mode, COMMIT)
    _racing(monkeypatch, 2)
    return _in_threads(
        lambda: store.write(_frame(spark, "a", 10), table, mode, COMMIT),
        lambda: store.write(_frame(spark, "b", 20), table, mode, COMMIT),
    )


def test_two_overwrites_at_once_one_wins_cleanly(
    spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _race(spark, store, monkeypatch, "contested", "overwrite")
    outcomes = {"a": a, "b": b}
    failed = {k: v for k, v in outcomes.items() if isinstance(v, Exception)}
    rows = {
        r["writer"]: r["n"] for r in store.read("contested").groupBy("writer").agg(F.count("*").alias("n")).collect()
    }
    if failed:
        # one wins, the other gets a clear conflict error and leaves nothing behind
        assert len(failed) == 1, failed
        ((loser, exc),) = failed.items()
        assert isinstance(exc, ConcurrentWriteError) and "re-run" in str(exc) and "contested" in str(exc)
        winner = "b" if loser == "a" else "a"
        assert rows == {winner: {"a": 10, "b": 20}[winner]}
        assert store.version("contested") == 1
    else:
        # both committed, one after the other: the table is wholly the later one
        versions = sorted((v.version, k) for k, v in outcomes.items())
        assert [v for v, _ in versions] == [1, 2]
        later = versions[-1][1]
        assert rows == {later: {"a": 10, "b": 20}[later]}
    # the loser's files are gone (not left for vacuum): every write folder belongs to a commit
    location = store.location("contested")
    t = TableHandle("contested", location)
    ever = {u for v in range(store.version("contested") + 1) for u in t.delta(v).file_uris()}
    for folder in _write_folders(location):
        assert any(f"/{folder.name}/" in u for u in ever), f"orphaned write folder {folder.name}"


def test_two_appends_at_once_both_land(spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _race(spark, store, monkeypatch, "appended", "append")
    assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
    assert sorted([a.version, b.version]) == [1, 2]  # the later commit retried on top of the earlier
    rows = {
        r["writer"]: r["n"] for r in store.read("appended").groupBy("writer").agg(F.count("*").alias("n")).collect()
    }
    assert rows == {"base": 5, "a": 10, "b": 20}


def test_a_lookup_reader_always_sees_one_complete_version(
    spark: SparkSession, table_v0: tuple[TableStore, Path]
) -> None:
    store, root = table_v0
    versions = 4
    seen: list[set[int]] = []
    problems: list[str] = []
    stop = threading.Event()

    def read() -> None:
        recs = Recommendations(str(root), refresh_seconds=0.0)
        while not stop.is_set():
            recs.refresh()
            for user in ("u000", "u017", f"u{USERS - 1:03d}"):
                got = recs.for_user(user, k=K)
                if [r.rank for r in got] != list(range(1, K + 1)) or len(_scores_version(got)) != 1:
                    problems.append(f"{user}: {[(r.rank, r.score) for r in got]}")
                seen.append(_scores_version(got))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for v in range(1, versions + 1):
            store.write(candidates(spark, v), T.USER_CANDIDATES, "overwrite", COMMIT, partition_by=["strategy"])
            time.sleep(0.2)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not problems, problems[:5]
    observed = set().union(*seen)
    assert len(seen) > 10 and len(observed) >= 2, f"the reader saw only versions {observed} in {len(seen)} reads"


def test_a_crash_before_the_matrix_commit_is_repaired_by_the_rerun(
    spark: SparkSession,
    ingest: IngestRun,
    cfg: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second batch whose events landed but whose matrix did not: the re-run adds no events, and
    must still rebuild the matrix (a stale one would silently miss the batch)."""
    header = "event_id,user_id,item_id,event_type,timestamp,value\n"
    first, second = tmp_path / "raw" / "a.csv", tmp_path / "raw" / "b.csv"
    first.parent.mkdir()
    first.write_text(header + "".join(f"a{i},u{i % 7},i{i % 5},click,2026-09-01T00:{i:02d}:00Z,1\n" for i in range(40)))
    killed, clean = (
        cfg.with_overrides([f"storage.root={tmp_path / name}", f"ingest.source.path={first.parent}"])
        for name in ("killed", "clean")
    )
    ingest(killed)
    second.write_text(header + "".join(f"b{i},u{i % 9},i{i % 6},view,2026-09-02T00:{i:02d}:00Z,1\n" for i in range(30)))
    write = TableStore.write

    def crash_at_the_matrix(self: TableStore, df: DataFrame, table: str, *args: Any, **kwargs: Any) -> Any:
        if table == T.INTERACTION_MATRIX:
            raise KeyboardInterrupt("killed")  # not an Exception: nothing in the job may swallow it
        return write(self, df, table, *args, **kwargs)

    monkeypatch.setattr(TableStore, "write", crash_at_the_matrix)
    with pytest.raises(KeyboardInterrupt):
        ingest(killed)
    monkeypatch.setattr(TableStore, "write", write)
    report = ingest(killed)
    assert report.events_added == 0 and report.files_skipped == 1
    ingest(clean)
    got, want = (TableStore(spark, c.storage).read(T.INTERACTION_MATRIX) for c in (killed, clean))
    assert got.count() == want.count() > 0
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)


def test_two_conditional_appends_from_one_version_at_once_exactly_one_lands(
    spark: SparkSession, store: TableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both writers read version 0 and commit at the same moment: Delta's log takes one of them."""
    store.write(_frame(spark, "base", 5), "conditional", "append", COMMIT)
    _racing(monkeypatch, 2)
    a, b = _in_threads(
        lambda: store.write(_frame(spark, "a", 10), "conditional", "append", COMMIT, expected_version=0),
        lambda: store.write(_frame(spark, "b", 20), "conditional", "append", COMMIT, expected_version=0),
    )
    failed = [r for r in (a, b) if isinstance(r, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], ConcurrentWriteError), (a, b)
    assert "moved while this run worked" in str(failed[0])
    winner = "a" if failed[0] is b else "b"
    rows = {
        r["writer"]: r["n"] for r in store.read("conditional").groupBy("writer").agg(F.count("*").alias("n")).collect()
    }
    assert rows == {"base": 5, winner: {"a": 10, "b": 20}[winner]} and store.version("conditional") == 1
