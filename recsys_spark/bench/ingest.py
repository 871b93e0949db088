"""Ingest: events/s of the ingest job against a plain ``spark.read.csv(...).write.parquet(...)`` of the
same files (the floor any CSV -> columnar job pays), as a ratio."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, summary, timed
from recsys_spark.config.schema import Config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

TITLE = "Ingest"
#: Size options: name -> (full default, --quick value, help).
SIZES = {"events": (1_000_000, 20_000, "synthetic events for the ingest benchmark")}


def run(ctx: BenchContext) -> dict[str, Any]:
    # the shared synthetic log of this size: generated and ingested once for every benchmark, which
    # also warms the ingest code path; the timed runs ingest its files into a scratch table root
    cfg, events, _ = ctx.synthetic_warehouse(ctx.sizes["events"])
    return bench_ingest(ctx.spark, cfg, events, ctx.work / "ingest", ctx.repeats)


def bench_ingest(spark: SparkSession, cfg: Config, events: int, work: Path, repeats: int) -> dict[str, Any]:
    """Time the ingest job and a plain CSV -> Parquet copy on the files under ``cfg.ingest.source.path``."""
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.runs import RunContext

    raw = Path(cfg.ingest.source.path)
    cfg = cfg.with_overrides([f"storage.root={work / 'warehouse'}"])

    def reset() -> None:
        shutil.rmtree(work / "warehouse", ignore_errors=True)
        shutil.rmtree(work / "plain", ignore_errors=True)

    def plain() -> None:
        spark.read.option("header", True).csv(f"file://{raw}").write.parquet(f"file://{work / 'plain'}")

    def ingest() -> None:
        run_ingest(spark, cfg, RunContext.new("bench-ingest", cfg))

    plain()  # warm the JVM and the OS page cache for both contenders
    baseline = timed(plain, repeats, reset)
    ours = timed(ingest, repeats, reset)
    reset()
    b, o = statistics.median(baseline), statistics.median(ours)
    return {
        "events": events,
        "baseline": {"what": "spark.read.csv(...).write.parquet(...)", **summary(baseline), "events_per_s": events / b},
        "ingest": {
            "what": "recsys-spark ingest (validate, dedupe, ids, 6 Delta tables)",
            **summary(ours),
            "events_per_s": events / o,
        },
        "ratio_vs_baseline": o / b,
    }


def markdown(ing: dict[str, Any]) -> list[str]:
    lines = [
        f"## Ingest ({ing['events']:,} synthetic events, CSV)",
        "",
        "| job | median s | min–max s | events/s |",
        "|---|---:|---:|---:|",
    ]
    for key in ("baseline", "ingest"):
        r = ing[key]
        lines.append(
            f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}–{r['max_s']:.1f} | {r['events_per_s']:,.0f} |"
        )
    return [*lines, "", f"Ingest takes **{ing['ratio_vs_baseline']:.2f}×** the time of the plain CSV→Parquet copy.", ""]
