"""The synthetic log is seeded, latent-factor driven, power-law popular and heavy tailed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from recsys_spark.config.loader import load_config
from recsys_spark.config.schema import GenerateConfig
from recsys_spark.ingest.generate import _world, synthetic_events, user_events, user_profile

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

START_MS = 1_788_220_800_000  # 2026-09-01T00:00:00Z


def _gen(**kw: Any) -> GenerateConfig:
    base = {"num_events": 40_000, "num_users": 1_000, "num_items": 800, "rank": 8, "partitions": 3}
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    cfg = _gen()
    world = _world(cfg)
    return pd.concat([user_events(u, cfg, world, START_MS) for u in range(cfg.num_users)], ignore_index=True)


def test_same_seed_same_log_whatever_the_partitioning(spark: SparkSession) -> None:
    a = synthetic_events(spark, _gen(num_users=200, partitions=3)).toPandas()
    b = synthetic_events(spark, _gen(num_users=200, partitions=5)).toPandas()
    c = synthetic_events(spark, _gen(num_users=200, seed=7)).toPandas()
    key = ["event_id", "timestamp", "item_id", "event_type", "value"]
    pd.testing.assert_frame_equal(a.sort_values(key, ignore_index=True), b.sort_values(key, ignore_index=True))
    assert not a["item_id"].equals(c["item_id"])


def test_size_is_about_what_was_asked(sample: pd.DataFrame) -> None:
    assert 0.8 * 40_000 < len(sample) < 1.25 * 40_000


def test_item_popularity_is_a_power_law(sample: pd.DataFrame) -> None:
    counts = sample.groupby("item_id").size().sort_values(ascending=False).to_numpy()
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.35  # top 10% of items take well over their share
    # log-log slope of rank vs count over the head is clearly negative
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(counts[:100]), 1)[0]
    assert slope < -0.3


def test_user_activity_is_heavy_tailed(sample: pd.DataFrame) -> None:
    per_user = sample.groupby("user_id").size()
    assert per_user.max() > 8 * per_user.median()
    assert per_user.min() >= 1


def test_choices_follow_hidden_tastes() -> None:
    """Users pick items whose hidden vectors align with theirs far more than chance."""
    cfg = _gen(corrupt_fraction=0.0)
    world = _world(cfg)
    rng = np.random.default_rng(0)
    chosen, random_ = [], []
    for u in range(300):
        taste = user_profile(u, cfg, world).taste
        items = user_events(u, cfg, world, START_MS)["item_id"].str[1:].astype(int).unique()
        chosen.append((world.item_factors[items] @ taste).mean())
        random_.append((world.item_factors[rng.integers(0, cfg.num_items, 20)] @ taste).mean())
    assert np.mean(chosen) > np.mean(random_) + 0.5


def test_users_keep_to_their_own_genres() -> None:
    """Most of a user's items come from the genres their hidden mix favours, far above the catalogue's mix."""
    cfg = _gen(corrupt_fraction=0.0, duplicate_fraction=0.0, num_genres=20)
    world = _world(cfg)
    genre_of = np.empty(cfg.num_items, dtype=int)
    for g in range(len(world.genre_share)):
        genre_of[world.genre_items[world.genre_start[g] : world.genre_start[g + 1]]] = g
    own, expected = [], []
    for u in range(300):
        mix = user_profile(u, cfg, world).genre_mix
        top = np.argsort(-mix)[:3]
        items = user_events(u, cfg, world, START_MS)["item_id"].str[1:].astype(int).unique()
        own.append(np.isin(genre_of[items], top).mean())
        expected.append(world.genre_share[top].sum())
    assert np.mean(own) > 0.5
    assert np.mean(own) > 3 * np.mean(expected)


def test_funnel_and_event_mix(sample: pd.DataFrame) -> None:
    mix = sample["event_type"].value_counts()
    assert mix["view"] > mix["click"] > mix["add_to_cart"] > mix["purchase"] > 0
    purchases = sample[sample.event_type == "purchase"]
    assert set(purchases["value"]) <= {"1", "2", "3", "-1", "NaN"}


def test_timestamps_span_the_configured_days(sample: pd.DataFrame) -> None:
    good = sample[sample.timestamp.str.startswith("2026")]
    ts = pd.to_datetime(good.timestamp, utc=True)
    assert ts.min() >= pd.Timestamp("2026-09-01", tz="UTC")
    assert ts.max() < pd.Timestamp("2026-09-01", tz="UTC") + pd.Timedelta(days=56)
    assert (ts.max() - ts.min()).days >= 50


def test_duplicates_and_corruptions_are_planted() -> None:
    cfg = _gen(duplicate_fraction=0.01, corrupt_fraction=0.01)
    world = _world(cfg)
    df = pd.concat([user_events(u, cfg, world, START_MS) for u in range(300)], ignore_index=True)
    assert df.duplicated().sum() > 0
    assert (df.user_id == "").sum() + (df.timestamp == "yesterday").sum() + (df.event_type == "hover").sum() > 0
    clean = _gen(duplicate_fraction=0.0, corrupt_fraction=0.0)
    df = pd.concat([user_events(u, clean, world, START_MS) for u in range(300)], ignore_index=True)
    assert df.duplicated().sum() == 0 and (df.user_id == "").sum() == 0


def test_bad_generate_config_is_rejected() -> None:
    from recsys_spark.errors import ConfigError

    with pytest.raises(ConfigError, match=r"generate\.num_users"):
        load_config(None, ["generate.num_users=1"])
