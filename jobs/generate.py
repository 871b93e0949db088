"""spark-submit entry point: write the synthetic interaction log (generate.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/generate.py \
        --config conf/cluster.toml --set generate.num_events=50000000
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("generate"))
