"""The ``candidates`` job (CLI ``candidates``, alias ``topk``): every strategy's lists into ``user_candidates``.

The lists are made by :class:`recsys_spark.candidates.builder.CandidateBuilder` from the served
factor and neighbour versions, which the commit records, so ``evaluate --set evaluation.split=served``
scores exactly these rows.
"""

from __future__ import annotations

import logging

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import AlsConfig, CandidatesConfig, Config, SimilarityConfig
from recsys_spark.errors import StorageError
from recsys_spark.pipeline.common import LOOKUP_ROW_GROUP_BYTES, writable_store
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import settings_hash
from recsys_spark.storage.store import TableStore, WriteResult
from recsys_spark.tuning.search import SearchResult

log = logging.getLogger(__name__)


def _neighbor_params(store: TableStore, version: int, method: str) -> SimilarityConfig:
    """The similarity settings the ``method`` partition of item_neighbors ``version`` was fitted with."""
    newer = (store.version(T.ITEM_NEIGHBORS) or 0) - version
    for entry in store.history(T.ITEM_NEIGHBORS, limit=newer + 200):
        if entry.version <= version and entry.metadata.get("method") == method:
            params = entry.metadata.get("params")
            # partitions written before the settings were recorded: binary cosine, unweighted votes
            return SimilarityConfig.model_validate(params) if params else SimilarityConfig(method=method)
    return SimilarityConfig(method=method)


def _served_als(store: TableStore, item_factors_version: int | None) -> AlsConfig | None:
    """The ALS settings the served item_factors were fitted with (their models row), or None."""
    import json

    if item_factors_version is None or not store.exists(T.MODELS):
        return None
    first = store.read(T.ITEM_FACTORS, version=item_factors_version).select("model_version").first()
    rows = store.read(T.MODELS).where(F.col("model_version") == first[0]).select("params").collect() if first else []
    if not rows:
        return None
    return AlsConfig.model_validate({k: v for k, v in json.loads(rows[0].params).items() if k != "search"})


def _tuned_blend(
    store: TableStore, cfg: Config, matrix: DataFrame, inputs: dict[str, int | None]
) -> tuple[CandidatesConfig, SearchResult]:
    """candidates.tune: blend weights searched on a validation carve-out of ``matrix``, each source
    refitted there with the settings its served model was fitted with."""
    from recsys_spark.candidates.builder import every_blend_source, needed_neighbor_methods
    from recsys_spark.tuning.fitting import fit_as_configured, tune_blend
    from recsys_spark.tuning.search import carve_validation

    every = every_blend_source(cfg.candidates)
    similarity = cfg.similarity
    for method in needed_neighbor_methods(every):
        fitted_with = _neighbor_params(store, inputs[T.ITEM_NEIGHBORS], method)
        similarity = similarity.model_copy(update={method: fitted_with.params(method)})
    served = cfg.model_copy(
        update={
            "als": _served_als(store, inputs.get(T.ITEM_FACTORS)) or cfg.als,
            "similarity": similarity,
            "candidates": every,
        }
    )
    validation = carve_validation(matrix, cfg)
    try:
        fitted = fit_as_configured(validation.fit, served)
        try:
            weights, search = tune_blend(served, validation, fitted)
        finally:
            fitted.release()
    finally:
        validation.release()
    return cfg.candidates.model_copy(update={"blend_weights": weights}), search


def _excluded_items(
    spark: SparkSession, cc: CandidatesConfig, item_ids: DataFrame
) -> tuple[DataFrame | None, dict[str, object] | None]:
    """(item_idx of the items ``candidates.exclude_items`` rules out, what the commit records)."""
    from recsys_spark.pipeline.rules import read_item_rules

    if not cc.exclude_items:
        return None, None
    rules = read_item_rules(cc.exclude_items)
    listed = spark.createDataFrame([(i,) for i in rules.item_ids], "item_id STRING")
    excluded = item_ids.join(F.broadcast(listed), "item_id").select("item_idx").persist()
    known = excluded.count()
    if known < len(rules.item_ids):
        log.info("item rules: %d of %d ids are not in the catalogue", len(rules.item_ids) - known, len(rules.item_ids))
    return excluded, rules.record(known)


def run_candidates(spark: SparkSession, cfg: Config, ctx: RunContext) -> dict[str, WriteResult]:
    """popular_items, then one user_candidates partition per configured strategy.

    Every list is built from the latest inputs by :class:`candidates.CandidateBuilder` (the code
    evaluation scores too); the commit records their versions. Users below
    ``candidates.min_history`` items, and users a strategy cannot score (no factors yet, no
    neighbours), get the popularity list, tagged source "popular".
    """
    import math

    from recsys_spark.candidates.builder import (
        CandidateBuilder,
        ModelInputs,
        every_blend_source,
        log_config,
        needed_neighbor_methods,
        needed_sources,
        popular_items,
        user_history_sizes,
    )
    from recsys_spark.models.similarity import vote_weight

    cc = cfg.candidates
    log_config(cc)
    store = writable_store(spark, cfg)
    # a blend search may weigh in a source configured at 0: everything it could use must exist
    scope = every_blend_source(cc) if cc.tune else cc
    methods = needed_neighbor_methods(scope)
    needs = [T.INTERACTION_MATRIX, T.USERS, T.ITEMS]
    if "als" in needed_sources(scope):
        needs += [T.USER_FACTORS, T.ITEM_FACTORS]
    if methods:
        needs.append(T.ITEM_NEIGHBORS)
    inputs = {t: store.version(t) for t in needs}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        raise StorageError(
            f"tables {missing} do not exist yet: run ingest, train-als and item-similarity first "
            f"(candidates.strategies = {list(cc.strategies)})"
        )
    built = store.partition_values(T.ITEM_NEIGHBORS, "method") if methods else set()
    for method in methods:
        if method not in built:
            raise StorageError(
                f"item_neighbors has no {method!r} neighbours: run `recsys-spark "
                f"item-similarity --set similarity.method={method}` first "
                f"(candidates.strategies = {list(cc.strategies)})"
            )

    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    excluded, rules = _excluded_items(spark, cc, item_ids)
    out: dict[str, WriteResult] = {}
    sizes = popular = None
    try:
        sizes = user_history_sizes(matrix).persist()
        n_users = sizes.count()
        eligible = matrix if excluded is None else matrix.join(F.broadcast(excluded), "item_idx", "left_anti")
        popular = popular_items(eligible, cc.popularity_window_days, cc.popular_k).persist()
        pop_version = f"popular-{ctx.run_id}"
        applied = {"rules": rules} if rules else {}
        settings = settings_hash(cfg, "candidates")
        commit = ctx.commit(input_versions=inputs, settings_hash=settings, **applied)
        out[T.POPULAR_ITEMS] = store.write(
            popular.join(F.broadcast(item_ids), "item_idx")
            .select(
                "segment",
                "rank",
                "item_idx",
                "item_id",
                F.col("users").cast("double").alias("score"),
                "users",
                F.lit(pop_version).alias("model_version"),
            )
            .repartition(1)
            .sortWithinPartitions("segment", "rank"),
            T.POPULAR_ITEMS,
            "overwrite",
            commit,
        )
        segment = popular.where(F.col("segment") == cc.cold_start_segment).select("rank", "item_idx", "users")
        n_files = max(1, math.ceil(n_users * cc.k / cc.rows_per_file))

        versions: dict[str, str] = {}
        uf = itf = None
        if T.ITEM_FACTORS in inputs:
            uf = store.read(T.USER_FACTORS, version=inputs[T.USER_FACTORS])
            itf = store.read(T.ITEM_FACTORS, version=inputs[T.ITEM_FACTORS])
            versions["als"] = itf.select("model_version").first()[0]
            if excluded is not None:
                itf = itf.join(F.broadcast(excluded), "item_idx", "left_anti")
        neighbors, weights = {}, {}
        for method in methods:
            neighbors[method] = store.read(
                T.ITEM_NEIGHBORS, version=inputs[T.ITEM_NEIGHBORS], where=f"method = '{method}'"
            )
            versions[method] = neighbors[method].select("model_version").first()[0]
            if excluded is not None:
                banned = F.broadcast(excluded.withColumnRenamed("item_idx", "neighbor_idx"))
                neighbors[method] = neighbors[method].join(banned, "neighbor_idx", "left_anti")
            weights[method] = vote_weight(_neighbor_params(store, inputs[T.ITEM_NEIGHBORS], method), method)
        model = ModelInputs(matrix, uf, itf, neighbors, weights, versions)
        search = None
        if cc.tune and "blend" in cc.strategies:
            cc, search = _tuned_blend(store, cfg, matrix, inputs)
        because_ids = F.broadcast(
            item_ids.select(F.col("item_idx").alias("because_item_idx"), F.col("item_id").alias("because_item_id"))
        )
        with CandidateBuilder(model, sizes, segment, cc, explain=True) as builder:
            for strategy, lists in builder.strategies():
                model_version = builder.model_version(strategy)
                rows = (
                    lists.join(user_ids, "user_idx")
                    .join(F.broadcast(item_ids), "item_idx")
                    .join(because_ids, "because_item_idx", "left")
                    .select(
                        "user_id",
                        "user_idx",
                        "rank",
                        "item_id",
                        "item_idx",
                        "score",
                        "source",
                        "because_item_id",
                        "because_item_idx",
                        "because_share",
                        F.lit(model_version).alias("model_version"),
                        F.lit(strategy).alias("strategy"),
                    )
                    # the lookup layout: files cover disjoint user_id ranges, sorted inside
                    .repartitionByRange(n_files, "user_id")
                    .sortWithinPartitions("user_id", "rank")
                )
                tuned = (
                    {"blend_weights": cc.blend_weights, "search": search.as_record()}
                    if (search and strategy == "blend")
                    else {}
                )
                commit = ctx.commit(
                    model_version=model_version,
                    input_versions=inputs,
                    settings_hash=settings,
                    strategy=strategy,
                    **tuned,
                    **applied,
                )
                out[f"{T.USER_CANDIDATES}/{strategy}"] = store.write(
                    rows,
                    T.USER_CANDIDATES,
                    "overwrite",
                    commit,
                    ["strategy"],
                    replace={"strategy": strategy},
                    row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
                )
                log.info("candidates %s: %d users", strategy, n_users)
    finally:
        for df in (sizes, popular, matrix, excluded):
            if df is not None:
                df.unpersist()
    return out
