"""Concurrent ingests into one warehouse, with real processes.

Overlapping schedules (a retry while the first run still works, two cron hosts) start two ingests
of the same folder. Each racer is the real `recsys-spark ingest` (tests/_ingest_racer.py), held at
a barrier just before its first commit, so that both have read the same table versions and
computed their commits from them: the race is certain, not left to timing. Whatever the
interleaving, the tables must end exactly as one ingest leaves them: every event, id and ledger
row once. Ingests of different files must both land, and a racer killed between its commits
must leave tables that the survivor and a re-run complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.storage.store import TableStore
from tests.conftest import subprocess_env

if TYPE_CHECKING:
    from tests.conftest import IngestRun

REPO = Path(__file__).resolve().parent.parent
_TIMEOUT_S = 400
HEADER = "event_id,user_id,item_id,event_type,timestamp,value\n"


def _racer(root: Path, raw: Path, barrier: Path, parties: int, kill: str | None = None) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "tests._ingest_racer",
        str(root),
        str(raw),
        str(barrier),
        str(parties),
        *([kill] if kill else []),
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=subprocess_env(PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"racer timed out:\n{out[-3000:]}")
    return proc.returncode, out


def _race(root: Path, raws: list[Path], barrier: Path, kills: list[str | None] | None = None) -> list[tuple[int, str]]:
    """Start one racer per folder in ``raws``, half a second apart, and wait for all of them."""
    barrier.mkdir()
    procs = []
    for i, raw in enumerate(raws):
        procs.append(_racer(root, raw, barrier, len(raws), (kills or [None] * len(raws))[i]))
        time.sleep(0.5)
    return [_finish(p) for p in procs]


def _log(folder: Path, name: str, prefix: str, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{prefix}{i},u{i % 23},i{i % 17},{('view', 'click', 'purchase')[i % 3]},"
        f"2026-09-{1 + i % 5:02d}T{i % 24:02d}:00:00Z,1\n"
        for i in range(n)
    ]
    # a duplicate and a corrupt line, so that dedupe and quarantine race too
    (folder / name).write_text(HEADER + "".join(lines) + lines[0] + f"{prefix}bad,,i1,view,2026-09-01T00:00:00Z,1\n")


def _tables(store: TableStore, with_idx: bool = True) -> dict[str, DataFrame]:
    """Ingest's tables without run identity (run ids, times, file mtimes); dense ids optional,
    since ingests of different files number new ids in the order they land."""
    drop = ["run_id", "ingested_at", "rejected_at", "mtime_ms"] + ([] if with_idx else ["user_idx", "item_idx"])
    out = {}
    for t in (T.INTERACTIONS, T.USERS, T.ITEMS, T.REJECTED_INTERACTIONS, T.INGESTED_FILES):
        df = store.read(t)
        out[t] = df.drop(*[c for c in drop if c in df.columns])
    matrix = store.read(T.INTERACTION_MATRIX)
    if not with_idx:  # the matrix by original ids
        matrix = (
            matrix.join(store.read(T.USERS), "user_idx")
            .join(store.read(T.ITEMS), "item_idx")
            .select("user_id", "item_id", "confidence", "rating", "event_count", "last_event_time")
        )
    out[T.INTERACTION_MATRIX] = matrix
    return out


def _assert_one_ingest(got: TableStore, want: TableStore, with_idx: bool = True) -> None:
    for name, users in ((T.USERS, "user"), (T.ITEMS, "item")):
        ids = got.read(name)
        # an id map never holds an id, or an index, twice
        assert (
            ids.count() == ids.select(f"{users}_id").distinct().count() == ids.select(f"{users}_idx").distinct().count()
        )
    assert got.read(T.INTERACTIONS).groupBy("event_key").count().where(F.col("count") > 1).count() == 0
    mine, theirs = _tables(got, with_idx), _tables(want, with_idx)
    for table in theirs:
        assert_df_equality(
            mine[table], theirs[table], ignore_row_order=True, ignore_nullable=True, ignore_column_order=True
        )


def _clean(spark: SparkSession, ingest: IngestRun, cfg: Config, root: Path, *raws: Path) -> TableStore:
    for raw in raws:
        ingest(cfg.with_overrides([f"storage.root={root}", f"ingest.source.path={raw}"]))
    return TableStore(spark, cfg.with_overrides([f"storage.root={root}"]).storage)


def _store(spark: SparkSession, cfg: Config, root: Path) -> TableStore:
    return TableStore(spark, cfg.with_overrides([f"storage.root={root}"]).storage)


def test_two_ingests_of_the_same_files_at_once_store_everything_exactly_once(
    spark: SparkSession, ingest: IngestRun, cfg: Config, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    _log(raw, "a.csv", "a", 300)
    _log(raw, "b.csv", "b", 200)
    results = _race(tmp_path / "raced", [raw, raw], tmp_path / "barrier")
    for code, out in results:
        assert code == 0, out[-3000:]
    # the race happened: one racer lost at least one commit and started again on top of the winner
    assert any("race(s) lost to a concurrent ingest" in out for _, out in results), [o[-2000:] for _, o in results]
    got = _store(spark, cfg, tmp_path / "raced")
    _assert_one_ingest(got, _clean(spark, ingest, cfg, tmp_path / "clean", raw))
    assert got.read(T.INGESTED_FILES).count() == 2
    # both runs are in the manifest, and they succeeded
    runs = {r.status for r in got.read(T.RUNS).where(F.col("job") == "ingest").collect()}
    assert runs == {"succeeded"} and got.read(T.RUNS).count() == 2


def test_ingests_of_different_files_at_once_both_land(
    spark: SparkSession,
    ingest: IngestRun,
    cfg: Config,
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "raw-a", tmp_path / "raw-b"
    _log(a, "a.csv", "a", 300)
    _log(b, "b.csv", "b", 300)  # the same users and items as a.csv, other events
    _log(b, "c.csv", "c", 50)
    results = _race(tmp_path / "raced", [a, b], tmp_path / "barrier")
    for code, out in results:
        assert code == 0, out[-3000:]
    got = _store(spark, cfg, tmp_path / "raced")
    _assert_one_ingest(got, _clean(spark, ingest, cfg, tmp_path / "clean", a, b), with_idx=False)
    # ids are dense whichever run added them first
    for name, col in ((T.USERS, "user_idx"), (T.ITEMS, "item_idx")):
        idx = sorted(r[0] for r in got.read(name).select(col).collect())
        assert idx == list(range(len(idx)))


def test_an_ingest_killed_beside_a_running_one_leaves_tables_that_complete_cleanly(
    spark: SparkSession, ingest: IngestRun, cfg: Config, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    _log(raw, "a.csv", "a", 300)
    (killed_code, killed_out), (code, out) = _race(
        tmp_path / "raced", [raw, raw], tmp_path / "barrier", kills=["die-after-1", "late"]
    )
    assert killed_code == -signal.SIGKILL and "dying" in killed_out, killed_out[-3000:]
    assert code == 0, out[-3000:]
    raced = cfg.with_overrides([f"storage.root={tmp_path / 'raced'}", f"ingest.source.path={raw}"])
    rerun = ingest(raced)  # the nightly re-run after the crash
    assert rerun.files_skipped == 1 and not rerun.writes
    _assert_one_ingest(_store(spark, cfg, tmp_path / "raced"), _clean(spark, ingest, cfg, tmp_path / "clean", raw))
