"""Shared fixtures: one local SparkSession for the whole suite, temp table roots, real data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recsys_spark.config.loader import load_config
from recsys_spark.config.schema import Config

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from recsys_spark.pipeline.ingest import IngestReport
    from recsys_spark.storage.store import TableStore

    IngestRun = Callable[..., IngestReport]
    """The ``ingest`` fixture: runs the ingest job with a config and ``--set`` style overrides."""

REPO = Path(__file__).resolve().parent.parent


def _shared_data() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    data = _shared_data()
    if data.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real datasets not found at {data} (set RECSYS_SHARED_DATA to run them)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def synthetic_args(root: Path | str, tmp: Path, **sets: object) -> list[str]:
    """``--set`` options for a CLI run on a small synthetic log: tables under ``root``, the raw
    log in ``tmp/raw``, reports in ``tmp/reports``, a local session; ``sets`` add or override
    keys (dotted names, so pass them as ``**{"als.rank": 4}``)."""
    every: dict[str, object] = {
        "storage.root": root,
        "generate.output": tmp / "raw",
        "ingest.source.path": tmp / "raw",
        "ingest.source.preset": "synthetic",
        "candidates.k": 10,
        "evaluation.ks": "[10]",
        "evaluation.output_dir": tmp / "reports",
        "spark.master": "local[2]",
        "spark.ui_enabled": "false",
        **sets,
    }
    return [a for k, v in every.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared_data()


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Defaults tuned for a fast suite; tests derive their own roots with ``with_overrides``.

    The suite's tables are tiny, so its time is Spark's fixed cost per query. Adaptive execution
    re-plans every shuffle and whole-stage codegen compiles every new plan; with both off, the ALS,
    candidates and evaluation tests took 188 s against 233 s (the same files, one run each). The
    jobs the suite starts as processes of their own (jobs/ under spark-submit, the cluster
    walkthrough, the crash writers, the concurrent ingests) keep Spark's defaults, so the plans
    users run are still exercised.
    """
    tmp = tmp_path_factory.mktemp("recsys")
    return load_config(
        None,
        [
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.ui_enabled=false",
            "spark.driver_memory=4g",
            f"spark.checkpoint_dir={tmp / 'checkpoints'}",
            f"storage.root={tmp / 'warehouse'}",
            'spark.conf={"spark.sql.adaptive.enabled" = "false", "spark.sql.codegen.wholeStage" = "false"}',
        ],
    )


@pytest.fixture(scope="session")
def spark(base_config: Config) -> Iterator[SparkSession]:
    from recsys_spark.session import build_session

    session = build_session(base_config.spark, base_config.storage, app_name="recsys-spark-tests")
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _release_spark_caches(request: pytest.FixtureRequest) -> Iterator[None]:
    """Free whatever a test left cached, so one shared driver heap lasts the whole suite."""
    yield
    if "spark" not in request.fixturenames:
        return
    session = request.getfixturevalue("spark")
    session.catalog.clearCache()
    for _, rdd in session.sparkContext._jsc.getPersistentRDDs().items():
        rdd.unpersist(False)


@pytest.fixture
def cfg(base_config: Config, tmp_path: Path) -> Config:
    """A config whose table root and raw-data dirs are private to the test."""
    return base_config.with_overrides(
        [
            f"storage.root={tmp_path / 'warehouse'}",
            f"generate.output={tmp_path / 'raw'}",
            f"ingest.source.path={tmp_path / 'raw'}",
        ]
    )


@pytest.fixture
def store(spark: SparkSession, cfg: Config) -> TableStore:
    from recsys_spark.storage.store import TableStore

    return TableStore(spark, cfg.storage)


@pytest.fixture
def ingest(spark: SparkSession) -> IngestRun:
    """Run the ingest job with ``cfg`` plus ``--set`` style overrides; returns its report."""

    def run(cfg: Config, *overrides: str) -> IngestReport:
        return _run_ingest(spark, cfg.with_overrides(list(overrides)))

    return run


def _run_ingest(spark: SparkSession, cfg: Config) -> IngestReport:
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.runs import RunContext

    return run_ingest(spark, cfg, RunContext.new("ingest", cfg))


#: JVM options for the short-lived Spark processes the suite starts (crash writers, ingest racers,
#: spark-submit jobs): the client JIT alone, which compiles less and sooner, and the serial
#: collector, which starts no GC threads. Both only change how fast a JVM warms up, not what it
#: runs. On these 2 cores a process's start-up and first job took 14 s against 18-22 s with the
#: defaults (while another suite ran), and the three concurrent-ingest tests, whose racing JVMs
#: share the cores, 143 s against 181 s; the crash tests did not move (194 s, 200 s). The suite's
#: own long-lived session keeps the defaults.
QUICK_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a Spark process the suite starts: this one's, with quick-start JVMs."""
    return {**os.environ, "JAVA_TOOL_OPTIONS": QUICK_JVM_OPTIONS, **extra}


#: name -> (file under ../shared/data, ingest overrides): the datasets more than one test reads.
_SHARED_INGESTS = {
    "ml-latest-small": ("ml-latest-small/ratings.csv", ["ingest.source.preset=movielens-csv"]),
    "lastfm-2k": (
        "hetrec2011-lastfm-2k/user_artists.dat",
        ["ingest.source.preset=lastfm-plays", "ingest.value_transform=log1p"],
    ),
}


@dataclass(frozen=True)
class IngestedDataset:
    """A public dataset ingested once per suite (``ingested_dataset``); read it, never write to it."""

    config: Config
    """The config it was ingested with (its own table root)."""
    report: IngestReport
    """What that ingest reported."""
    overrides: list[str]
    """The ``--set`` overrides naming the dataset's file and its ingest settings."""

    def copy_to(self, root: Path) -> None:
        """Its tables under ``root``, for a test that writes tables of its own beside them."""
        shutil.copytree(self.config.storage.root, root, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def ingested_dataset(
    spark: SparkSession, base_config: Config, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], IngestedDataset]:
    """Ingest ml-latest-small or Last.fm 2K at most once for the whole suite.

    Both are read by an ingest test and by an evaluation test, with the same ingest settings;
    ingesting each once saves an ingest of about 100k rows per dataset.
    """
    done: dict[str, IngestedDataset] = {}

    def get(name: str) -> IngestedDataset:
        if name not in done:
            path, settings = _SHARED_INGESTS[name]
            overrides = [f"ingest.source.path={shared_data / path}", *settings]
            root = tmp_path_factory.mktemp(f"ingested-{name}")
            c = base_config.with_overrides([f"storage.root={root / 'warehouse'}", *overrides])
            done[name] = IngestedDataset(c, _run_ingest(spark, c), overrides)
        return done[name]

    return get


def table_versions(store: TableStore) -> dict[str, int | None]:
    """Version of every catalogued table (None when absent)."""
    from recsys_spark import tables as T

    return {t: store.version(t) for t in T.CATALOG}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on 127.0.0.1 for the whole suite (no persistence), stopped at the end.

    Skipped when redis-server is not installed, except in CI, where `.ci/run` installs it and a
    missing server must fail rather than pass by skipping.
    """
    from recsys_spark.dev import redis_server

    server = redis_server.start(tmp_path_factory.mktemp("redis"))
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed: .ci/run installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    yield server.url
    server.stop()
