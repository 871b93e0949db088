"""spark-submit entry point: item-item cosine neighbours (similarity.* settings).

spark-submit --py-files dist/recsys_spark.zip jobs/item_similarity.py --config conf/cluster.toml
"""

import sys

from recsys_spark.cli import run_job
from recsys_spark.pipeline import run_item_similarity


def _item_similarity(spark, cfg, ctx) -> None:  # noqa: ANN001
    w = run_item_similarity(spark, cfg, ctx)
    print(f"item_neighbors v{w.version}: {w.rows:,} neighbour rows")


if __name__ == "__main__":
    sys.exit(run_job("item-similarity", _item_similarity))
