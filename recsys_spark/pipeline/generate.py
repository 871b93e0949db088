"""The ``generate`` job: the synthetic interaction log, written as raw files for ``ingest``."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from recsys_spark.config.schema import Config
from recsys_spark.ingest.generate import synthetic_events
from recsys_spark.uris import absolute, spark_uri

log = logging.getLogger(__name__)


def run_generate(spark: SparkSession, cfg: Config) -> tuple[str, int]:
    """Write the synthetic log to ``cfg.generate.output`` (replacing it); returns (path, events)."""
    g = cfg.generate
    events = synthetic_events(spark, g)
    out = absolute(g.output)
    target = spark_uri(out)
    writer = events.write.mode("overwrite")
    if g.format == "csv":
        writer.option("header", True).csv(target)
    elif g.format == "json":
        writer.json(target)
    else:
        writer.parquet(target)
    count = spark.read.format(g.format).option("header", True).load(target).count()
    log.info("synthetic log: %d events written to %s", count, out)
    return out, count
