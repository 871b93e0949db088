"""Ingest: events/s of the ingest job against a plain ``spark.read.csv(...).write.parquet(...)`` of the
same files (the floor any CSV -> columnar job pays), as a ratio."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from recsys_spark.config import Config

from recsys_spark.bench._common import BenchContext, summary, timed

TITLE = "Ingest"
#: Size options: name -> (full default, --quick value, help).
SIZES = {"events": (1_000_000, 20_000, "synthetic events for the ingest benchmark")}


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_ingest(ctx.spark, ctx.cfg, ctx.work, ctx.repeats)


def bench_ingest(spark, cfg: Config, work: Path, repeats: int) -> dict[str, Any]:  # noqa: ANN001
    from recsys_spark.pipeline import run_generate, run_ingest
    from recsys_spark.run import RunContext

    raw = work / "raw"
    cfg = cfg.with_overrides([f"generate.output={raw}", f"ingest.source.path={raw}",
                              "ingest.source.preset=synthetic", f"storage.root={work / 'warehouse'}"])
    _, events = run_generate(spark, cfg)

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
        "baseline": {"what": "spark.read.csv(...).write.parquet(...)", **summary(baseline),
                     "events_per_s": events / b},
        "ingest": {"what": "recsys-spark ingest (validate, dedupe, ids, 6 Delta tables)", **summary(ours),
                   "events_per_s": events / o},
        "ratio_vs_baseline": o / b,
    }



def markdown(ing: dict[str, Any]) -> list[str]:
    lines = [f"## Ingest ({ing['events']:,} synthetic events, CSV)", "",
             "| job | median s | min–max s | events/s |", "|---|---:|---:|---:|"]
    for key in ("baseline", "ingest"):
        r = ing[key]
        lines.append(f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}–{r['max_s']:.1f} | "
                     f"{r['events_per_s']:,.0f} |")
    return lines + ["", f"Ingest takes **{ing['ratio_vs_baseline']:.2f}×** the time of the plain CSV→Parquet copy.",
                    ""]
