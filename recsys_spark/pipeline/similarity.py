"""The ``item-similarity`` job: one method's neighbours into ``item_neighbors``, replacing only that method's rows."""

from __future__ import annotations

import logging

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import StorageError
from recsys_spark.models.ratings import capped_users
from recsys_spark.models.similarity import fit_item_neighbors
from recsys_spark.pipeline.common import LOOKUP_ROW_GROUP_BYTES, writable_store
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import settings_hash
from recsys_spark.storage.store import WriteResult

log = logging.getLogger(__name__)


def run_item_similarity(spark: SparkSession, cfg: Config, ctx: RunContext) -> WriteResult:
    """Item neighbours into the ``similarity.method`` partition of item_neighbors.

    method cosine reads the latest interaction_matrix; method als the latest item_factors.
    """
    store = writable_store(spark, cfg)
    method = cfg.similarity.method
    if method == "als":
        version = store.version(T.ITEM_FACTORS)
        if version is None:
            raise StorageError(
                "table 'item_factors' does not exist yet: run `recsys-spark train-als` first "
                "(similarity.method = 'als' needs ALS item factors)"
            )
        factors = store.read(T.ITEM_FACTORS, version=version)
        first = factors.select("model_version").first()
        model_version = first[0] if first else f"als-{ctx.run_id}"
        neighbors = fit_item_neighbors(cfg.similarity, item_factors=factors)
        inputs = {T.ITEM_FACTORS: version}
        capped = 0
        matrix = None
        similarity, search = cfg.similarity, None
    else:
        version = store.version(T.INTERACTION_MATRIX)
        if version is None:
            raise StorageError("table 'interaction_matrix' does not exist yet: run `recsys-spark ingest` first")
        matrix = store.read(T.INTERACTION_MATRIX, version=version).persist(StorageLevel.MEMORY_AND_DISK)
        capped = capped_users(matrix, cfg.similarity.max_user_items)
        if capped:
            log.info(
                "%d users have more than %d items; their histories are capped", capped, cfg.similarity.max_user_items
            )
        model_version = f"{method}-{ctx.run_id}"
        similarity, search = cfg.similarity, None
        from recsys_spark.tuning.fitting import TUNABLE_METHODS

        if similarity.tune and method not in TUNABLE_METHODS:
            log.info("similarity.tune: method %s has no settings to search; fitting it as configured", method)
        elif similarity.tune:
            from recsys_spark.tuning.fitting import tune_neighbors
            from recsys_spark.tuning.search import carve_validation

            validation = carve_validation(matrix, cfg)
            try:
                similarity, search = tune_neighbors(cfg, method, validation)
            finally:
                validation.release()
        neighbors = fit_item_neighbors(similarity, matrix=matrix)
        inputs = {T.INTERACTION_MATRIX: version}
    try:
        items_version = store.version(T.ITEMS)
        if items_version is None:
            raise StorageError("table 'items' does not exist yet: run `recsys-spark ingest` first")
        inputs[T.ITEMS] = items_version
        ids = store.read(T.ITEMS, version=items_version).select("item_idx", "item_id")
        neighbors = (
            neighbors.join(F.broadcast(ids), "item_idx")
            .join(
                F.broadcast(ids.select(F.col("item_idx").alias("neighbor_idx"), F.col("item_id").alias("neighbor_id"))),
                "neighbor_idx",
            )
            .select(
                "item_id",
                "item_idx",
                "rank",
                "neighbor_id",
                "neighbor_idx",
                "similarity",
                "cooccurrence",
                F.lit(method).alias("method"),
                F.lit(model_version).alias("model_version"),
            )
            # the lookup layout: files cover disjoint item_id ranges, sorted inside, so a
            # reader's min/max statistics select one file and one row group per key
            .repartitionByRange("item_id")
            .sortWithinPartitions("item_id", "rank")
        )
        # the transform is what candidates weigh this method's votes with (candidates.vote_weights_of)
        commit = ctx.commit(
            model_version=model_version,
            input_versions=inputs,
            settings_hash=settings_hash(cfg, "item-similarity"),
            capped_users=capped,
            method=method,
            params=similarity.model_dump(mode="json"),
            **({"search": search.as_record()} if search else {}),
        )
        return store.write(
            neighbors,
            T.ITEM_NEIGHBORS,
            "overwrite",
            commit,
            ["method"],
            replace={"method": method},
            row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
        )
    finally:
        if matrix is not None:
            matrix.unpersist()
