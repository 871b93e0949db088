"""spark-submit entry point: write the synthetic interaction log (generate.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/generate.py \
        --config conf/cluster.toml --set generate.num_events=50000000
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from recsys_spark.cli import run_job
from recsys_spark.pipeline import run_generate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config import Config
    from recsys_spark.run import RunContext


def _generate(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    path, n = run_generate(spark, cfg)
    print(f"synthetic log: {n:,} events in {path}")


if __name__ == "__main__":
    sys.exit(run_job("generate", _generate))
