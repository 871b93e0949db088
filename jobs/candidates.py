"""spark-submit entry point: popular_items and per-user top-k user_candidates (candidates.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/candidates.py --config conf/cluster.toml \
        --set 'candidates.strategies=["als", "item_item", "blend"]'
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("candidates"))
