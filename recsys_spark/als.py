"""ALS matrix factorisation with Spark MLlib (DataFrame in, factors out).

Implicit mode fits the Hu-Koren-Volinsky model on ``interaction_matrix.confidence``; explicit
mode fits ``rating``. Factors come back as (idx, factors) DataFrames; the job attaches original
ids and writes them.
"""

from __future__ import annotations

import logging
import math

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.config import AlsConfig

log = logging.getLogger(__name__)


def training_frame(matrix: DataFrame, cfg: AlsConfig) -> DataFrame:
    """(user_idx, item_idx, value): confidence for implicit, rating (non-null only) for explicit."""
    if cfg.feedback == "explicit":
        return matrix.where(F.col("rating").isNotNull()).select("user_idx", "item_idx", F.col("rating").alias("value"))
    return matrix.where(F.col("confidence") > 0).select("user_idx", "item_idx", F.col("confidence").alias("value"))


def build_als(cfg: AlsConfig, default_blocks: int) -> ALS:
    """An MLlib ALS estimator with every parameter taken from ``cfg``."""
    return ALS(
        rank=cfg.rank, maxIter=cfg.max_iter, regParam=cfg.reg_param, alpha=cfg.alpha,
        implicitPrefs=cfg.feedback == "implicit", nonnegative=cfg.nonnegative,
        numUserBlocks=cfg.num_user_blocks or default_blocks, numItemBlocks=cfg.num_item_blocks or default_blocks,
        seed=cfg.seed, checkpointInterval=cfg.checkpoint_interval,
        userCol="user_idx", itemCol="item_idx", ratingCol="value", coldStartStrategy="drop",
    )


def fit_als(train: DataFrame, cfg: AlsConfig) -> ALSModel:
    spark = train.sparkSession
    blocks = max(1, spark.sparkContext.defaultParallelism)
    log.info("ALS %s: rank %d, %d iterations, reg %g, alpha %g, %d user / %d item blocks, BLAS %s",
             cfg.feedback, cfg.rank, cfg.max_iter, cfg.reg_param, cfg.alpha, cfg.num_user_blocks or blocks,
             cfg.num_item_blocks or blocks, blas_in_use(spark))
    return build_als(cfg, blocks).fit(train)


def training_rmse(model: ALSModel, train: DataFrame, cfg: AlsConfig) -> float | None:
    """Root mean squared error on the training ratings (explicit feedback only)."""
    if cfg.feedback == "explicit":
        pred = model.transform(train).select(((F.col("prediction") - F.col("value")) ** 2).alias("se"))
        mse = pred.agg(F.avg("se")).first()[0]
        return math.sqrt(mse) if mse is not None else None
    return None


def factor_frames(model: ALSModel) -> tuple[DataFrame, DataFrame]:
    """(user_idx, factors) and (item_idx, factors), factors as array<float>."""
    users = model.userFactors.select(F.col("id").cast("int").alias("user_idx"),
                                     F.col("features").cast("array<float>").alias("factors"))
    items = model.itemFactors.select(F.col("id").cast("int").alias("item_idx"),
                                     F.col("features").cast("array<float>").alias("factors"))
    return users, items


def blas_in_use(spark: SparkSession) -> str:
    """Name of the BLAS implementation MLlib's JVM picked (native, vectorised Java, or plain Java)."""
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        return str(jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName())
    except Exception:  # not every Spark build exposes netlib; the name is informational
        return "unknown"
