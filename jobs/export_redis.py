"""spark-submit entry point: the served lists bulk-loaded into Redis as a new version (export.* settings).

    spark-submit --py-files dist/recsys_spark.zip jobs/export_redis.py --config conf/cluster.toml \
        --set export.redis_url=redis://redis.internal:6379/0
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("export-redis"))
