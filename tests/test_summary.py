"""One summary for the evaluation job and the report: which value beats which, and mean ± std."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_spark.evaluation.summary import LOWER_IS_BETTER, beats, mean_std


@pytest.mark.parametrize("metric", ["ndcg", "precision", "coverage", "novelty"])
def test_higher_values_beat_on_metrics_better_higher(metric: str) -> None:
    assert beats(0.3, 0.2, metric) and not beats(0.2, 0.3, metric) and not beats(0.2, 0.2, metric)


@pytest.mark.parametrize("metric", sorted(LOWER_IS_BETTER))
def test_lower_values_beat_on_gini_and_the_rating_errors(metric: str) -> None:
    assert beats(0.2, 0.3, metric) and not beats(0.3, 0.2, metric) and not beats(0.2, 0.2, metric)


def test_a_missing_value_never_beats_and_is_never_beaten() -> None:
    assert not beats(None, 0.1, "ndcg") and not beats(0.1, None, "ndcg") and not beats(None, None, "rmse")


def test_mean_std_is_numpys_sample_deviation_and_none_for_one_value() -> None:
    values = [0.41, 0.39, 0.43, 0.40, 0.42]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert mean_std([0.25]) == (0.25, None)
