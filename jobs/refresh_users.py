"""spark-submit entry point: fold in the users whose interactions changed since the lists were
built (fresh ALS user factors against the fixed item factors) and rewrite their candidate rows.

spark-submit --py-files dist/recsys_spark.zip jobs/refresh_users.py --config conf/cluster.toml
"""

import sys

from recsys_spark.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("refresh-users"))
