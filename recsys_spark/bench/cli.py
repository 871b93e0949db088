"""``python -m recsys_spark.bench``: runs the selected benchmarks and writes BENCHMARKS.md and benchmarks.json."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.config.loader import load_config

if TYPE_CHECKING:
    from recsys_spark.bench._common import BenchContext

#: Benchmarks in the order they run (and appear in the report): name -> module under recsys_spark.bench.
#: Each module has TITLE, SIZES, run(BenchContext) -> dict and markdown(dict) -> list[str], and imports
#: pyspark only inside functions (the lookup reader process runs this CLI and must stay Spark-free).
BENCHMARKS = {
    "ingest": "ingest",
    "als": "als",
    "topk": "topk",
    "similarity": "similarity",
    "ease": "ease",
    "lookup": "lookup",
    "serve": "serve",
    "export": "export",
    "pipeline": "pipeline",
    "refresh": "refresh",
    "quality": "quality",
}
#: What runs without --only: quality takes the better part of an hour (every dataset, every split,
#: every search) and has a make target of its own (`make quality`), which merges its section in.
DEFAULT_ONLY = [name for name in BENCHMARKS if name != "quality"]


def _module(name: str) -> Any:
    return importlib.import_module(f"recsys_spark.bench.{BENCHMARKS[name]}")


def run_overrides(events: int, work: Path) -> list[str]:
    """Config overrides of a benchmark run: the shared synthetic log's size and a scratch checkpoint dir."""
    return [
        f"generate.num_events={events}",
        f"generate.num_users={max(100, events // 20)}",
        f"generate.num_items={max(100, events // 50)}",
        "spark.ui_enabled=false",
        f"spark.checkpoint_dir={work / 'checkpoints'}",
    ]


def run_benchmarks(ctx: BenchContext, only: list[str]) -> dict[str, Any]:
    """Run the benchmarks named in ``only`` in report order; name -> result, with wall time and how
    busy the machine was meanwhile."""
    from recsys_spark.bench._common import cpu_seconds, other_cpu_percent

    results: dict[str, Any] = {}
    for name in BENCHMARKS:
        if name not in only:
            continue
        print(f"running benchmark {name} ...", file=sys.stderr, flush=True)
        before, start = cpu_seconds(), time.perf_counter()
        results[name] = _module(name).run(ctx)
        results[name]["wall_s"] = time.perf_counter() - start
        # a benchmark that measures other load its own way (pipeline: stage processes) keeps its figure
        if results[name].get("other_cpu_percent") is None:
            results[name]["other_cpu_percent"] = other_cpu_percent(before, cpu_seconds(), results[name]["wall_s"])
        ctx.spark.catalog.clearCache()
    return results


def render(results: dict[str, Any]) -> str:
    """BENCHMARKS.md for a results dict (as written to benchmarks.json)."""
    from recsys_spark.bench._common import BUSY_MACHINE_PERCENT

    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} with `{results['command']}`.",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']:.0f} GB RAM, Python {m['python']}, "
        f"Spark {m['spark']} ({m['master']}), Java {m['java']}, numpy {m['numpy']}.",
        "Figures are medians over the repetitions; ratios compare against a baseline measured in the same run.",
        "",
    ]
    for name in BENCHMARKS:
        if name in results:
            section = _module(name).markdown(results[name])
            measured = results[name].get("measured")
            if measured:  # merged in from a run of its own (--merge)
                section[1:1] = ["", f"_This section: measured {measured['date']} with `{measured['command']}`._"]
            lines += section
            other = results[name].get("other_cpu_percent")
            if other is not None and other > BUSY_MACHINE_PERCENT:
                lines[-1:] = [
                    f"Other processes used {other:.0f}% of the machine's CPU during this benchmark, so "
                    "its figures may be slower or noisier than on an idle machine.",
                    "",
                ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    reader = argparse.ArgumentParser(add_help=False)
    reader.add_argument("--lookup-reader", default=None)  # internal: the Spark-free lookup reader process
    reader.add_argument("--load-client", default=None)  # internal: the HTTP load generator process
    known, _ = reader.parse_known_args(argv)
    if known.load_client:
        from recsys_spark.bench.serve import load_client

        print(json.dumps(load_client(json.loads(Path(known.load_client).read_text()))))
        return 0
    if known.lookup_reader:  # answered before the benchmark modules are imported: the reader stays lean
        from recsys_spark.bench.lookup import lookup_reader

        print(json.dumps(lookup_reader(json.loads(Path(known.lookup_reader).read_text()))))
        return 0
    parser = argparse.ArgumentParser(prog="recsys-spark-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_ONLY),
        help=f"comma-separated benchmarks to run, of {','.join(BENCHMARKS)} (default: {','.join(DEFAULT_ONLY)})",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other benchmarks' results already in --out and replace only those run",
    )
    sizes_spec = {name: spec for bench in BENCHMARKS for name, spec in _module(bench).SIZES.items()}
    for name, (default, _, help_) in sizes_spec.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=help_)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-results", help="directory for BENCHMARKS.md and benchmarks.json")
    parser.add_argument("--config", default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. candidates.item_block=32768 (repeatable)",
    )
    args = parser.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown or not only:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = {name: (quick if args.quick else getattr(args, name)) for name, (_, quick, _) in sizes_spec.items()}
    repeats = 1 if args.quick else args.repeats
    if "pipeline" in only:  # a bad ladder fails now, not after the other benchmarks have run
        from recsys_spark.bench.pipeline import scale_points

        try:
            scale_points(sizes["scale_min_events"], sizes["scale_max_events"], sizes["scale_rungs"])
        except ValueError as exc:
            parser.error(str(exc))

    if "quality" in only:  # an hour of searches: their progress goes to stderr, as the jobs log it
        import logging

        logging.basicConfig(
            level=logging.WARNING,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        for name in ("recsys_spark.tuning.search", "recsys_spark.tuning.fitting", "recsys_spark.bench"):
            logging.getLogger(name).setLevel(logging.INFO)
    from recsys_spark.bench._common import BenchContext, machine
    from recsys_spark.session import build_session

    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    events = sizes.get("events", 20_000)
    cfg = load_config(args.config, [*run_overrides(events, work), *args.set])
    spark = build_session(cfg.spark, cfg.storage, app_name="recsys-spark bench")
    ctx = BenchContext(spark=spark, cfg=cfg, work=work, quick=args.quick, repeats=repeats, sizes=sizes)
    try:
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m recsys_spark.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick": args.quick,
            "sizes": sizes,
            "repeats": repeats,
            "machine": machine(spark),
        }
        results.update(run_benchmarks(ctx, only))
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / "benchmarks.json").exists():
        earlier = json.loads((out / "benchmarks.json").read_text())
        kept = {name: earlier[name] for name in BENCHMARKS if name in earlier and name not in results}
        # each section says when and how it was measured, since the page now holds several runs
        for section in kept.values():
            section.setdefault("measured", {"date": earlier["date"], "command": earlier["command"]})
        for name in only:
            results[name]["measured"] = {"date": results["date"], "command": results["command"]}
            # a run over some of a section's datasets keeps the others' earlier figures
            before = earlier.get(name, {}).get("datasets")
            if isinstance(before, dict) and isinstance(results[name].get("datasets"), dict):
                results[name]["datasets"] = {
                    **{d: v for d, v in before.items() if d not in results[name]["datasets"]},
                    **results[name]["datasets"],
                }
        results = {**results, **kept}
    # the measurements first: a section that cannot be rendered must not cost the run's figures
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (out / "BENCHMARKS.md").write_text(report)
    print(report)
    print(f"results written to {out / 'BENCHMARKS.md'} and {out / 'benchmarks.json'}")
    return 0
