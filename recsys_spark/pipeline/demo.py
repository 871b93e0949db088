"""The ``demo`` job: the nightly job (:mod:`recsys_spark.pipeline.nightly`) over the synthetic log.

The log is generated when missing (or with ``--fresh``), then the night runs on it with both
neighbour methods, so the demo's lookups can show either. A second ``make demo`` on the same log
finds every stage current, commits nothing but its ``runs`` row and prints where each table is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_spark.pipeline.generate import run_generate
from recsys_spark.pipeline.nightly import NightlyResult, run_nightly

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.runs import RunContext

#: The neighbour methods the demo always builds: item-item cosine, and the ALS factors' cosine.
DEMO_METHODS = ("cosine", "als")


def run_demo(
    spark: SparkSession, cfg: Config, ctx: RunContext, fresh: bool = False, say: Callable[[str], None] = print
) -> NightlyResult:
    """Generate the synthetic log (unless it exists and not ``fresh``), then the nightly job on it;
    ``say`` gets one progress line per stage."""
    out = Path(cfg.generate.output)
    if fresh or not out.exists():
        path, n = run_generate(spark, cfg)
        say(f"generated {n:,} synthetic events in {path}")
    else:
        say(f"reusing the synthetic log in {out} (pass --fresh to regenerate)")
    cfg = cfg.with_overrides([f"ingest.source.path={cfg.generate.output}", "ingest.source.preset=synthetic"])
    return run_nightly(spark, cfg, ctx, say, also_methods=DEMO_METHODS)
