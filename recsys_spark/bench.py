"""Benchmarks (``make bench``): each figure is measured in the same run as its baseline.

    python -m recsys_spark.bench [--quick] [--events N] [--repeats R] [--out DIR]

Writes ``DIR/BENCHMARKS.md`` (for people) and ``DIR/benchmarks.json`` (for machines).
Currently measured:

* ingest: events/s of the ingest job against a plain ``spark.read.csv(...).write.parquet(...)``
  of the same files (the floor any CSV -> columnar job pays), as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_spark.config import Config, load_config


def _timed(fn: Callable[[], Any], repeats: int, setup: Callable[[], None] | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": len(times)}


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
    baseline = _timed(plain, repeats, reset)
    ours = _timed(ingest, repeats, reset)
    reset()
    b, o = statistics.median(baseline), statistics.median(ours)
    return {
        "events": events,
        "baseline": {"what": "spark.read.csv(...).write.parquet(...)", **_summary(baseline),
                     "events_per_s": events / b},
        "ingest": {"what": "recsys-spark ingest (validate, dedupe, ids, 6 Delta tables)", **_summary(ours),
                   "events_per_s": events / o},
        "ratio_vs_baseline": o / b,
    }


def _machine(spark) -> dict[str, Any]:  # noqa: ANN001
    import numpy
    import pyspark

    return {"python": sys.version.split()[0], "platform": platform.platform(), "cores": os.cpu_count(),
            "spark": pyspark.__version__, "numpy": numpy.__version__,
            "java": spark.sparkContext._jvm.System.getProperty("java.version"),  # type: ignore[attr-defined]
            "master": spark.sparkContext.master}


def _markdown(results: dict[str, Any]) -> str:
    m, ing = results["machine"], results["ingest"]
    lines = [
        "# Benchmarks", "",
        f"Measured {results['date']} with `{results['command']}`.",
        f"Machine: {m['cores']} cores, Python {m['python']}, Spark {m['spark']} ({m['master']}), Java {m['java']}.",
        "Figures are medians over the repetitions; ratios compare against a baseline measured in the same run.",
        "", f"## Ingest ({ing['events']:,} synthetic events, CSV)", "",
        "| job | median s | min–max s | events/s |", "|---|---:|---:|---:|",
    ]
    for key in ("baseline", "ingest"):
        r = ing[key]
        lines.append(f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}–{r['max_s']:.1f} | "
                     f"{r['events_per_s']:,.0f} |")
    lines += ["", f"Ingest takes **{ing['ratio_vs_baseline']:.2f}×** the time of the plain CSV→Parquet copy.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-spark-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI smoke run)")
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic events for the ingest benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results", help="directory for BENCHMARKS.md and benchmarks.json")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    events, repeats = (20_000, 1) if args.quick else (args.events, args.repeats)

    from recsys_spark.session import build_session

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    cfg = load_config(args.config, [
        f"generate.num_events={events}", f"generate.num_users={max(100, events // 20)}",
        f"generate.num_items={max(100, events // 50)}", "spark.ui_enabled=false",
        f"spark.checkpoint_dir={work / 'checkpoints'}",
    ])
    spark = build_session(cfg.spark, cfg.storage, app_name="recsys-spark bench")
    try:
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m recsys_spark.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick, "machine": _machine(spark),
            "ingest": bench_ingest(spark, cfg, work, repeats),
        }
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2))
    (out / "BENCHMARKS.md").write_text(_markdown(results))
    print(_markdown(results))
    print(f"results written to {out / 'BENCHMARKS.md'} and {out / 'benchmarks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
