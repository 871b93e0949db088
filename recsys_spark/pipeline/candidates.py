"""The ``candidates`` job (CLI ``candidates``, alias ``topk``): every strategy's lists into ``user_candidates``.

The lists are made by :class:`recsys_spark.candidates.builder.CandidateBuilder` from the served
factor and neighbour versions, which the commit records, so ``evaluate --set evaluation.split=served``
scores exactly these rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import AlsConfig, CandidatesConfig, Config, SimilarityConfig
from recsys_spark.errors import StorageError
from recsys_spark.pipeline.common import LOOKUP_ROW_GROUP_BYTES, writable_store
from recsys_spark.pipeline.layout import range_layout, split_points
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import settings_hash
from recsys_spark.session import whole_waves
from recsys_spark.storage.store import CommitInfo, TableStore, WriteResult
from recsys_spark.tuning.search import SearchResult

if TYPE_CHECKING:
    from recsys_spark.candidates.builder import ModelInputs

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


def served_als(store: TableStore, item_factors_version: int | None) -> AlsConfig | None:
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
            "als": served_als(store, inputs.get(T.ITEM_FACTORS)) or cfg.als,
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


def excluded_items(
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
    from recsys_spark.candidates.builder import CandidateBuilder, log_config, user_history_sizes

    cc = cfg.candidates
    log_config(cc)
    store = writable_store(spark, cfg)
    inputs = candidate_inputs(store, cfg)
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    excluded, rules = excluded_items(spark, cc, item_ids)
    out: dict[str, WriteResult] = {}
    sizes = popular = None
    try:
        sizes = user_history_sizes(matrix).persist()
        n_users = sizes.count()
        popular = eligible_popular_items(matrix, excluded, cc).persist()
        applied = {"rules": rules} if rules else {}
        settings = settings_hash(cfg, "candidates")
        commit = ctx.commit(input_versions=inputs, settings_hash=settings, **applied)
        out[T.POPULAR_ITEMS] = write_popular_items(store, popular, item_ids, f"popular-{ctx.run_id}", commit)
        segment = popular.where(F.col("segment") == cc.cold_start_segment).select("rank", "item_idx", "users")
        bounds = file_bounds(spark, user_ids, n_users, cc.k, cc.rows_per_file)  # one task of the write a file
        model = model_inputs(store, cfg, inputs, matrix, excluded)
        search = None
        if cc.tune and "blend" in cc.strategies:
            cc, search = _tuned_blend(store, cfg, matrix, inputs)
        with CandidateBuilder(model, sizes, segment, cc, explain=True) as builder:
            for strategy, lists in builder.strategies():
                model_version = builder.model_version(strategy)
                rows = lookup_rows(lists, user_ids, item_ids, model_version, strategy, bounds)
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
                out[f"{T.USER_CANDIDATES}/{strategy}"] = write_strategy(store, rows, strategy, commit)
                log.info("candidates %s: %d users", strategy, n_users)
    finally:
        for df in (sizes, popular, matrix, excluded):
            if df is not None:
                df.unpersist()
    return out


def candidate_inputs(store: TableStore, cfg: Config) -> dict[str, int]:
    """The versions of every table the configured strategies read, checked to exist (the
    neighbour methods they vote through included): what a candidates commit records."""
    from recsys_spark.candidates.builder import every_blend_source, needed_neighbor_methods, needed_sources

    cc = cfg.candidates
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
    return {t: v for t, v in inputs.items() if v is not None}


def eligible_popular_items(matrix: DataFrame, excluded: DataFrame | None, cc: CandidatesConfig) -> DataFrame:
    """popular_items' rows (segment, rank, item_idx, users), the excluded items left out."""
    from recsys_spark.candidates.builder import popular_items

    eligible = matrix if excluded is None else matrix.join(F.broadcast(excluded), "item_idx", "left_anti")
    return popular_items(eligible, cc.popularity_window_days, cc.popular_k)


def write_popular_items(
    store: TableStore, popular: DataFrame, item_ids: DataFrame, model_version: str, commit: CommitInfo
) -> WriteResult:
    """Overwrite popular_items with ``popular`` (:func:`eligible_popular_items`)."""
    return store.write(
        popular.join(F.broadcast(item_ids), "item_idx")
        .select(
            "segment",
            "rank",
            "item_idx",
            "item_id",
            F.col("users").cast("double").alias("score"),
            "users",
            F.lit(model_version).alias("model_version"),
        )
        .repartition(1)
        .sortWithinPartitions("segment", "rank"),
        T.POPULAR_ITEMS,
        "overwrite",
        commit,
    )


def model_inputs(
    store: TableStore, cfg: Config, inputs: dict[str, int], matrix: DataFrame, excluded: DataFrame | None
) -> ModelInputs:
    """What the strategies score with, read at the ``inputs`` versions: the factors, each method's
    neighbours and vote weights, their model versions; the excluded items removed from all."""
    from recsys_spark.candidates.builder import ModelInputs, every_blend_source, needed_neighbor_methods
    from recsys_spark.models.similarity import vote_weight

    cc = cfg.candidates
    methods = needed_neighbor_methods(every_blend_source(cc) if cc.tune else cc)
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
        neighbors[method] = store.read(T.ITEM_NEIGHBORS, version=inputs[T.ITEM_NEIGHBORS], where=f"method = '{method}'")
        versions[method] = neighbors[method].select("model_version").first()[0]
        if excluded is not None:
            banned = F.broadcast(excluded.withColumnRenamed("item_idx", "neighbor_idx"))
            neighbors[method] = neighbors[method].join(banned, "neighbor_idx", "left_anti")
        weights[method] = vote_weight(_neighbor_params(store, inputs[T.ITEM_NEIGHBORS], method), method)
    return ModelInputs(matrix, uf, itf, neighbors, weights, versions)


def lookup_rows(
    lists: DataFrame,
    user_ids: DataFrame,
    item_ids: DataFrame,
    model_version: str,
    strategy: str,
    bounds: Sequence[str],
    keep: DataFrame | None = None,
) -> DataFrame:
    """A strategy's lists as user_candidates rows, with the ``keep`` rows (already in the table's
    form) beside them, in the lookup layout: a file for each user_id range that ``bounds`` (from
    :func:`file_bounds`) cut, sorted inside."""
    because_ids = F.broadcast(
        item_ids.select(F.col("item_idx").alias("because_item_idx"), F.col("item_id").alias("because_item_id"))
    )
    rows = (
        lists.join(user_ids, "user_idx")
        .join(F.broadcast(item_ids), "item_idx")
        .join(because_ids, "because_item_idx", "left")
        .select(
            *USER_CANDIDATE_COLUMNS[:-2], F.lit(model_version).alias("model_version"), F.lit(strategy).alias("strategy")
        )
    )
    if keep is not None:
        rows = rows.unionByName(keep.select(*USER_CANDIDATE_COLUMNS))
    return range_layout(rows, "user_id", bounds, ("user_id", "rank"))


def file_bounds(spark: SparkSession, user_ids: DataFrame, n_users: int, k: int, rows_per_file: int) -> list[str]:
    """The user_id split points of the lookup files: whole waves of files of at most
    ``rows_per_file`` rows (k a user), cut at quantiles of the users table."""
    return split_points(user_ids, "user_id", whole_waves(spark, n_users * k, rows_per_file), n_users)


#: user_candidates' columns, in table order.
USER_CANDIDATE_COLUMNS = (
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
    "model_version",
    "strategy",
)


def write_strategy(store: TableStore, rows: DataFrame, strategy: str, commit: CommitInfo) -> WriteResult:
    """Replace the ``strategy`` partition of user_candidates with ``rows`` (:func:`lookup_rows`)."""
    return store.write(
        rows,
        T.USER_CANDIDATES,
        "overwrite",
        commit,
        ["strategy"],
        replace={"strategy": strategy},
        row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
    )
