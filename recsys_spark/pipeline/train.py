"""The ``train-als`` job: ALS factors into ``user_factors`` / ``item_factors``, and the model's row in ``models``."""

from __future__ import annotations

import logging

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import StorageError
from recsys_spark.pipeline.common import writable_store
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import settings_hash
from recsys_spark.storage.store import WriteResult

log = logging.getLogger(__name__)


def run_train_als(spark: SparkSession, cfg: Config, ctx: RunContext) -> dict[str, WriteResult]:
    """Fit ALS on the latest interaction_matrix; write user_factors, item_factors and a models row."""
    import json
    import time

    from recsys_spark.models.als import blas_in_use, factor_frames, fit_als, training_frame, training_rmse

    store = writable_store(spark, cfg)
    inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        raise StorageError(f"tables {missing} do not exist yet: run `recsys-spark ingest` first")
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX])
    als, search = cfg.als, None
    if als.tune:
        from recsys_spark.tuning.fitting import tune_als
        from recsys_spark.tuning.search import carve_validation

        validation = carve_validation(matrix, cfg)
        try:
            als, search = tune_als(cfg, validation)
        finally:
            validation.release()
    train = training_frame(matrix, als).persist(StorageLevel.MEMORY_AND_DISK)
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    try:
        n = train.count()
        if n == 0:
            raise StorageError(
                f"interaction_matrix has no {als.feedback} feedback to train on (als.feedback = {als.feedback!r})"
            )
        started = time.perf_counter()
        model = fit_als(train, als, user_ids, item_ids)  # checks the values first, naming bad pairs by id
        seconds = time.perf_counter() - started
        rmse = training_rmse(model, train, als)
    finally:
        train.unpersist()
    model_version = f"als-{ctx.run_id}"
    users, items = factor_frames(model)
    commit = ctx.commit(
        model_version=model_version,
        input_versions=inputs,
        settings_hash=settings_hash(cfg, "train-als"),
        **({"tuned": search.best, "tuned_value": search.best_value} if search else {}),
    )
    out = {
        T.USER_FACTORS: store.write(
            users.join(user_ids, "user_idx")
            .select("user_idx", "user_id", "factors", F.lit(model_version).alias("model_version"))
            .repartitionByRange("user_idx")
            .sortWithinPartitions("user_idx"),
            T.USER_FACTORS,
            "overwrite",
            commit,
        ),
        T.ITEM_FACTORS: store.write(
            items.join(item_ids, "item_idx")
            .select("item_idx", "item_id", "factors", F.lit(model_version).alias("model_version"))
            .repartitionByRange("item_idx")
            .sortWithinPartitions("item_idx"),
            T.ITEM_FACTORS,
            "overwrite",
            commit,
        ),
    }
    # the settings fitted with; a search's choice and every trial it made ride along
    params = {**als.model_dump(mode="json"), **({"search": search.as_record()} if search else {})}
    row = [
        (
            model_version,
            ctx.run_id,
            "als",
            json.dumps(params, sort_keys=True),
            json.dumps(inputs, sort_keys=True),
            n,
            out[T.USER_FACTORS].rows,
            out[T.ITEM_FACTORS].rows,
            float(seconds),
            rmse,
            blas_in_use(spark),
            ctx.started_at,
        )
    ]
    models = spark.createDataFrame(
        row,
        "model_version STRING, run_id STRING, algorithm STRING, params STRING, "
        "input_versions STRING, num_ratings LONG, num_users LONG, num_items LONG, "
        "train_seconds DOUBLE, train_rmse DOUBLE, blas STRING, trained_at TIMESTAMP",
    )
    out[T.MODELS] = store.write(models.coalesce(1), T.MODELS, "append", commit)
    log.info(
        "ALS model %s: %d ratings, %d users, %d items, %.1fs",
        model_version,
        n,
        out[T.USER_FACTORS].rows,
        out[T.ITEM_FACTORS].rows,
        seconds,
    )
    return out


def als_summary(cfg: Config, out: dict[str, WriteResult]) -> str:
    """One line on a train-als run: the factor and model table versions it committed."""
    return (
        f"ALS ({cfg.als.feedback}, rank {cfg.als.rank}): user_factors v{out[T.USER_FACTORS].version} "
        f"({out[T.USER_FACTORS].rows:,} users), item_factors v{out[T.ITEM_FACTORS].version} "
        f"({out[T.ITEM_FACTORS].rows:,} items), models v{out[T.MODELS].version}"
    )
