"""spark-submit entry point: held-out evaluation of the served strategies against baselines (evaluation.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/evaluate.py --config conf/cluster.toml \
        --set evaluation.split=time --set evaluation.time_cutoff=2026-11-01T00:00:00Z
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate"))
