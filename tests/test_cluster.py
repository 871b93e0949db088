"""The pipeline on a real multi-process Spark cluster: a standalone master and two worker JVMs on
127.0.0.1, jobs submitted with spark-submit and the library shipped with --py-files.

* The README's "Running on a cluster" walkthrough runs verbatim, and its tables equal those of a
  local-mode run of the same config (identical where the stage is deterministic, evaluation
  metrics within a stated tolerance where ALS float sums may be ordered differently).
* An executor JVM is killed in the middle of an ingest stage: the lost tasks are retried and the
  tables still come out identical.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import devcluster
from recsys_spark import tables as T
from recsys_spark.config import StorageConfig
from recsys_spark.storage import TableStore

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
#: What the walkthrough needs from the repository; linked into a scratch folder so that the run
#: (data/cluster, .cluster, dist, build) never touches the working tree.
_LINKED = ("Makefile", "pyproject.toml", "README.md", "recsys_spark", "jobs", "conf")
_CONFIG = "conf/local-cluster.toml"
#: Absolute tolerance on every evaluation metric of an ALS-based model (cluster vs local mode).
METRIC_TOLERANCE = 0.02
#: Columns that name the run which wrote a row, not its content.
_RUN_COLUMNS = {"run_id", "model_version", "ingested_at", "rejected_at", "created_at", "trained_at",
                "evaluated_at", "mtime_ms"}
_SUBMIT_TIMEOUT_S = 1800


def readme_cluster_block() -> str:
    """The bash block of README "Running on a cluster" that the walkthrough test runs."""
    text = (REPO / "README.md").read_text()
    marker = text.index("<!-- tested by tests/test_cluster.py::test_readme_cluster_walkthrough")
    match = re.compile(r"```bash\n(.*?)```", re.S).search(text, marker)
    assert match, "README: no bash block after the cluster walkthrough marker"
    return match.group(1)


def _scratch_checkout(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in _LINKED:
        (folder / name).symlink_to(REPO / name)
    (folder / ".venv").symlink_to(VENV)
    return folder


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _venv_is_current() -> None:
    # make would otherwise rebuild the virtualenv from the scratch folder (an editable install
    # pointing there); the suite runs from a set-up virtualenv, so this only trips on a stale one
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.fail(f"{VENV} is older than pyproject.toml: run `make setup` first")


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """The README block, run verbatim by bash in a scratch checkout (cluster up, six jobs, down)."""
    _venv_is_current()
    work = _scratch_checkout(tmp_path_factory.mktemp("walkthrough") / "checkout")
    try:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_cluster_block()], cwd=work, env=_env(),
                              capture_output=True, text=True, timeout=_SUBMIT_TIMEOUT_S)
    finally:
        devcluster.stop(work / ".cluster")  # a failed job leaves the cluster up: set -e skips cluster-down
    yield work, proc


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config in local mode (local[2], the cluster's two cores), one `recsys-spark demo`."""
    work = _scratch_checkout(tmp_path_factory.mktemp("local") / "checkout")
    proc = subprocess.run([str(VENV / "bin" / "recsys-spark"), "--config", _CONFIG, "--set", "spark.master=local[2]",
                           "--set", "spark.driver_memory=2g", "--set", "spark.ui_enabled=false", "demo"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=_SUBMIT_TIMEOUT_S)
    assert proc.returncode == 0, f"local-mode reference run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return work


def _store(spark: SparkSession, work: Path) -> TableStore:
    return TableStore(spark, StorageConfig(root=str(work / "data" / "cluster" / "warehouse")))


def _content(df: DataFrame) -> DataFrame:
    """The rows without the columns that only say which run wrote them. Source file paths are made
    relative to the checkout, without the random id Spark puts in each generated file's name."""
    for column in ("source_file", "path"):
        if column in df.columns:
            relative = F.regexp_extract(column, r"(data/cluster/.*)$", 1)
            df = df.withColumn(column, F.regexp_replace(relative, r"part-(\d+)-[0-9a-f-]{36}", "part-$1"))
    return df.drop(*[c for c in df.columns if c in _RUN_COLUMNS])


def _assert_same(a: DataFrame, b: DataFrame, approx: bool = False) -> None:
    a, b = _content(a), _content(b)
    if approx:
        assert_approx_df_equality(a, b, precision=1e-6, ignore_row_order=True, ignore_nullable=True)
    else:
        assert_df_equality(a, b, ignore_row_order=True, ignore_nullable=True)


def test_readme_cluster_walkthrough(walkthrough: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, proc = walkthrough
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the README cluster walkthrough failed:\n{said[-6000:]}"
    assert "local cluster up at spark://127.0.0.1:" in said
    assert (work / "dist" / "recsys_spark.zip").exists()
    assert not (work / ".cluster" / "cluster.json").exists(), "make cluster-down left the cluster state behind"
    leftovers = subprocess.run(["pgrep", "-f", f"--work-dir {work}/.cluster"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "cluster JVMs still running after make cluster-down"
    # every job really ran on the standalone master, not in local mode
    apps = list((work / ".cluster" / "work").glob("worker-*/app-*"))
    assert len({a.name for a in apps}) == 6, f"expected 6 applications on the workers, found {apps}"


@pytest.mark.parametrize("table", [T.INTERACTIONS, T.USERS, T.ITEMS, T.INTERACTION_MATRIX, T.REJECTED_INTERACTIONS,
                                   T.INGESTED_FILES, T.POPULAR_ITEMS])
def test_ingest_tables_equal_local_mode(spark: SparkSession, walkthrough, local_run: Path,  # noqa: ANN001
                                        table: str) -> None:
    cluster, local = _store(spark, walkthrough[0]), _store(spark, local_run)
    _assert_same(cluster.read(table), local.read(table))


def test_item_item_tables_equal_local_mode(spark: SparkSession, walkthrough, local_run: Path) -> None:  # noqa: ANN001
    cluster, local = _store(spark, walkthrough[0]), _store(spark, local_run)
    where = "method = 'cosine'"
    _assert_same(cluster.read(T.ITEM_NEIGHBORS, where=where), local.read(T.ITEM_NEIGHBORS, where=where), approx=True)
    where = "strategy = 'item_item'"
    _assert_same(cluster.read(T.USER_CANDIDATES, where=where), local.read(T.USER_CANDIDATES, where=where),
                 approx=True)


def test_evaluation_metrics_match_local_mode(spark: SparkSession, walkthrough, local_run: Path) -> None:  # noqa: ANN001
    def metrics(store: TableStore) -> dict[tuple, float]:
        rows = store.read(T.EVALUATION_SUMMARY).collect()
        return {(r["split"], r["model"], r["metric"], r["k"]): r["value"] for r in rows}

    cluster, local = metrics(_store(spark, walkthrough[0])), metrics(_store(spark, local_run))
    assert cluster.keys() == local.keys() and len(cluster) > 10
    for key, value in cluster.items():
        exact = key[1] in ("item_item", "popularity", "random")
        tolerance = 1e-9 if exact else METRIC_TOLERANCE
        assert value == pytest.approx(local[key], abs=tolerance, nan_ok=True), f"{key}: cluster {value}, local {local[key]}"


# -- an executor killed mid-stage ----------------------------------------------------------------


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read().decode())


class _ExecutorKiller(threading.Thread):
    """Watches the driver's REST API and SIGKILLs the JVM of an executor that is running tasks."""

    def __init__(self, state: devcluster.ClusterState, ui: str, after_s: float) -> None:
        super().__init__(daemon=True)
        self.state, self.ui, self.after_s = state, ui, after_s
        self.killed: dict[str, object] | None = None
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set() and self.killed is None:
            time.sleep(0.05)
            try:
                apps = _get_json(f"{self.ui}/api/v1/applications")
                if not apps or time.monotonic() - start < self.after_s:
                    continue
                app = apps[0]["id"]
                stages = _get_json(f"{self.ui}/api/v1/applications/{app}/stages?status=active")
                if not any(s["numActiveTasks"] > 0 and s["numCompleteTasks"] > 0 for s in stages):
                    continue  # in the middle of a stage: some of its tasks done, others running
                busy = [e for e in _get_json(f"{self.ui}/api/v1/applications/{app}/executors")
                        if e["id"] != "driver" and e["activeTasks"] > 0]
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
                continue
            for executor in busy:
                pid = _executor_pid(self.state, app, executor["id"])
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = {"executor": executor["id"], "pid": pid, "app": app,
                                   "stages": [s["stageId"] for s in stages]}
                    return


def _executor_pid(state: devcluster.ClusterState, app: str, executor_id: str) -> int | None:
    for pid in devcluster.executor_pids(state, app):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--executor-id" in args and args[args.index(b"--executor-id") + 1] == executor_id.encode():
            return pid
    return None


def _events(event_dir: Path) -> list[dict]:
    logs = [p for p in event_dir.iterdir() if p.is_file()]
    assert len(logs) == 1, f"expected one event log in {event_dir}, found {logs}"
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def test_executor_killed_mid_stage_is_retried(spark: SparkSession, walkthrough, local_run: Path,  # noqa: ANN001
                                              tmp_path: Path) -> None:
    work = walkthrough[0]
    state = devcluster.start(tmp_path / "cluster", port=0)
    ui_port, event_dir = devcluster.free_port(), tmp_path / "events"
    event_dir.mkdir()
    root = tmp_path / "warehouse"
    cmd = [str(VENV / "bin" / "spark-submit"), "--master", state.master_url, "--driver-memory", "2g",
           "--conf", "spark.ui.enabled=true", "--conf", f"spark.ui.port={ui_port}",
           "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{event_dir}",
           "--conf", "spark.eventLog.compress=false",
           "--py-files", str(work / "dist" / "recsys_spark.zip"), str(work / "jobs" / "ingest.py"),
           "--config", _CONFIG, "--set", f"storage.root={root}",
           "--set", f"ingest.source.path={work / 'data' / 'cluster' / 'raw' / 'events'}"]
    env = {**_env(), "PYSPARK_PYTHON": str(VENV / "bin" / "python")}
    # a few seconds in: past session start-up and the first (single-task) file listing jobs
    killer = _ExecutorKiller(state, f"http://127.0.0.1:{ui_port}", after_s=5.0)
    try:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        killer.start()
        out, _ = proc.communicate(timeout=_SUBMIT_TIMEOUT_S)
    finally:
        killer.done.set()
        devcluster.stop(tmp_path / "cluster")
    assert proc.returncode == 0, f"ingest failed after the executor kill:\n{out[-4000:]}"
    assert killer.killed, "no executor was caught running tasks in the middle of a stage"

    events = _events(event_dir)
    lost = [e for e in events if e["Event"] == "SparkListenerTaskEnd"
            and e["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
    assert lost, "no task failed with ExecutorLostFailure: the kill did not hit a running task"
    assert any(e["Event"] == "SparkListenerExecutorRemoved" and e["Executor ID"] == killer.killed["executor"]
               for e in events)
    # every lost task was run again and succeeded: same stage, same partition, a later attempt
    succeeded = {(e["Stage ID"], e["Task Info"]["Index"]) for e in events if e["Event"] == "SparkListenerTaskEnd"
                 and e["Task End Reason"]["Reason"] == "Success"}
    for e in lost:
        assert (e["Stage ID"], e["Task Info"]["Index"]) in succeeded, f"lost task never re-run: {e['Task Info']}"

    killed_run = TableStore(spark, StorageConfig(root=str(root)))
    local = _store(spark, local_run)
    for table in (T.INTERACTIONS, T.USERS, T.ITEMS, T.INTERACTION_MATRIX, T.REJECTED_INTERACTIONS):
        _assert_same(killed_run.read(table), local.read(table))
