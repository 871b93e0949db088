"""spark-submit entry point: item-item cosine neighbours (similarity.* settings).

spark-submit --py-files dist/recsys_spark.zip jobs/item_similarity.py --config conf/cluster.toml
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from recsys_spark.cli import run_job
from recsys_spark.pipeline import run_item_similarity

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config import Config
    from recsys_spark.run import RunContext


def _item_similarity(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    w = run_item_similarity(spark, cfg, ctx)
    print(f"item_neighbors v{w.version}: {w.rows:,} neighbour rows")


if __name__ == "__main__":
    sys.exit(run_job("item-similarity", _item_similarity))
