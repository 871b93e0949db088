"""Held-out evaluation: the served strategies and the baselines, on a split's test part.

For every evaluated user (a relevant test item and some training history) each strategy of
``candidates.strategies`` gives the list the candidates stage would serve, made by the same code
(:class:`recsys_spark.candidates.builder.CandidateBuilder`) from models fitted on the training
part, with their settings searched on a validation carve-out of that training part where a
stage's ``tune`` is set (:mod:`recsys_spark.tuning.fitting`). The lists are scored on the driver
(:mod:`recsys_spark.evaluation.driver_metrics`), or in Spark (:mod:`recsys_spark.evaluation.metrics`)
when they are too large to collect. Strategies: ``als``, ``item_item``, ``ease``, ``rp3beta``,
``blend``, cold start included (a user below ``candidates.min_history`` is scored on the popularity
list they would be served); baselines in :mod:`recsys_spark.evaluation.baselines`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.candidates.builder import CandidateBuilder, cold_start_segment
from recsys_spark.config.schema import Config
from recsys_spark.evaluation.baselines import item_popularity, popularity_recs, random_recs
from recsys_spark.evaluation.driver_metrics import (
    MAX_DRIVER_FACTOR_ITEMS,
    MAX_DRIVER_ROWS,
    MetricRow,
    catalog_rows_from_arrow,
    ranking_rows_from_arrow,
)
from recsys_spark.evaluation.metrics import catalog_metrics, ranking_metrics, rating_errors
from recsys_spark.evaluation.splits import relevant_items
from recsys_spark.evaluation.summary import EvaluationDocument, mean_std

log = logging.getLogger(__name__)


@dataclass
class SplitScores:
    """What one split's evaluation produced."""

    meta: dict[str, Any]
    """Sizes of the split (train / test rows, evaluated users, relevant rows)."""
    results: list[dict[str, Any]] = field(default_factory=list)
    """(split, model, metric, k, value) rows."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """model -> kind ("model" for a strategy, "baseline"), its settings on this split, its searches."""
    popularity_counts: list[int] = field(default_factory=list)
    """Training users per item, most popular first (the report's long-tail plot)."""


def evaluated_users(train: DataFrame, test: DataFrame, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """(truth, users): relevant test items of the evaluated users, and those users' (user_idx,
    n_items) training sizes. Users need a relevant test item and training history; ``max_users``
    keeps a seeded hash sample of them."""
    ec = cfg.evaluation
    sizes = train.groupBy("user_idx").agg(F.count("*").alias("n_items"))
    truth = relevant_items(test, ec.rating_threshold).join(sizes.select("user_idx"), "user_idx", "left_semi")
    if ec.max_users:
        sample = (
            truth.select("user_idx")
            .distinct()
            .orderBy(F.xxhash64(F.lit(ec.seed), "user_idx"), "user_idx")
            .limit(ec.max_users)
        )
        truth = truth.join(sample, "user_idx", "left_semi")
    truth = truth.persist()
    users = sizes.join(truth.select("user_idx").distinct(), "user_idx", "left_semi").persist()
    return truth, users


class SplitArrow:
    """A split's truth and item popularity collected as Arrow once, on first use, for every list
    scored against them: collecting them again for each strategy and baseline took 3 of the
    demo's 48 s of evaluation (two Spark jobs a list)."""

    def __init__(self, truth: DataFrame, popularity: DataFrame) -> None:
        self._truth_df, self._popularity_df = truth, popularity
        self._truth: pa.Table | None = None
        self._truth_tried = False  # None above is also the answer for a truth too large to collect
        self._popularity: pa.Table | None = None

    def truth(self) -> pa.Table | None:
        """(user_idx, item_idx, grade) rows, or None when more than :data:`MAX_DRIVER_ROWS`."""
        if not self._truth_tried:
            self._truth = _collected(self._truth_df.select("user_idx", "item_idx", "grade"), MAX_DRIVER_ROWS)
            self._truth_tried = True
        return self._truth

    def popularity(self) -> pa.Table:
        """(item_idx, users): training users per item."""
        if self._popularity is None:
            self._popularity = self._popularity_df.select("item_idx", "users").toArrow()
        return self._popularity


def score_lists(
    recs: DataFrame,
    truth: DataFrame,
    cfg: Config,
    *,
    split: str,
    model: str,
    n_items: int,
    popularity: DataFrame,
    n_train_users: int,
    graded: bool,
    item_factors: DataFrame | None = None,
    collected: SplitArrow | None = None,
) -> list[dict[str, Any]]:
    """Every ranking and catalogue metric of one list at every k, as result rows: on the driver
    (:mod:`recsys_spark.evaluation.driver_metrics`) when the lists and their truth are small
    enough to collect, else in Spark SQL (:mod:`recsys_spark.evaluation.metrics`); the two give
    the same values.

    Args:
        collected: ``truth`` and ``popularity`` as already collected for other lists of the same
            split; None collects them for this list alone.
    """
    ks = cfg.evaluation.ks
    recs = recs.select("user_idx", "item_idx", "rank").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        scores = _scored_on_driver(
            recs,
            collected or SplitArrow(truth, popularity),
            ks,
            n_items=n_items,
            n_users=n_train_users,
            graded=graded,
            item_factors=item_factors,
        )
        where = "on the driver"
        if scores is None:
            where = "in Spark"
            frame = ranking_metrics(recs, truth, ks, graded=graded).unionByName(
                catalog_metrics(
                    recs,
                    ks,
                    n_items=n_items,
                    item_popularity=popularity,
                    n_users=n_train_users,
                    item_factors=item_factors,
                )
            )
            scores = [(r.metric, r.k, r.value, r.users) for r in frame.collect()]
        rows = [
            {
                "split": split,
                "model": model,
                "metric": metric,
                "k": int(k),
                "value": None if value is None else float(value),
            }
            for metric, k, value, _ in scores
        ]
    finally:
        recs.unpersist()
    log.info("evaluated %s on %s (%s)", model, split, where)
    return rows


def _collected(df: DataFrame, limit: int) -> pa.Table | None:
    """``df`` as Arrow, or None when it has more than ``limit`` rows."""
    table = df.limit(limit + 1).toArrow()
    return None if table.num_rows > limit else table


def _scored_on_driver(
    recs: DataFrame,
    split: SplitArrow,
    ks: Sequence[int],
    *,
    n_items: int,
    n_users: int,
    graded: bool,
    item_factors: DataFrame | None,
) -> list[MetricRow] | None:
    """The ranking and catalogue metric rows computed in numpy, or None when the lists or the truth
    exceed :data:`driver_metrics.MAX_DRIVER_ROWS` rows, or the listed items' factors
    :data:`driver_metrics.MAX_DRIVER_FACTOR_ITEMS`."""
    lists = _collected(recs, MAX_DRIVER_ROWS)
    rel = None if lists is None else split.truth()
    if lists is None or rel is None:
        return None
    factors = None
    if item_factors is not None:
        listed = recs.select("item_idx").distinct()
        factors = _collected(
            item_factors.join(listed, "item_idx", "left_semi").select("item_idx", "factors"), MAX_DRIVER_FACTOR_ITEMS
        )
        if factors is None:
            return None
    return ranking_rows_from_arrow(lists, rel, ks, graded=graded) + catalog_rows_from_arrow(
        lists, ks, n_items=n_items, popularity=split.popularity(), n_users=n_users, factors=factors
    )


def evaluate_split(
    name: str,
    train: DataFrame,
    test: DataFrame,
    cfg: Config,
    *,
    n_items: int,
    graded: bool,
    served: Mapping[str, DataFrame] | None = None,
) -> SplitScores:
    """Score every strategy and baseline on one split.

    Args:
        served: strategy -> (user_idx, item_idx, rank) lists already served (evaluation.split =
            "served"): scored as they are, nothing is fitted. None: the strategies' models are
            fitted on ``train`` and their lists made as the candidates stage makes them.
    """
    from recsys_spark.tuning.fitting import fit_models, strategy_params

    ec = cfg.evaluation
    k_max = max(ec.ks)
    truth, users = evaluated_users(train, test, cfg)
    pop = item_popularity(train).persist()
    out = SplitScores(
        {
            "name": name,
            "kind": ec.split,
            "train_rows": train.count(),
            "test_rows": test.count(),
            "test_users": users.count(),
            "relevant_rows": truth.count(),
        }
    )
    collected = SplitArrow(truth, pop)
    out.popularity_counts = sorted(collected.popularity().column("users").to_pylist(), reverse=True)
    n_train_users = train.select("user_idx").distinct().count()
    log.info(
        "split %s: %d train pairs, %d test pairs, %d users with relevant test items",
        name,
        out.meta["train_rows"],
        out.meta["test_rows"],
        out.meta["test_users"],
    )
    score = dict(
        truth=truth,
        cfg=cfg,
        split=name,
        n_items=n_items,
        popularity=pop,
        n_train_users=n_train_users,
        graded=graded,
        collected=collected,
    )
    try:
        if served is not None:
            for strategy, lists in served.items():
                recs = lists.join(users, "user_idx", "left_semi").where(F.col("rank") <= k_max)
                out.results += score_lists(recs, model=strategy, **score)
                out.models[strategy] = {"kind": "model", "params": {"served": True}}
        else:
            fitted = fit_models(
                train,
                cfg.model_copy(
                    update={"candidates": cfg.candidates.model_copy(update={"k": max(cfg.candidates.k, k_max)})}
                ),
            )
            try:
                cc = fitted.cfg.candidates
                popular = cold_start_segment(train, cc)
                with CandidateBuilder(fitted.inputs, users, popular, cc) as builder:
                    for strategy, recs in builder.strategies():
                        out.results += score_lists(
                            recs, model=strategy, item_factors=fitted.inputs.item_factors, **score
                        )
                        out.models[strategy] = {
                            "kind": "model",
                            "params": strategy_params(fitted.cfg, strategy),
                            "search": {
                                m: r.as_record()
                                for m, r in fitted.searches.items()
                                if m in _searched_by(strategy, fitted.cfg)
                            },
                        }
                if fitted.als_model is not None and fitted.cfg.als.feedback == "explicit":
                    out.results += _rating_error_rows(fitted.als_model, test, name)
            finally:
                fitted.release()
        for baseline in ec.baselines:
            recs = (
                popularity_recs(train, users.select("user_idx"), k_max)
                if baseline == "popularity"
                else random_recs(train, users.select("user_idx"), n_items, k_max, ec.seed)
            )
            out.results += score_lists(recs, model=baseline, **score)
            out.models[baseline] = {"kind": "baseline", "params": {} if baseline == "popularity" else {"seed": ec.seed}}
    finally:
        for df in (truth, users, pop):
            df.unpersist()
    return out


def _searched_by(strategy: str, cfg: Config) -> set[str]:
    from recsys_spark.candidates.builder import neighbor_method_of, sources_of

    found = {"blend"} if strategy == "blend" else set()
    for source in sources_of(strategy, cfg.candidates):
        found.add(neighbor_method_of(source, cfg.candidates) or "als")
    return found


def _rating_error_rows(model: Any, test: DataFrame, split: str) -> list[dict[str, Any]]:
    pred = model.setColdStartStrategy("drop").transform(
        test.where(F.col("rating").isNotNull()).select("user_idx", "item_idx", "rating")
    )
    errors = rating_errors(pred.select("rating", F.col("prediction").cast("double")))
    return [{"split": split, "model": "als", "metric": m, "k": 0, "value": errors[m]} for m in ("rmse", "mae")]


def headline_values(results: Sequence[Mapping[str, Any]], metric: str, k: int) -> dict[str, float]:
    """Mean headline metric across splits, per model (models without a value are left out)."""
    by_model: dict[str, list[float]] = {}
    for r in results:
        if r["metric"] == metric and r["k"] == k and r["value"] is not None:
            by_model.setdefault(r["model"], []).append(r["value"])
    return {m: mean_std(v)[0] for m, v in by_model.items()}


def headline_table(summary: EvaluationDocument) -> str:
    """A plain-text table of the headline metrics, mean ± std over the summary's splits, with the best strategy."""
    k = summary["headline"]["k"]
    metrics = ["ndcg", "precision", "recall", "map", "coverage"]
    lines = [f"{'model':<22}" + "".join(f"{m + '@' + str(k):>20}" for m in metrics)]
    for model, meta in summary["models"].items():
        cells = []
        for m in metrics:
            vals = [
                r["value"]
                for r in summary["results"]
                if r["model"] == model and r["metric"] == m and r["k"] == k and r["value"] is not None
            ]
            if vals:
                mean, std = mean_std(vals)
                cells.append(f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}")
            else:
                cells.append("-")
        kind = " (baseline)" if meta["kind"] == "baseline" else ""
        lines.append(f"{model + kind:<22}" + "".join(f"{c:>20}" for c in cells))
    best = summary.get("best")
    if best:
        means = headline_values(summary["results"], summary["headline"]["metric"], k)
        base = means.get("popularity")
        ratio = f", {best['value'] / base:.2f}x popularity" if base else ""
        lines.append(f"best: {best['model']} ({summary['headline']['metric']}@{k} {best['value']:.4f}{ratio})")
    lines += [f"flag: {f}" for f in summary.get("flags") or []]
    return "\n".join(lines)


def combined_summary(summaries: Sequence[EvaluationDocument], names: Sequence[str]) -> EvaluationDocument:
    """Several evaluations (e.g. one per ML-100K fold) as one: their results side by side, each
    run's splits named after it, and the best strategy over all of them."""
    first = summaries[0]
    headline = first["headline"]
    results: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for summary, name in zip(summaries, names):
        if summary["headline"] != headline:
            raise ValueError(f"{name} has headline {summary['headline']}, not {headline}: not comparable")
        multi = len(summary.get("splits") or []) > 1
        results += [{**r, "split": f"{name}/{r['split']}" if multi else name} for r in summary["results"]]
        for model, meta in summary["models"].items():
            models.setdefault(model, meta)
    means = headline_values(results, headline["metric"], headline["k"])
    strategies = [m for m, meta in models.items() if meta["kind"] == "model" and m in means]
    best = max(strategies, key=lambda m: means[m]) if strategies else None
    return {
        "headline": headline,
        "models": models,
        "results": results,
        "best": None if best is None else {"model": best, "value": means[best]},
        "flags": [f for s in summaries for f in s.get("flags") or []],
    }
