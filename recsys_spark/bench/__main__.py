import sys

from recsys_spark.bench.cli import main

sys.exit(main())
