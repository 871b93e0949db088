"""spark-submit entry point: ingest raw interaction logs into the Delta tables.

    spark-submit --py-files dist/recsys_spark.zip jobs/ingest.py \
        --config conf/cluster.toml --set ingest.source.path=s3a://bucket/logs/2026-11-23/
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("ingest"))
