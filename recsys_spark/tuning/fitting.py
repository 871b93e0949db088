"""Fit the models a set of candidate strategies needs, each with searched settings where asked.

Evaluation fits them on every split's training part, and the jobs on the interaction matrix:
both go through :func:`fit_models`, so the models evaluated are the models served. A search
(``als.tune``, ``similarity.tune``, ``candidates.tune``) runs on a validation carve-out of the
same training data (:mod:`recsys_spark.tuning.search`): test data never chooses anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from recsys_spark.candidates.builder import (
    CandidateBuilder,
    ModelInputs,
    cold_start_segment,
    every_blend_source,
    needed_neighbor_methods,
    needed_sources,
    neighbor_method_of,
    sources_of,
)
from recsys_spark.config.schema import AlsConfig, Config, EasePrune, SimilarityConfig
from recsys_spark.errors import ConfigError
from recsys_spark.evaluation.driver_metrics import LOCAL_METRICS, MAX_DRIVER_ROWS
from recsys_spark.models.ease import EaseGrams, fit_ease
from recsys_spark.models.similarity import fit_item_neighbors, vote_weight
from recsys_spark.session import released_caches
from recsys_spark.tuning.blend_search import CollectedBlend
from recsys_spark.tuning.search import (
    SearchResult,
    Validation,
    als_space,
    blend_grid,
    carve_validation,
    run_search,
    survivors,
    validation_score,
)

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel

log = logging.getLogger(__name__)

__all__ = [
    "FittedModels",
    "fit_als_factors",
    "fit_as_configured",
    "fit_models",
    "tune_als",
    "tune_blend",
    "tune_neighbors",
]

#: Methods with settings to search (see :func:`_method_space` for what is searched), and the
#: strategy whose validation lists judge each.
TUNABLE_METHODS = {"cosine": "item_item", "ease": "ease", "rp3beta": "rp3beta"}


@dataclass
class FittedModels:
    """Fitted models ready for :class:`CandidateBuilder`, with the settings that made them."""

    inputs: ModelInputs
    cfg: Config
    """The configuration with every searched setting filled in (als, similarity, blend weights)."""
    searches: dict[str, SearchResult] = field(default_factory=dict)
    """What each search tried, by model (als, ease, rp3beta, blend)."""
    als_model: ALSModel | None = None
    _persisted: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for df in self._persisted:
            df.unpersist()
        self._persisted.clear()


def fit_als_factors(train: DataFrame, als: AlsConfig) -> tuple[DataFrame, DataFrame, ALSModel]:
    """(user_factors, item_factors, model) of ALS fitted on ``train`` (user_idx, item_idx, confidence, rating)."""
    from recsys_spark.models.als import factor_frames, fit_als, training_frame

    model = fit_als(training_frame(train, als), als)
    uf, itf = factor_frames(model)
    return uf, itf, model


def _score(inputs: ModelInputs, strategy: str, validation: Validation, cfg: Config) -> float | None:
    """Validation metric of one strategy's list, built as the candidates stage builds it (cold start included)."""
    popular = cold_start_segment(validation.fit, cfg.candidates)
    with CandidateBuilder(inputs, validation.users, popular, cfg.candidates) as builder:
        return validation_score(builder.strategy(strategy), validation)


def tune_als(cfg: Config, validation: Validation) -> tuple[AlsConfig, SearchResult]:
    """Random search with successive halving over rank, reg_param, alpha and confidence."""
    tc = cfg.tuning
    spark = validation.fit.sparkSession
    metric = f"{validation.metric}@{validation.k}"
    k_cfg = cfg.candidates.model_copy(update={"k": validation.k})
    scoring = cfg.model_copy(update={"candidates": k_cfg})

    def objective(params: dict[str, Any], iterations: int) -> float | None:
        als = cfg.als.model_copy(update={**params, "max_iter": iterations, "tune": False})
        with released_caches(spark):
            uf, itf, _ = fit_als_factors(validation.fit, als)
            return _score(ModelInputs(validation.fit, uf, itf), "als", validation, scoring)

    started = time.monotonic()
    short = min(tc.als_short_iter, cfg.als.max_iter)
    first = run_search("als", als_space(tc), lambda p: objective(p, short), metric, tc, rung=0, started=started)
    final = first
    if short < cfg.als.max_iter:
        second = run_search(
            "als",
            survivors(first, tc.als_keep),
            lambda p: objective(p, cfg.als.max_iter),
            metric,
            tc,
            rung=1,
            started=started,
        )
        final = SearchResult(
            "als",
            second.best,
            second.best_value,
            metric,
            first.trials + second.trials,
            first.skipped + second.skipped,
            time.monotonic() - started,
        )
    chosen = cfg.als.model_copy(update={**final.best, "tune": False})
    log.info(
        "ALS search chose %s (%s %.4f on validation, %d trials, %.0f s)",
        final.best,
        metric,
        final.best_value,
        len(final.trials),
        final.seconds,
    )
    return chosen, final


def _method_space(cfg: Config, method: str) -> list[dict[str, Any]]:
    tc = cfg.tuning
    if method == "cosine":
        return [{"top_n": n, "shrink": v} for n in tc.cosine_top_n for v in tc.cosine_shrink]
    if method == "ease":
        # top_n and prune innermost: consecutive trials share one solve (ease.EaseGrams keeps the last B)
        top_ns: list[int | None] = list(tc.ease_top_n) if tc.ease_top_n else [None]
        prunes: list[EasePrune | None] = list(tc.ease_prune) if tc.ease_prune else [None]
        return [
            {"confidence": c, "l2": l2} | ({} if n is None else {"top_n": n}) | ({} if p is None else {"prune": p})
            for c in tc.ease_confidence
            for l2 in tc.ease_l2
            for n in top_ns
            for p in prunes
        ]
    if method == "rp3beta":
        return [{"alpha": a, "beta": b} for a in tc.rp3_alpha for b in tc.rp3_beta]
    raise ConfigError(
        f"similarity.tune = true, but similarity.method {method!r} has no settings to search; "
        f"the search covers {', '.join(TUNABLE_METHODS)}"
    )


def _with_method(similarity: SimilarityConfig, method: str, params: dict[str, Any]) -> SimilarityConfig:
    own = similarity.params(method).model_copy(update=params)
    return similarity.model_copy(update={"method": method, method: own, "tune": False})


def tune_neighbors(cfg: Config, method: str, validation: Validation) -> tuple[SimilarityConfig, SearchResult]:
    """Grid search over a neighbour method's settings (see :func:`_method_space`)."""
    spark = validation.fit.sparkSession
    metric = f"{validation.metric}@{validation.k}"
    strategy = TUNABLE_METHODS[method]
    scoring = cfg.model_copy(update={"candidates": cfg.candidates.model_copy(update={"k": validation.k})})

    grams = EaseGrams(validation.fit) if method == "ease" else None  # one Gram per transform, not per l2

    def objective(params: dict[str, Any]) -> float | None:
        similarity = _with_method(cfg.similarity, method, params)
        with released_caches(spark):
            fitted = (
                fit_ease(validation.fit, similarity, grams).neighbors
                if grams is not None
                else fit_item_neighbors(similarity, matrix=validation.fit)
            )
            neighbors = fitted.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                inputs = ModelInputs(
                    validation.fit,
                    neighbors={method: neighbors},
                    vote_weights={method: vote_weight(similarity, method)},
                )
                return _score(inputs, strategy, validation, scoring)
            finally:
                neighbors.unpersist()

    try:
        result = run_search(method, _method_space(cfg, method), objective, metric, cfg.tuning)
    finally:
        if grams is not None:
            grams.release()
    log.info("%s search chose %s (%s %.4f on validation)", method, result.best, metric, result.best_value)
    return _with_method(cfg.similarity, method, result.best), result


def tune_blend(cfg: Config, validation: Validation, fitted: FittedModels) -> tuple[dict[str, float], SearchResult]:
    """Grid search over blend weights, its sources' validation lists made once by ``fitted``
    (models fitted on ``validation.fit``)."""
    cc = fitted.cfg.candidates
    sources = [s for s in cc.blend_weights]  # every source the config names may be weighed in
    metric = f"{validation.metric}@{validation.k}"
    popular = cold_start_segment(validation.fit, cfg.candidates)
    with CandidateBuilder(fitted.inputs, validation.users, popular, cc) as builder:
        lists = {s: builder.source(s) for s in sources}  # scored once, reused by every weight vector

        def in_spark(weights: dict[str, float]) -> float | None:
            return validation_score(builder.blend(weights), validation)

        objective: Callable[[dict[str, float]], float | None] = in_spark
        rows = sum(df.count() for df in lists.values())
        if validation.metric in LOCAL_METRICS and not validation.graded and rows <= MAX_DRIVER_ROWS:
            objective = CollectedBlend.collect(
                lists, builder.cold_start_lists(validation.k), validation.truth, validation.metric, validation.k
            ).score
        else:
            log.info(
                "blend search in Spark: %d source rows (driver limit %d), metric %s", rows, MAX_DRIVER_ROWS, metric
            )

        result = run_search("blend", blend_grid(sources, cfg.tuning.blend_steps), objective, metric, cfg.tuning)
    log.info("blend search chose %s (%s %.4f on validation)", result.best, metric, result.best_value)
    return dict(result.best), result


def fit_models(train: DataFrame, cfg: Config, validation: Validation | None = None) -> FittedModels:
    """Fit what ``cfg.candidates.strategies`` need on ``train``, searching the settings each stage's
    ``tune`` flag asks for on ``validation`` (carved from ``train`` when None and a flag is set)."""
    cc = cfg.candidates
    sources = needed_sources(cc)
    methods = needed_neighbor_methods(cc)
    wants = {
        "als": cfg.als.tune and ("als" in sources or "als" in methods),
        "similarity": cfg.similarity.tune and any(m in TUNABLE_METHODS for m in methods),
        "blend": cc.tune and "blend" in cc.strategies,
    }
    own_validation = validation is None and any(wants.values())
    if own_validation:
        validation = carve_validation(train, cfg)
    searches: dict[str, SearchResult] = {}
    try:
        chosen = cfg
        if wants["als"]:
            als, searches["als"] = tune_als(cfg, validation)
            chosen = chosen.model_copy(update={"als": als})
        if wants["similarity"]:
            similarity = chosen.similarity
            for method in methods:
                if method in TUNABLE_METHODS:
                    tuned, searches[method] = tune_neighbors(chosen, method, validation)
                    similarity = similarity.model_copy(update={method: tuned.params(method)})
            chosen = chosen.model_copy(update={"similarity": similarity})
        if wants["blend"]:
            every = every_blend_source(chosen.candidates)
            on_fit = fit_as_configured(validation.fit, chosen.model_copy(update={"candidates": every}))
            try:
                weights, searches["blend"] = tune_blend(chosen, validation, on_fit)
            finally:
                on_fit.release()
            chosen = chosen.model_copy(update={"candidates": cc.model_copy(update={"blend_weights": weights})})
    finally:
        if own_validation and validation is not None:
            validation.release()
    fitted = fit_as_configured(train, chosen)
    fitted.searches = searches
    return fitted


def fit_as_configured(train: DataFrame, cfg: Config) -> FittedModels:
    """The models of ``cfg``'s strategies fitted on ``train`` with ``cfg``'s settings as they are."""
    cc = cfg.candidates
    sources, methods = needed_sources(cc), needed_neighbor_methods(cc)
    persisted: list[DataFrame] = []
    uf = itf = model = None
    versions: dict[str, str] = {}
    if "als" in sources or "als" in methods:
        uf, itf, model = fit_als_factors(train, cfg.als)
        uf, itf = uf.persist(), itf.persist()
        persisted += [uf, itf]
        versions["als"] = "als"
    neighbors, weights = {}, {}
    for method in methods:
        similarity = cfg.similarity.model_copy(update={"method": method})
        nb = fit_item_neighbors(similarity, matrix=train, item_factors=itf).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(nb)
        neighbors[method], weights[method] = nb, vote_weight(similarity, method)
        versions[method] = method
    inputs = ModelInputs(train, uf, itf, neighbors, weights, versions)
    return FittedModels(inputs, cfg, {}, model, persisted)


def strategy_params(cfg: Config, strategy: str) -> dict[str, Any]:
    """The settings a strategy's lists were made with (for evaluation.json and the report)."""
    cc = cfg.candidates
    out: dict[str, Any] = {"k": cc.k, "min_history": cc.min_history}
    for source in sources_of(strategy, cc):
        method = neighbor_method_of(source, cc)
        if source == "als":
            out["als"] = cfg.als.model_dump(mode="json")
        elif method:
            out[source] = {
                "method": method,
                **cfg.similarity.params(method).model_dump(mode="json"),
                "voters": cc.recent_items if source == "item_item" else cc.max_history_votes,
            }
    if strategy == "blend":
        out["blend_weights"] = dict(cc.blend_weights)
    return out
