"""Shared fixtures: one local SparkSession for the whole suite, temp table roots, real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.runs import RunContext

    def run(cfg: Config, *overrides: str) -> IngestReport:
        c = cfg.with_overrides(list(overrides))
        return run_ingest(spark, c, RunContext.new("ingest", c))

    return run


def table_versions(store: TableStore) -> dict[str, int | None]:
    """Version of every catalogued table (None when absent)."""
    from recsys_spark import tables as T

    return {t: store.version(t) for t in T.CATALOG}
