"""spark-submit entry point: the night's work on the configured source, each stage skipped when current.

    spark-submit --py-files dist/recsys_spark.zip jobs/nightly.py --config conf/cluster.toml \
        --set ingest.source.path=s3a://my-bucket/recsys/raw/events/
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("nightly"))
