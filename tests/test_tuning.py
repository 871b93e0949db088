"""The hyperparameter search: a validation carve-out of the training data only, seeded spaces, budgets."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import pytest

from recsys_spark import tuning
from recsys_spark.config import Config, TuningConfig
from recsys_spark.tuning import SearchResult, Trial, als_space, blend_grid, carve_validation, run_search, survivors

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


def test_the_als_space_is_seeded_and_inside_its_ranges() -> None:
    tc = TuningConfig(als_trials=40, als_rank=[16, 128], als_reg_param=[0.01, 1.0], als_alpha=[0.5, 20.0],
                      als_confidence=["binary", "log"], seed=11)
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


@pytest.mark.parametrize(("sources", "steps"), [(["als", "ease"], 4), (["als", "ease", "rp3beta"], 3),
                                                 (["a", "b", "c", "d"], 2)])
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
