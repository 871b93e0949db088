"""spark-submit entry point: item neighbours into item_neighbors (similarity.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/item_similarity.py --config conf/cluster.toml \
        --set similarity.method=cosine
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("item-similarity"))
