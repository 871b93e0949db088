"""The pipeline on a real multi-process Spark cluster: a standalone master and two worker JVMs on
127.0.0.1, jobs submitted with spark-submit and the library shipped with --py-files.

* The README's "Running on a cluster" walkthrough runs verbatim, and its tables equal those of a
  local-mode run of the same config (identical where the stage is deterministic, evaluation
  metrics within a stated tolerance where ALS float sums may be ordered differently).
* An executor JVM is killed in the middle of a task of the item-similarity job: the lost task is
  retried and the neighbours still come out identical.
* The same in the middle of an iteration of the blocks ALS engine: the factors equal a local fit's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import StorageConfig
from recsys_spark.dev import cluster as devcluster
from recsys_spark.storage.store import TableStore
from tests.conftest import QUICK_JVM_OPTIONS

pytestmark = pytest.mark.cluster

Walkthrough = tuple[Path, subprocess.CompletedProcess[str]]
"""The ``walkthrough`` fixture: the scratch checkout, and the finished bash run of the README block."""

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
#: What the walkthrough needs from the repository; linked into a scratch folder so that the run
#: (data/cluster, .cluster, dist, build) never touches the working tree.
_LINKED = ("Makefile", "pyproject.toml", "README.md", "recsys_spark", "jobs", "conf")
_CONFIG = "conf/local-cluster.toml"
#: Absolute tolerance on every evaluation metric of an ALS-based model (cluster vs local mode).
METRIC_TOLERANCE = 0.02
#: Columns that name the run which wrote a row, not its content.
_RUN_COLUMNS = {
    "run_id",
    "model_version",
    "ingested_at",
    "rejected_at",
    "created_at",
    "trained_at",
    "evaluated_at",
    "mtime_ms",
}
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
    # master, workers, executors and drivers are all short-lived here: quick-start JVMs (conftest)
    env["JAVA_TOOL_OPTIONS"] = QUICK_JVM_OPTIONS
    return env


def _venv_is_current() -> None:
    # make would otherwise rebuild the virtualenv from the scratch folder (an editable install
    # pointing there); the suite runs from a set-up virtualenv, so this only trips on a stale one
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.fail(f"{VENV} is older than pyproject.toml: run `make setup` first")


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """The README block, run verbatim by bash in a scratch checkout (cluster up, six jobs, down)."""
    _venv_is_current()
    work = _scratch_checkout(tmp_path_factory.mktemp("walkthrough") / "checkout")
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_cluster_block()],
            cwd=work,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=_SUBMIT_TIMEOUT_S,
        )
    finally:
        devcluster.stop(work / ".cluster")  # a failed job leaves the cluster up: set -e skips cluster-down
    yield work, proc


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config in local mode (local[2], the cluster's two cores), one `recsys-spark demo`."""
    work = _scratch_checkout(tmp_path_factory.mktemp("local") / "checkout")
    proc = subprocess.run(
        [
            str(VENV / "bin" / "recsys-spark"),
            "--config",
            _CONFIG,
            "--set",
            "spark.master=local[2]",
            "--set",
            "spark.driver_memory=2g",
            "--set",
            "spark.ui_enabled=false",
            "demo",
        ],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=_SUBMIT_TIMEOUT_S,
    )
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
    # the runtime zip and wheel hold the library alone: no benchmarks, no developer tools
    for shipped in [work / "dist" / "recsys_spark.zip", *(work / "dist").glob("*.whl")]:
        with zipfile.ZipFile(shipped) as z:
            names = z.namelist()
        assert "recsys_spark/serving/lookup.py" in names, shipped
        assert not [n for n in names if n.startswith(("recsys_spark/bench/", "recsys_spark/dev/"))], shipped
    assert list((work / "dist").glob("*.whl")), "make dist built no wheel"
    assert not (work / ".cluster" / "cluster.json").exists(), "make cluster-down left the cluster state behind"
    leftovers = subprocess.run(["pgrep", "-f", f"--work-dir {work}/.cluster"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "cluster JVMs still running after make cluster-down"
    # every job really ran on the standalone master, not in local mode
    apps = list((work / ".cluster" / "work").glob("worker-*/app-*"))
    assert len({a.name for a in apps}) == 7, f"expected 7 applications on the workers, found {apps}"
    # the nightly job after the stage jobs: the same tables, so every stage is current, and the
    # gate publishes them (nothing was published before)
    runs = DeltaTable(str(work / "data" / "cluster" / "warehouse" / T.RUNS)).to_pyarrow_table().to_pylist()
    night = next(r for r in runs if r["job"] == "nightly")
    assert night["status"] == "succeeded" and json.loads(night["output_versions"]) == {T.PUBLISHED: [0]}
    stages = json.loads(night["details"])["stages"]
    assert [s["stage"] for s in stages][:2] == ["ingest", "train-als"]
    assert [s["stage"] for s in stages if s["ran"]] == ["publish"]


@pytest.mark.parametrize(
    "table",
    [
        T.INTERACTIONS,
        T.USERS,
        T.ITEMS,
        T.INTERACTION_MATRIX,
        T.REJECTED_INTERACTIONS,
        T.INGESTED_FILES,
        T.POPULAR_ITEMS,
    ],
)
def test_ingest_tables_equal_local_mode(
    spark: SparkSession,
    walkthrough: Walkthrough,
    local_run: Path,
    table: str,
) -> None:
    cluster, local = _store(spark, walkthrough[0]), _store(spark, local_run)
    _assert_same(cluster.read(table), local.read(table))


def test_item_item_tables_equal_local_mode(spark: SparkSession, walkthrough: Walkthrough, local_run: Path) -> None:
    cluster, local = _store(spark, walkthrough[0]), _store(spark, local_run)
    where = "method = 'cosine'"
    _assert_same(cluster.read(T.ITEM_NEIGHBORS, where=where), local.read(T.ITEM_NEIGHBORS, where=where), approx=True)
    where = "strategy = 'item_item'"
    _assert_same(cluster.read(T.USER_CANDIDATES, where=where), local.read(T.USER_CANDIDATES, where=where), approx=True)


def test_evaluation_metrics_match_local_mode(spark: SparkSession, walkthrough: Walkthrough, local_run: Path) -> None:
    def metrics(store: TableStore) -> dict[tuple, float]:
        rows = store.read(T.EVALUATION_SUMMARY).collect()
        return {(r["split"], r["model"], r["metric"], r["k"]): r["value"] for r in rows}

    cluster, local = metrics(_store(spark, walkthrough[0])), metrics(_store(spark, local_run))
    assert cluster.keys() == local.keys() and len(cluster) > 10
    for key, value in cluster.items():
        exact = key[1] in ("item_item", "popularity", "random")
        tolerance = 1e-9 if exact else METRIC_TOLERANCE
        assert value == pytest.approx(local[key], abs=tolerance, nan_ok=True), (
            f"{key}: cluster {value}, local {local[key]}"
        )


# -- an executor killed mid-stage ----------------------------------------------------------------


class _ExecutorKiller(threading.Thread):
    """Watches the driver's REST API and SIGKILLs the JVM of an executor in the middle of a task.

    A task seen running in two polls at least ``_MIN_TASK_AGE_S`` apart is a long one (a Python
    worker starting, a block of cosine products), so the kill lands inside it rather than between
    tasks. The task's status is then checked; if it slipped through and succeeded, another executor
    is killed, up to ``_MAX_KILLS`` times.
    """

    _MIN_TASK_AGE_S = 0.3
    _MAX_KILLS = 3

    def __init__(self, state: devcluster.ClusterState, ui: str, description: str = "") -> None:
        super().__init__(daemon=True)
        self.state, self.ui = state, ui
        #: only tasks of stages whose job description starts with this are killed
        self.description = description
        self.kills: list[dict[str, object]] = []
        self.hit = False
        self.done = threading.Event()

    def _api(self, path: str) -> object:
        return devcluster.get_json(f"{self.ui}/api/v1/applications{path}")

    def run(self) -> None:
        seen: dict[int, float] = {}
        while not self.done.is_set() and not self.hit and len(self.kills) < self._MAX_KILLS:
            time.sleep(0.05)
            try:
                app = self._api("")[0]["id"]
                for stage in self._api(f"/{app}/stages?status=active"):
                    if not str(stage.get("description") or "").startswith(self.description):
                        continue
                    where = f"/{app}/stages/{stage['stageId']}/{stage['attemptId']}"
                    for task in self._api(f"{where}/taskList?status=RUNNING&length=1000"):
                        first = seen.setdefault(task["taskId"], time.monotonic())
                        old_enough = time.monotonic() - first >= self._MIN_TASK_AGE_S
                        if old_enough and self._kill(app, task, where, str(stage.get("description") or "")):
                            raise StopIteration
            except StopIteration:
                continue
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
                continue

    def _kill(self, app: str, task: dict, where: str, description: str) -> bool:
        pids = devcluster.executor_pids(self.state, app, str(task["executorId"]))
        if not pids:
            return False
        pid = pids[0]
        os.kill(pid, signal.SIGKILL)
        self.kills.append(
            {"executor": task["executorId"], "pid": pid, "task": task["taskId"], "stage": where, "job": description}
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the driver learns of the loss within seconds
            time.sleep(0.5)
            try:
                tasks = self._api(f"{where}/taskList?length=10000")
            except (urllib.error.URLError, OSError, ValueError):
                continue
            status = next((t["status"] for t in tasks if t["taskId"] == task["taskId"]), None)
            if status in ("FAILED", "KILLED"):
                self.hit = True
                return True
            if status == "SUCCESS":
                return True  # too late: try another task
        return True


def _events(event_dir: Path) -> list[dict]:
    # one file with rolling off; Spark 4 rolls by default (a folder of events_N_<app> files)
    logs = [p for p in event_dir.rglob("*") if p.is_file() and not p.name.startswith(("appstatus", "."))]
    assert logs, f"no event log in {event_dir}: {list(event_dir.rglob('*'))}"
    logs.sort(key=lambda p: int(m.group(1)) if (m := re.match(r"events_(\d+)_", p.name)) else 0)
    return [json.loads(line) for p in logs for line in p.read_text().splitlines() if line.strip()]


def _submit_with_killer(
    work: Path, tmp_path: Path, job: str, sets: list[str], description: str = ""
) -> tuple[subprocess.Popen[str], str, _ExecutorKiller, list[dict]]:
    """``job`` under spark-submit on a fresh two-worker cluster, an executor SIGKILLed in the middle
    of a task (of a job whose description starts with ``description``): the process, its output,
    the killer and the driver's event log."""
    state = devcluster.start(tmp_path / "cluster", port=0)
    ui_port, event_dir = devcluster.free_port(), tmp_path / "events"
    event_dir.mkdir()
    cmd = [
        str(VENV / "bin" / "spark-submit"),
        "--master",
        state.master_url,
        "--driver-memory",
        "2g",
        *("--conf", "spark.ui.enabled=true", "--conf", f"spark.ui.port={ui_port}"),
        *("--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{event_dir}"),
        *("--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false"),
        "--py-files",
        str(work / "dist" / "recsys_spark.zip"),
        str(work / "jobs" / job),
        "--config",
        _CONFIG,
        *[a for kv in sets for a in ("--set", kv)],
    ]
    env = {**_env(), "PYSPARK_PYTHON": str(VENV / "bin" / "python")}
    killer = _ExecutorKiller(state, f"http://127.0.0.1:{ui_port}", description)
    try:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        killer.start()
        out, _ = proc.communicate(timeout=_SUBMIT_TIMEOUT_S)
    finally:
        killer.done.set()
        devcluster.stop(tmp_path / "cluster")
    return proc, out, killer, (_events(event_dir) if proc.returncode == 0 else [])


def _assert_lost_tasks_rerun(killer: _ExecutorKiller, events: list[dict]) -> None:
    """Some task failed with its executor, that executor was removed, and every lost partition ran
    again in the same stage and succeeded."""
    assert killer.kills, "no executor was caught in the middle of a task"
    lost = [
        e
        for e in events
        if e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "ExecutorLostFailure"
    ]
    assert lost, f"no task failed with ExecutorLostFailure after kills {killer.kills}"
    removed = {e["Executor ID"] for e in events if e["Event"] == "SparkListenerExecutorRemoved"}
    assert {str(k["executor"]) for k in killer.kills} <= removed

    # every lost task was run again and succeeded: same stage, same partition, a later attempt. By
    # partition, not by the task's index: when the loss also cost shuffle output, the stage is
    # resubmitted for the missing partitions alone, and their indices restart at 0
    def partition(e: dict) -> tuple[int, int]:
        return e["Stage ID"], e["Task Info"]["Partition ID"]

    succeeded = {
        partition(e)
        for e in events
        if e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "Success"
    }
    for e in lost:
        assert partition(e) in succeeded, f"lost task never re-run: {e['Task Info']}"


def test_executor_killed_mid_stage_is_retried(
    spark: SparkSession,
    walkthrough: Walkthrough,
    local_run: Path,
    tmp_path: Path,
) -> None:
    """item-similarity (cosine) on the cluster, on a copy of the walkthrough's tables, with an
    executor JVM SIGKILLed in the middle of a running task: the lost task is re-run, the job
    succeeds, and the neighbours equal the local-mode run's."""
    work = walkthrough[0]
    root = tmp_path / "warehouse"
    shutil.copytree(work / "data" / "cluster" / "warehouse", root)
    proc, out, killer, events = _submit_with_killer(
        work, tmp_path, "item_similarity.py", [f"storage.root={root}", f"spark.checkpoint_dir={tmp_path / 'ckpt'}"]
    )
    assert proc.returncode == 0, f"item-similarity failed after the executor kill:\n{out[-4000:]}"
    _assert_lost_tasks_rerun(killer, events)

    where = "method = 'cosine'"
    killed_run = TableStore(spark, StorageConfig(root=str(root)))
    _assert_same(
        killed_run.read(T.ITEM_NEIGHBORS, where=where),
        _store(spark, local_run).read(T.ITEM_NEIGHBORS, where=where),
        approx=True,
    )


@pytest.mark.parametrize("exchange", ["broadcast", "barrier"])
def test_blocks_als_with_an_executor_killed_mid_iteration_equals_a_local_fit(
    spark: SparkSession, walkthrough: Walkthrough, tmp_path: Path, exchange: str
) -> None:
    """train-als with ``als.engine = "blocks"`` on the cluster, an executor JVM SIGKILLed inside a
    half-iteration (broadcast: 4 blocks a side, a job per half-iteration; barrier: the whole fit
    one stage of 2 tasks, one per task slot): the lost block is solved again (in the
    barrier, the stage runs again and resumes from the relay's last complete half-iteration), and
    the factors equal a local-mode fit of the same matrix and settings (the same blocks and seed:
    every block's solve is deterministic)."""
    from recsys_spark.config.schema import AlsConfig
    from recsys_spark.models.als import factor_frames, fit_als, training_frame

    work = walkthrough[0]
    root = tmp_path / "warehouse"
    shutil.copytree(work / "data" / "cluster" / "warehouse", root)
    blocks = 4 if exchange == "broadcast" else 2
    sets = {"engine": "blocks", "num_user_blocks": blocks, "num_item_blocks": blocks, "exchange": exchange}
    proc, out, killer, events = _submit_with_killer(
        work,
        tmp_path,
        "train_als.py",
        [
            f"storage.root={root}",
            f"spark.checkpoint_dir={tmp_path / 'ckpt'}",
            *(f"als.{k}={v}" for k, v in sets.items()),
        ],
        description="ALS blocks: iteration",
    )
    assert proc.returncode == 0, f"train-als (blocks) failed after the executor kill:\n{out[-4000:]}"
    _assert_lost_tasks_rerun(killer, events)
    assert all(str(k["job"]).startswith("ALS blocks: iteration") for k in killer.kills), killer.kills
    if exchange == "barrier":
        assert "ALS relay: task" in out and "connected again" in out, out[-4000:]

    store = TableStore(spark, StorageConfig(root=str(root)))
    cfg = AlsConfig(rank=16, max_iter=6, alpha=10.0, seed=42, **sets)  # conf/local-cluster.toml's [als]
    users, items = factor_frames(fit_als(training_frame(store.read(T.INTERACTION_MATRIX), cfg), cfg))
    for table, local, key in ((T.USER_FACTORS, users, "user_idx"), (T.ITEM_FACTORS, items, "item_idx")):
        written = {r[0]: r[1] for r in store.read(table).select(key, "factors").collect()}
        expected = {r[0]: r[1] for r in local.select(key, "factors").collect()}
        assert written.keys() == expected.keys()
        keys = sorted(expected)
        np.testing.assert_allclose([written[k] for k in keys], [expected[k] for k in keys], atol=1e-5)
