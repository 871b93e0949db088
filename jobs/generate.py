"""spark-submit entry point: write the synthetic interaction log (generate.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/generate.py \
        --config conf/cluster.toml --set generate.num_events=50000000
"""

import sys

from recsys_spark.cli import run_job
from recsys_spark.pipeline import run_generate


def _generate(spark, cfg, ctx) -> None:  # noqa: ANN001
    path, n = run_generate(spark, cfg)
    print(f"synthetic log: {n:,} events in {path}")


if __name__ == "__main__":
    sys.exit(run_job("generate", _generate))
