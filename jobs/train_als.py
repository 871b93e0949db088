"""spark-submit entry point: fit ALS (als.* settings) into user_factors, item_factors and models.

spark-submit --py-files dist/recsys_spark.zip jobs/train_als.py --config conf/cluster.toml --set als.rank=64
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("train-als"))
