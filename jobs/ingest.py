"""spark-submit entry point: ingest raw interaction logs into the Delta tables.

    spark-submit --py-files dist/recsys_spark.zip jobs/ingest.py \
        --config conf/cluster.toml --set ingest.source.path=s3a://bucket/logs/2026-11-23/
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from recsys_spark.cli import run_job
from recsys_spark.pipeline import run_ingest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config import Config
    from recsys_spark.run import RunContext


def _ingest(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    print(run_ingest(spark, cfg, ctx).render())


if __name__ == "__main__":
    sys.exit(run_job("ingest", _ingest))
