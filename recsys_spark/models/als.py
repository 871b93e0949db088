"""ALS matrix factorisation on Spark (DataFrame in, factors out): MLlib's, or the project's
blocks engine (``als.engine``, :mod:`recsys_spark.models.als_blocks`).

Implicit mode fits the Hu-Koren-Volinsky model on ``interaction_matrix.confidence``; explicit
mode fits ``rating``. Factors come back as (idx, factors) DataFrames; the job attaches original
ids and writes them. Every fit first checks that the values it trains on fit float32, the type
MLlib holds them in, so that a bad pair is named instead of failing deep inside MLlib.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.config.schema import FLOAT32_MAX, AlsConfig
from recsys_spark.errors import InputError
from recsys_spark.models.confidence import confidence_value

log = logging.getLogger(__name__)


def training_frame(matrix: DataFrame, cfg: AlsConfig) -> DataFrame:
    """(user_idx, item_idx, value): for implicit feedback r, the pair's confidence after
    ``als.confidence`` (MLlib then weighs it 1 + alpha x r); for explicit, the rating (non-null only)."""
    if cfg.feedback == "explicit":
        return matrix.where(F.col("rating").isNotNull()).select("user_idx", "item_idx", F.col("rating").alias("value"))
    r = confidence_value(F.col("confidence"), cfg.confidence, cfg.epsilon)
    return matrix.where(F.col("confidence") > 0).select("user_idx", "item_idx", r.alias("value"))


def build_als(cfg: AlsConfig, default_blocks: int) -> ALS:
    """An MLlib ALS estimator with every parameter taken from ``cfg``."""
    return ALS(
        rank=cfg.rank,
        maxIter=cfg.max_iter,
        regParam=cfg.reg_param,
        alpha=cfg.alpha,
        implicitPrefs=cfg.feedback == "implicit",
        nonnegative=cfg.nonnegative,
        numUserBlocks=cfg.num_user_blocks or default_blocks,
        numItemBlocks=cfg.num_item_blocks or default_blocks,
        seed=cfg.seed,
        checkpointInterval=cfg.checkpoint_interval,
        userCol="user_idx",
        itemCol="item_idx",
        ratingCol="value",
        coldStartStrategy="drop",
    )


def training_value(cfg: AlsConfig, value: Column) -> Column:
    """What ALS weighs for one pair of :func:`training_frame`: 1 + alpha x confidence for implicit
    feedback (Hu, Koren, Volinsky), the rating itself for explicit."""
    return 1.0 + F.lit(cfg.alpha) * value if cfg.feedback == "implicit" else value


def check_training_values(
    train: DataFrame, cfg: AlsConfig, users: DataFrame | None = None, items: DataFrame | None = None
) -> None:
    """Raise InputError naming up to 5 pairs whose :func:`training_value` is not finite in float32.

    MLlib casts ratings to float32 and fails on an infinite one with no hint of which pair, or
    why; float32 ALS implementations generally overflow the same way. ``users`` / ``items``
    ((user_idx, user_id) and (item_idx, item_id) maps) name the pairs by their ids; without them
    they are named by index.
    """
    target = training_value(cfg, F.col("value"))
    # "not <=" is also true for NaN, which Spark orders above every number.
    bad = train.where(~(F.abs(target) <= FLOAT32_MAX))
    shown = (
        bad.select("user_idx", "item_idx", "value", target.alias("target"))
        .orderBy("user_idx", "item_idx")
        .limit(5)
        .collect()
    )
    if not shown:
        return
    total = bad.count()
    user_ids = _id_names(users, "user_idx", "user_id", {r.user_idx for r in shown})
    item_ids = _id_names(items, "item_idx", "item_id", {r.item_idx for r in shown})

    def key(r: Any) -> str:
        if user_ids and item_ids:
            return f"(user_id {user_ids.get(r.user_idx)!r}, item_id {item_ids.get(r.item_idx)!r})"
        return f"(user_idx {r.user_idx}, item_idx {r.item_idx})"

    if cfg.feedback == "implicit":
        what = (
            f"implicit ALS weighs 1 + als.alpha x confidence (als.alpha = {cfg.alpha:g}), which must be "
            f"finite in float32 (at most {FLOAT32_MAX:.4g})"
        )
        rows = [f"    {key(r)}: confidence {r.value:.4g} -> {r.target:.4g}" for r in shown]
        fix = (
            'lower als.alpha, or re-run ingest with ingest.value_transform = "log1p" (tames large values) '
            "or ingest.max_value (rejects larger values as value_out_of_range)"
        )
    else:
        what = f"explicit ALS fits the rating itself, which must be finite in float32 (at most {FLOAT32_MAX:.4g})"
        rows = [f"    {key(r)}: rating {r.value:.4g}" for r in shown]
        fix = "re-run ingest with ingest.max_rating (rejects larger ratings as value_out_of_range)"
    more = f"\n    ... and {total - len(shown):,} more" if total > len(shown) else ""
    raise InputError(
        f"{total:,} training pair(s) have a value ALS cannot hold: {what}:\n"
        + "\n".join(rows)
        + more
        + f"\n  Fix: {fix}. Nothing was trained."
    )


def _id_names(ids: DataFrame | None, idx_col: str, id_col: str, wanted: set[int]) -> dict[int, str]:
    if ids is None:
        return {}
    return {r[0]: r[1] for r in ids.where(F.col(idx_col).isin(sorted(wanted))).select(idx_col, id_col).collect()}


def fit_als(
    train: DataFrame, cfg: AlsConfig, users: DataFrame | None = None, items: DataFrame | None = None
) -> ALSModel:
    """Fit ALS on :func:`training_frame` rows, once :func:`check_training_values` passes (``users`` and
    ``items``, the id maps, name offending pairs by id). Every fit goes through here, the
    evaluation's and the hyperparameter search's too, so none can fail on an overflow unexplained."""
    check_training_values(train, cfg, users, items)
    spark = train.sparkSession
    if cfg.engine == "blocks":
        from recsys_spark.models.als_blocks import fit_blocks

        user_factors, item_factors = fit_blocks(train, cfg)
        return als_model_from_factors(user_factors, item_factors, cfg.rank)
    blocks = max(1, spark.sparkContext.defaultParallelism)
    log.info(
        "ALS %s: rank %d, %d iterations, reg %g, alpha %g, %d user / %d item blocks, BLAS %s",
        cfg.feedback,
        cfg.rank,
        cfg.max_iter,
        cfg.reg_param,
        cfg.alpha,
        cfg.num_user_blocks or blocks,
        cfg.num_item_blocks or blocks,
        blas_in_use(spark),
    )
    return build_als(cfg, blocks).fit(train)


def als_model_from_factors(
    user_factors: DataFrame,
    item_factors: DataFrame,
    rank: int,
    user_col: str = "user_idx",
    item_col: str = "item_idx",
) -> ALSModel:
    """An MLlib ALSModel holding exactly these (id INT, features ARRAY<FLOAT>) factors, keyed by
    ``user_col`` / ``item_col`` (by default the columns :func:`build_als` sets, so a model from
    either engine is read the same way). The columns are set on the JVM model itself: a setter on
    the Python wrapper does not reach ``recommendFor*``, which call the JVM directly.

    ALSModel's constructor is ``private[ml]`` in Scala, which is public in the bytecode, so py4j can
    call it; ``_from_java`` then wraps it as ``ALSModel.load`` does.
    """
    jvm = user_factors.sparkSession.sparkContext._jvm  # type: ignore[attr-defined]
    java_model = jvm.org.apache.spark.ml.recommendation.ALSModel(
        "als_blocks", rank, user_factors._jdf, item_factors._jdf
    )
    java_model.setUserCol(user_col).setItemCol(item_col).setPredictionCol("prediction").setColdStartStrategy("drop")
    return ALSModel._from_java(java_model)


def training_rmse(model: ALSModel, train: DataFrame, cfg: AlsConfig) -> float | None:
    """Root mean squared error on the training ratings (explicit feedback only)."""
    if cfg.feedback == "explicit":
        pred = model.transform(train).select(((F.col("prediction") - F.col("value")) ** 2).alias("se"))
        mse = pred.agg(F.avg("se")).first()[0]
        return math.sqrt(mse) if mse is not None else None
    return None


def factor_frames(model: ALSModel) -> tuple[DataFrame, DataFrame]:
    """(user_idx, factors) and (item_idx, factors), factors as array<float>."""
    users = model.userFactors.select(
        F.col("id").cast("int").alias("user_idx"), F.col("features").cast("array<float>").alias("factors")
    )
    items = model.itemFactors.select(
        F.col("id").cast("int").alias("item_idx"), F.col("features").cast("array<float>").alias("factors")
    )
    return users, items


def blas_in_use(spark: SparkSession) -> str:
    """Name of the BLAS implementation MLlib's JVM picked (native, vectorised Java, or plain Java)."""
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        return str(jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName())
    except Exception:  # noqa: BLE001 - not every Spark build exposes netlib; the name is informational
        return "unknown"
