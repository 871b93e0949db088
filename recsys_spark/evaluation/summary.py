"""How metric values are summarised and compared, for the evaluation job and the report alike.

No Spark here: the report renders anywhere from ``evaluation.json`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict

__all__ = ["LOWER_IS_BETTER", "Best", "EvaluationDocument", "Headline", "ResultRow", "beats", "mean_std"]

LOWER_IS_BETTER = frozenset({"gini", "rmse", "mae"})
"""Metrics where a smaller value is the better one; every other metric is better higher."""


def beats(value: float | None, reference: float | None, metric: str) -> bool:
    """Whether ``value`` is strictly better than ``reference`` on ``metric`` (missing values never beat)."""
    if value is None or reference is None:
        return False
    return value < reference if metric in LOWER_IS_BETTER else value > reference


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1) across splits; no deviation for one value."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


class Headline(TypedDict):
    """The metric the run is judged by: ``evaluation.headline_metric`` at ``evaluation.headline_k``."""

    metric: str
    k: int


class Best(TypedDict):
    """The served strategy with the best mean headline value across splits."""

    model: str
    value: float


class ResultRow(TypedDict):
    """One metric value: a model on a split at a cutoff (k = 0 for the rating errors)."""

    split: str
    model: str
    metric: str
    k: int
    value: float | None


class _Results(TypedDict):
    results: list[ResultRow]


class EvaluationDocument(_Results, total=False):
    """``evaluation.json``: what the evaluate job writes, ``compare`` merges and the report renders.

    Only ``results`` is required of a document read back from disk; the job writes every key.
    """

    run_id: str
    created_at: str
    dataset: str
    ks: list[int]
    headline: Headline
    best: Best | None
    splits: list[dict[str, Any]]
    models: dict[str, dict[str, Any]]
    flags: list[str]
    popularity: dict[str, Any]
    input_versions: dict[str, int | None]
    config: dict[str, Any]
    churn: list[dict[str, Any]]
    """Churn of the served top 10 at each recent publication (see evaluation.churn.churn_history)."""
