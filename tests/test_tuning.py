"""The hyperparameter search: a validation carve-out of the training data only, seeded spaces, budgets."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import pytest

from recsys_spark.config.schema import Config, TuningConfig
from recsys_spark.tuning import search as tuning
from recsys_spark.tuning.search import (
    SearchResult,
    Trial,
    als_space,
    blend_grid,
    carve_validation,
    run_search,
    survivors,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _train(spark: SparkSession) -> Any:
    rows = [(u, i, 1.0, float(1 + (u * 7 + i) % 5)) for u in range(30) for i in range(u % 7, u % 7 + 10)]
    return spark.createDataFrame(rows, "user_idx int, item_idx int, confidence double, rating double")


def test_the_carve_out_splits_the_training_matrix_and_nothing_else(spark: SparkSession, base_config: Config) -> None:
    train = _train(spark)
    cfg = base_config.with_overrides(["tuning.validation_fraction=0.2", "evaluation.rating_threshold=4.0"])
    v = carve_validation(train, cfg)
    try:
        pairs = {(r.user_idx, r.item_idx) for r in train.collect()}
        fit = {(r.user_idx, r.item_idx) for r in v.fit.collect()}
        truth = {(r.user_idx, r.item_idx): r.grade for r in v.truth.collect()}
        ratings = {(r.user_idx, r.item_idx): r.rating for r in train.collect()}
        assert fit < pairs
        held = pairs - fit
        assert len(held) == 30 * 2  # 20% of each user's 10 items
        # relevant validation items are held-out training pairs rated >= 4, graded by the rating
        assert set(truth) == {p for p in held if ratings[p] >= 4.0}
        assert all(truth[p] == ratings[p] for p in truth)
        assert {r.user_idx for r in v.users.collect()} == {u for u, _ in truth}
    finally:
        v.release()


def test_the_carve_out_is_seeded(spark: SparkSession, base_config: Config) -> None:
    train = _train(spark)
    one = carve_validation(train, base_config.with_overrides(["tuning.seed=3"]))
    two = carve_validation(train, base_config.with_overrides(["tuning.seed=3"]))
    other = carve_validation(train, base_config.with_overrides(["tuning.seed=4"]))
    try:

        def pairs(v: tuning.Validation) -> set[tuple[int, int]]:
            return {(r.user_idx, r.item_idx) for r in v.fit.collect()}

        assert pairs(one) == pairs(two) != pairs(other)
    finally:
        for v in (one, two, other):
            v.release()


def test_the_ease_space_tries_each_top_n_with_every_l2_and_top_n_varies_fastest(base_config: Config) -> None:
    from recsys_spark.tuning.fitting import _method_space

    plain = base_config.with_overrides(["tuning.ease_l2=[10.0, 100.0]", 'tuning.ease_confidence=["binary"]'])
    assert _method_space(plain, "ease") == [{"confidence": "binary", "l2": 10.0}, {"confidence": "binary", "l2": 100.0}]
    grid = plain.with_overrides(["tuning.ease_top_n=[50, 500]"])
    assert _method_space(grid, "ease") == [
        {"confidence": "binary", "l2": 10.0, "top_n": 50},
        {"confidence": "binary", "l2": 10.0, "top_n": 500},
        {"confidence": "binary", "l2": 100.0, "top_n": 50},
        {"confidence": "binary", "l2": 100.0, "top_n": 500},
    ]
    pruned = grid.with_overrides(['tuning.ease_prune=["item", "global"]', "tuning.ease_l2=[10.0]"])
    assert _method_space(pruned, "ease") == [  # both re-prune one solve, so they vary fastest together
        {"confidence": "binary", "l2": 10.0, "top_n": n, "prune": p} for n in (50, 500) for p in ("item", "global")
    ]


def test_the_als_space_is_seeded_and_inside_its_ranges() -> None:
    tc = TuningConfig(
        als_trials=40,
        als_rank=[16, 128],
        als_reg_param=[0.01, 1.0],
        als_alpha=[0.5, 20.0],
        als_confidence=["binary", "log"],
        seed=11,
    )
    space = als_space(tc)
    assert space == als_space(tc) != als_space(tc.model_copy(update={"seed": 12}))
    assert len(space) == 40
    for p in space:
        assert p["rank"] in (16, 128) and p["confidence"] in ("binary", "log")
        assert 0.01 <= p["reg_param"] <= 1.0 and 0.5 <= p["alpha"] <= 20.0
    # log-uniform: about half the draws below the geometric middle of each range
    below = sum(p["reg_param"] < 0.1 for p in space)
    assert 10 <= below <= 30


def test_survivors_are_the_best_share_best_first_and_never_a_failed_trial() -> None:
    trials = [Trial({"x": i}, v, 1.0) for i, v in enumerate([0.2, None, 0.5, 0.1, 0.4, 0.3])]
    result = SearchResult("als", {"x": 2}, 0.5, "ndcg@10", trials)
    assert survivors(result, 0.34) == [{"x": 2}, {"x": 4}]  # ceil(5 scored * 0.34) = 2
    assert survivors(result, 0.01) == [{"x": 2}]
    assert survivors(result, 1.0) == [{"x": 2}, {"x": 4}, {"x": 5}, {"x": 0}, {"x": 3}]


@pytest.mark.parametrize(
    ("sources", "steps"), [(["als", "ease"], 4), (["als", "ease", "rp3beta"], 3), (["a", "b", "c", "d"], 2)]
)
def test_the_blend_grid_is_every_point_of_the_simplex_at_its_step(sources: list[str], steps: int) -> None:
    grid = list(blend_grid(sources, steps))
    assert len(grid) == math.comb(steps + len(sources) - 1, len(sources) - 1)
    for w in grid:
        assert list(w) == sources and math.isclose(sum(w.values()), 1.0, abs_tol=1e-5)
        assert all(abs(v * steps - round(v * steps)) < 1e-5 for v in w.values())  # weights are rounded to 6 places
    assert len({tuple(w.values()) for w in grid}) == len(grid)
    assert {s: 1.0 if s == sources[0] else 0.0 for s in sources} in grid


def test_a_search_chooses_the_highest_validation_value_and_records_every_trial() -> None:
    values = {1: 0.2, 2: None, 3: 0.35, 4: 0.3}
    result = run_search("ease", [{"l2": k} for k in values], lambda p: values[p["l2"]], "ndcg@10", TuningConfig())
    assert result.best == {"l2": 3} and result.best_value == 0.35
    assert [t.params["l2"] for t in result.trials] == [1, 2, 3, 4] and result.skipped == 0
    record = result.as_record()
    assert record["best"] == {"l2": 3} and [t["value"] for t in record["trials"]] == [0.2, None, 0.35, 0.3]


def test_a_search_with_no_score_is_an_error() -> None:
    with pytest.raises(ValueError, match="search rp3beta: no trial produced a score"):
        run_search("rp3beta", [{"alpha": 1.0}], lambda p: None, "ndcg@10", TuningConfig())


def test_a_search_starts_no_trial_once_its_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 10.0)  # every reading of the clock is 10 s later
    monkeypatch.setattr(tuning.time, "monotonic", lambda: next(clock))
    tried: list[int] = []

    def objective(p: dict[str, Any]) -> float:
        tried.append(p["i"])
        return float(p["i"])

    result = run_search("als", [{"i": i} for i in range(10)], objective, "ndcg@10", TuningConfig(max_seconds=45.0))
    # readings: started 0; trial 1 checks at 10, times 20..30; trial 2 checks 40 ... trial 3 checks 70 > 45
    assert tried == [0, 1]
    assert result.skipped == 8 and result.best == {"i": 1}


def _lists_and_truth(seed: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, float]]]:
    """Hostile lists: short and empty lists, an item listed twice, a truth pair listed twice,
    truth users without a list and listed users without truth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    recs = []
    for u in range(40):
        n = int(rng.integers(0, 14))
        items = rng.choice(30, size=n, replace=False)
        recs += [(u, int(i), r) for r, i in enumerate(items, 1)]
    recs += [(3, recs[0][1], 12), (5, 7, 1), (5, 7, 4)]  # the same item twice in one list
    truth = [
        (u, int(i), 1.0) for u in range(10, 50) for i in rng.choice(30, size=int(rng.integers(1, 9)), replace=False)
    ]
    truth += [truth[0], truth[5]]  # a pair twice counts once
    return recs, truth


@pytest.mark.parametrize("seed", [1, 2])
def test_the_driver_metric_equals_the_spark_metric(spark: SparkSession, seed: int) -> None:
    import numpy as np

    from recsys_spark.evaluation.driver_metrics import LOCAL_METRICS, ranking_metric
    from recsys_spark.evaluation.metrics import ranking_metrics

    recs, truth = _lists_and_truth(seed)
    recs_df = spark.createDataFrame(recs, "user_idx int, item_idx int, rank int")
    truth_df = spark.createDataFrame(truth, "user_idx int, item_idx int, grade double")
    ks = [1, 3, 10]
    expected = {(r.metric, r.k): r.value for r in ranking_metrics(recs_df, truth_df, ks).collect()}
    u, i, r = (np.array(c) for c in zip(*recs))
    tu, ti = (np.array(c) for c in zip(*[(t[0], t[1]) for t in truth]))
    for metric in LOCAL_METRICS:
        for k in ks:
            got = ranking_metric(metric, k, u, i, r, tu, ti)
            assert got == pytest.approx(expected[(metric, k)], abs=1e-12), (metric, k)


def test_a_metric_without_a_driver_twin_is_refused() -> None:
    import numpy as np

    from recsys_spark.evaluation.driver_metrics import ranking_metric

    one = np.array([0])
    with pytest.raises(ValueError, match=r"ndcg_graded.*known: ndcg, precision"):
        ranking_metric("ndcg_graded", 10, one, one, one, one, one)


def test_the_blend_search_on_the_driver_scores_every_trial_as_spark_does(
    spark: SparkSession, base_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each weight vector's validation value, cold-start users included, equals the Spark path's."""
    import datetime as dt

    import numpy as np

    from recsys_spark.candidates.builder import every_blend_source
    from recsys_spark.tuning import fitting as fitting

    rng = np.random.default_rng(5)
    t0 = dt.datetime(2026, 1, 1)
    rows = []
    for u in range(80):
        n = 2 if u % 9 == 0 else int(rng.integers(6, 16))  # every ninth user stays cold after the carve-out
        for i in rng.choice(40, size=n, replace=False):
            rows.append(
                (
                    u,
                    int(i),
                    float(rng.integers(1, 4)),
                    float(rng.integers(1, 6)),
                    t0 + dt.timedelta(hours=int(rng.integers(0, 500))),
                )
            )
    train = spark.createDataFrame(
        rows, "user_idx int, item_idx int, confidence double, rating double, last_event_time timestamp"
    )
    cfg = base_config.with_overrides(
        [
            'candidates.strategies=["als", "item_item", "blend"]',
            "candidates.blend_weights={als = 0.5, item_item = 0.5}",
            "candidates.k=20",
            "candidates.min_history=3",
            "als.rank=4",
            "als.max_iter=3",
            "similarity.cosine.min_cooccurrence=1",
            "tuning.validation_fraction=0.2",
            "tuning.blend_steps=2",
            "evaluation.rating_threshold=3.0",
        ]
    )
    v = carve_validation(train, cfg)
    on_fit = fitting.fit_as_configured(v.fit, cfg.model_copy(update={"candidates": every_blend_source(cfg.candidates)}))
    try:
        _, on_driver = fitting.tune_blend(cfg, v, on_fit)
        monkeypatch.setattr(fitting, "MAX_DRIVER_ROWS", -1)  # the Spark path
        _, in_spark = fitting.tune_blend(cfg, v, on_fit)
    finally:
        on_fit.release()
        v.release()
    assert [t.params for t in on_driver.trials] == [t.params for t in in_spark.trials]
    assert len(on_driver.trials) == 3
    driver_values = [t.value for t in on_driver.trials]
    assert driver_values == pytest.approx([t.value for t in in_spark.trials], abs=1e-12)
    assert len(set(driver_values)) > 1  # the weights matter, so equal values are not a coincidence
    assert on_driver.best == in_spark.best
