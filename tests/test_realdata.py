"""Ingest of the public datasets in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.storage.store import TableStore
from tests.conftest import table_versions

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from tests.conftest import IngestedDataset, IngestRun

pytestmark = pytest.mark.realdata


def test_movielens_100k(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, shared_data: Path
) -> None:
    path = shared_data / "ml-100k" / "u.data"
    report = ingest(cfg, f"ingest.source.path={path}", "ingest.source.preset=movielens-100k")
    assert (report.rows_read, report.rows_rejected, report.events_added) == (100_000, 0, 100_000)
    assert (report.new_users, report.new_items) == (943, 1_682)
    assert store.read(T.INTERACTIONS).count() == 100_000
    assert store.read(T.USERS).count() == 943 and store.read(T.ITEMS).count() == 1_682
    matrix = store.read(T.INTERACTION_MATRIX)
    assert matrix.count() == 100_000
    counts = {r.rating: r["count"] for r in matrix.groupBy("rating").count().collect()}
    assert counts == {1.0: 6_110, 2.0: 11_370, 3.0: 27_145, 4.0: 34_174, 5.0: 21_201}
    # MovieLens ids are numeric: (length, value) numbering keeps their natural order
    assert {r.user_id: r.user_idx for r in store.read(T.USERS).where("user_idx < 3").collect()} == {
        "1": 0,
        "2": 1,
        "3": 2,
    }

    before = table_versions(store)
    again = ingest(cfg, f"ingest.source.path={path}", "ingest.source.preset=movielens-100k")
    assert again.files_skipped == 1 and not again.writes
    assert table_versions(store) == before


def test_movielens_official_split_files_add_up(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, shared_data: Path
) -> None:
    """u1.base + u1.test are exactly u.data: ingesting all three adds 100,000 events, once."""
    ml = shared_data / "ml-100k"
    for name in ("u1.base", "u1.test", "u.data"):
        ingest(cfg, f"ingest.source.path={ml / name}", "ingest.source.preset=movielens-100k")
    assert store.read(T.INTERACTIONS).count() == 100_000
    assert store.read(T.INGESTED_FILES).count() == 3


def test_movielens_latest_small(spark: SparkSession, ingested_dataset: Callable[[str], IngestedDataset]) -> None:
    data = ingested_dataset("ml-latest-small")
    report, store = data.report, TableStore(spark, data.config.storage)
    assert (report.rows_read, report.rows_rejected, report.events_added) == (100_836, 0, 100_836)
    assert (report.new_users, report.new_items) == (610, 9_724)
    assert {r.rating for r in store.read(T.INTERACTION_MATRIX).select("rating").distinct().collect()} == {
        x / 2 for x in range(1, 11)
    }


def test_lastfm_plays(spark: SparkSession, ingested_dataset: Callable[[str], IngestedDataset]) -> None:
    data = ingested_dataset("lastfm-2k")
    report, store = data.report, TableStore(spark, data.config.storage)
    assert (report.rows_read, report.rows_rejected, report.events_added) == (92_834, 0, 92_834)
    assert (report.new_users, report.new_items) == (1_892, 17_632)
    assert store.read(T.INTERACTION_MATRIX).agg({"confidence": "max"}).first()[0] == pytest.approx(
        12.7733703, abs=1e-6
    )  # log1p(352698)


def test_amazon_musical_instruments(
    spark: SparkSession, ingest: IngestRun, cfg: Config, store: TableStore, shared_data: Path
) -> None:
    path = shared_data / "amazon-2014-musical-instruments-5core" / "Musical_Instruments_5.json.gz"
    report = ingest(cfg, f"ingest.source.path={path}", "ingest.source.preset=amazon-5core")
    assert (report.rows_read, report.rows_rejected, report.events_added) == (10_261, 0, 10_261)
    assert (report.new_users, report.new_items) == (1_429, 900)
