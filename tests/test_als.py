"""ALS training: parameters from config, factor tables, models row, quality on real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark import tables as T
from recsys_spark.config.schema import AlsConfig
from recsys_spark.errors import InputError
from recsys_spark.models.als import build_als, check_training_values, factor_frames, fit_als, training_frame
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.train import run_train_als

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.storage.store import TableStore
    from tests.conftest import IngestRun


def test_every_parameter_comes_from_config(spark: SparkSession) -> None:  # estimators need a SparkContext
    cfg = AlsConfig(
        rank=7,
        max_iter=3,
        reg_param=0.2,
        alpha=4.0,
        nonnegative=True,
        num_user_blocks=3,
        num_item_blocks=5,
        seed=9,
        checkpoint_interval=2,
        feedback="explicit",
    )
    als = build_als(cfg, default_blocks=2)
    got = {
        p: als.getOrDefault(p)
        for p in (
            "rank",
            "maxIter",
            "regParam",
            "alpha",
            "nonnegative",
            "numUserBlocks",
            "numItemBlocks",
            "seed",
            "checkpointInterval",
            "implicitPrefs",
        )
    }
    assert got == {
        "rank": 7,
        "maxIter": 3,
        "regParam": 0.2,
        "alpha": 4.0,
        "nonnegative": True,
        "numUserBlocks": 3,
        "numItemBlocks": 5,
        "seed": 9,
        "checkpointInterval": 2,
        "implicitPrefs": False,
    }


def test_fit_recovers_block_structure_and_is_seeded(spark: SparkSession) -> None:
    # two communities: users 0-9 use items 0-9, users 10-19 use items 10-19
    rows = [(u, i, 1.0, None) for u in range(20) for i in range(20) if (u < 10) == (i < 10) and (u + i) % 3]
    matrix = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE")
    cfg = AlsConfig(rank=4, max_iter=8, seed=3)
    users, items = factor_frames(fit_als(training_frame(matrix, cfg), cfg))
    u = np.array([r.factors for r in users.orderBy("user_idx").collect()])
    v = np.array([r.factors for r in items.orderBy("item_idx").collect()])
    scores = u @ v.T
    assert scores[:10, :10].mean() > scores[:10, 10:].mean() + 0.3
    assert scores[10:, 10:].mean() > scores[10:, :10].mean() + 0.3
    again = np.array(
        [r.factors for r in factor_frames(fit_als(training_frame(matrix, cfg), cfg))[0].orderBy("user_idx").collect()]
    )
    np.testing.assert_allclose(u, again, rtol=1e-5, atol=1e-6)


def test_train_job_writes_factors_and_a_model_row(
    spark: SparkSession, cfg: Config, ingest: IngestRun, store: TableStore, tmp_path: Path
) -> None:
    raw = tmp_path / "u.data"
    raw.write_text(
        "".join(
            f"{u}\t{i}\t{1 + (u * i) % 5}\t88000{u:04d}\n" for u in range(1, 31) for i in range(1, 21) if (u + i) % 4
        )
    )
    ingest(cfg, f"ingest.source.path={raw}", "ingest.source.preset=movielens-100k")
    for feedback in ("implicit", "explicit"):
        c = cfg.with_overrides([f"als.feedback={feedback}", "als.rank=4", "als.max_iter=3"])
        out = run_train_als(spark, c, RunContext.new("train-als", c))
        assert out[T.USER_FACTORS].rows == 30 and out[T.ITEM_FACTORS].rows == 20
    uf = store.read(T.USER_FACTORS)
    assert {len(r.factors) for r in uf.collect()} == {4}
    assert uf.where("user_id = '7'").first().user_idx == store.read(T.USERS).where("user_id = '7'").first().user_idx
    models = store.read(T.MODELS).orderBy("trained_at").collect()
    assert len(models) == 2
    assert json.loads(models[1].params)["feedback"] == "explicit" and models[1].train_rmse > 0
    assert models[0].train_rmse is None
    assert json.loads(models[1].input_versions)[T.INTERACTION_MATRIX] == store.version(T.INTERACTION_MATRIX)
    assert uf.first().model_version == models[1].model_version


def _matrix(spark: SparkSession, rows: list[tuple[int, int, float]]) -> DataFrame:
    return spark.createDataFrame(
        [(u, i, v, v) for u, i, v in rows], "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE"
    )


def test_training_values_beyond_float32_are_an_error_naming_the_pairs_and_the_options(spark: SparkSession) -> None:
    matrix = _matrix(spark, [(0, 0, 1e38), (0, 1, 1.0), (1, 0, 3.5e38), (1, 1, 2.0)])
    users = spark.createDataFrame([(0, "alice"), (1, "bob")], "user_idx INT, user_id STRING")
    items = spark.createDataFrame([(0, "apple"), (1, "pear")], "item_idx INT, item_id STRING")
    implicit = AlsConfig(alpha=10.0)
    with pytest.raises(InputError) as err:
        check_training_values(training_frame(matrix, implicit), implicit, users, items)
    message = str(err.value)
    # 1 + 10 x 1e38 overflows float32 (alpha is the cause); 3.5e38 does on its own
    assert (
        "2 training pair(s) have a value ALS cannot hold: implicit ALS weighs 1 + als.alpha x confidence "
        "(als.alpha = 10), which must be finite in float32 (at most 3.403e+38)" in message
    )
    assert "(user_id 'alice', item_id 'apple'): confidence 1e+38 -> 1e+39" in message
    assert "(user_id 'bob', item_id 'apple'): confidence 3.5e+38 -> 3.5e+39" in message
    assert "pear" not in message
    assert all(o in message for o in ("lower als.alpha", 'ingest.value_transform = "log1p"', "ingest.max_value"))
    with pytest.raises(InputError, match=r"^1 training pair\(s\)"):
        check_training_values(training_frame(matrix, AlsConfig(alpha=1.0)), AlsConfig(alpha=1.0), users, items)
    check_training_values(training_frame(matrix, AlsConfig(alpha=0.5)), AlsConfig(alpha=0.5), users, items)

    explicit = AlsConfig(feedback="explicit")
    ratings = _matrix(spark, [(0, 0, 4.0), (1, 1, float("inf")), (1, 0, float("nan"))])
    with pytest.raises(InputError) as err:  # without id maps the pairs are named by index
        check_training_values(training_frame(ratings, explicit), explicit)
    assert "(user_idx 1, item_idx 0): rating nan" in str(err.value)
    assert "(user_idx 1, item_idx 1): rating inf" in str(err.value)
    assert "ingest.max_rating" in str(err.value)


def test_more_than_five_bad_pairs_are_counted_not_listed(spark: SparkSession) -> None:
    matrix = _matrix(spark, [(u, 0, 1e39) for u in range(7)])
    with pytest.raises(InputError) as err:
        check_training_values(training_frame(matrix, AlsConfig()), AlsConfig())
    lines = str(err.value).splitlines()
    assert lines[0].startswith("7 training pair(s)")
    assert [ln.strip().split(")")[0] for ln in lines[1:6]] == [f"(user_idx {u}, item_idx 0" for u in range(5)]
    assert lines[6].strip() == "... and 2 more"


def test_train_job_names_the_ids_whose_summed_confidence_overflows_float32(
    spark: SparkSession,
    cfg: Config,
    ingest: IngestRun,
    store: TableStore,
    tmp_path: Path,
) -> None:
    raw = tmp_path / "plays.csv"
    # each play count fits float32, so ingest keeps them; their sum for (u1, i1) does not
    raw.write_text("user,item,plays\nu1,i1,3e38\nu1,i1,2e38\nu1,i2,3\nu2,i1,4\nu2,i2,1\n")
    report = ingest(
        cfg,
        f"ingest.source.path={raw}",
        "ingest.source.preset=custom",
        "ingest.source.user_col=user",
        "ingest.source.item_col=item",
        "ingest.source.value_col=plays",
        "ingest.source.timestamp_format=none",
    )
    assert (report.events_added, report.rows_rejected) == (5, 0)
    c = cfg.with_overrides(["als.rank=2", "als.max_iter=1", "als.alpha=1.0"])
    with pytest.raises(
        InputError,
        match=r"^1 training pair\(s\) .*\n    \(user_id 'u1', item_id 'i1'\): "
        r"confidence 5e\+38 -> 5e\+38",
    ):
        run_train_als(spark, c, RunContext.new("train-als", c))
    assert store.version(T.USER_FACTORS) is None and store.version(T.MODELS) is None


def test_evaluation_and_search_fits_check_their_training_values_too(spark: SparkSession) -> None:
    from recsys_spark.tuning.fitting import fit_als_factors

    train = _matrix(spark, [(0, 0, 1.0), (0, 1, 1e38), (1, 0, 2.0)])
    with pytest.raises(InputError, match=r"\(user_idx 0, item_idx 1\): confidence 1e\+38 -> 1e\+39"):
        fit_als_factors(train, AlsConfig(rank=2, max_iter=1))


@pytest.mark.realdata
def test_implicit_als_beats_popularity_on_movielens_u1(spark: SparkSession, shared_data: Path) -> None:
    import pandas as pd

    names = ["u", "i", "r", "t"]
    base = pd.read_csv(shared_data / "ml-100k" / "u1.base", sep="\t", names=names)
    test = pd.read_csv(shared_data / "ml-100k" / "u1.test", sep="\t", names=names)
    matrix = spark.createDataFrame(
        [(int(u) - 1, int(i) - 1, float(r), float(r)) for u, i, r in zip(base.u, base.i, base.r)],
        "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE",
    )
    cfg = AlsConfig(rank=32, max_iter=10, reg_param=0.05, alpha=1.0, seed=1)
    users, items = factor_frames(fit_als(training_frame(matrix, cfg), cfg))
    u = np.zeros((943, cfg.rank))
    v = np.zeros((1682, cfg.rank))
    for r in users.collect():
        u[r.user_idx] = r.factors
    for r in items.collect():
        v[r.item_idx] = r.factors
    seen = np.zeros((943, 1682), bool)
    seen[base.u - 1, base.i - 1] = True
    popularity = np.bincount(base.i - 1, minlength=1682).astype(float)

    def precision_at_10(scores: np.ndarray) -> float:
        scores = np.where(seen, -np.inf, scores)
        top = np.argsort(-scores, axis=1)[:, :10]
        held = test.groupby("u")["i"].apply(lambda s: set(s - 1))
        return float(np.mean([len(set(top[user - 1]) & items_) / 10 for user, items_ in held.items()]))

    als_p = precision_at_10(u @ v.T)
    pop_p = precision_at_10(np.tile(popularity, (943, 1)))
    assert als_p > pop_p * 1.1, (als_p, pop_p)
