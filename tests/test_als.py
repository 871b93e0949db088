"""ALS training: parameters from config, factor tables, models row, quality on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_spark import tables as T
from recsys_spark.als import build_als, factor_frames, fit_als, training_frame
from recsys_spark.config import AlsConfig
from recsys_spark.pipeline import run_train_als
from recsys_spark.run import RunContext


def test_every_parameter_comes_from_config(spark) -> None:  # noqa: ANN001 - estimators need a SparkContext
    cfg = AlsConfig(rank=7, max_iter=3, reg_param=0.2, alpha=4.0, nonnegative=True, num_user_blocks=3,
                    num_item_blocks=5, seed=9, checkpoint_interval=2, feedback="explicit")
    als = build_als(cfg, default_blocks=2)
    got = {p: als.getOrDefault(p) for p in ("rank", "maxIter", "regParam", "alpha", "nonnegative", "numUserBlocks",
                                            "numItemBlocks", "seed", "checkpointInterval", "implicitPrefs")}
    assert got == {"rank": 7, "maxIter": 3, "regParam": 0.2, "alpha": 4.0, "nonnegative": True, "numUserBlocks": 3,
                   "numItemBlocks": 5, "seed": 9, "checkpointInterval": 2, "implicitPrefs": False}


def test_fit_recovers_block_structure_and_is_seeded(spark) -> None:  # noqa: ANN001
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
    again = np.array([r.factors for r in factor_frames(fit_als(training_frame(matrix, cfg), cfg))[0]
                      .orderBy("user_idx").collect()])
    np.testing.assert_allclose(u, again, rtol=1e-5, atol=1e-6)


def test_train_job_writes_factors_and_a_model_row(spark, cfg, ingest, store, tmp_path: Path) -> None:  # noqa: ANN001
    raw = tmp_path / "u.data"
    raw.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t88000{u:04d}\n"
                           for u in range(1, 31) for i in range(1, 21) if (u + i) % 4))
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


@pytest.mark.realdata
def test_implicit_als_beats_popularity_on_movielens_u1(spark, shared_data: Path) -> None:  # noqa: ANN001
    import pandas as pd

    names = ["u", "i", "r", "t"]
    base = pd.read_csv(shared_data / "ml-100k" / "u1.base", sep="\t", names=names)
    test = pd.read_csv(shared_data / "ml-100k" / "u1.test", sep="\t", names=names)
    matrix = spark.createDataFrame([(int(u) - 1, int(i) - 1, float(r), float(r)) for u, i, r in
                                    zip(base.u, base.i, base.r)],
                                   "user_idx INT, item_idx INT, confidence DOUBLE, rating DOUBLE")
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
