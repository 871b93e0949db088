"""The ``recsys-spark`` command, and the shared entry point of the spark-submit jobs.

    recsys-spark [--config FILE] [--set section.key=value ...] COMMAND [options]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from recsys_spark import tables as T
from recsys_spark.config import DEFAULT_CONFIG, Config, load_config
from recsys_spark.errors import RecsysError

log = logging.getLogger("recsys_spark")

JobFn = Callable[[Any, Config, Any], None]


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", "-c", default=default, metavar="FILE",
                        help=f"TOML config (default: {DEFAULT_CONFIG} when present)")
    parser.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS if suppress else [],
                        metavar="KEY=VALUE", help="override a config key, e.g. --set ingest.source.path=logs/ "
                        "(repeatable; values are TOML literals, else strings)")
    parser.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="debug logging")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _session(cfg: Config, job: str):  # noqa: ANN202 - pyspark imported lazily
    from recsys_spark.session import build_session

    return build_session(cfg.spark, cfg.storage, app_name=f"recsys-spark {job}")


def spark_error_summary(exc: BaseException) -> str:
    """The informative lines of a Spark error: its first line and, for a failure inside a Python
    worker, the worker's own exception line (the JVM stack between them helps nobody)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    cause = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln) and not ln.startswith("at ")]
    return lines[0] + (f" ({cause[-1]})" if cause and cause[-1] != lines[0] else "")


def _guard(fn: Callable[[], int]) -> int:
    """Run ``fn``, turning expected failures into one clear message and a non-zero exit."""
    try:
        return fn()
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        if isinstance(exc, (PySparkException, Py4JJavaError)):
            # Spark's own errors carry a readable class and message; the JVM trace helps nobody here.
            print(f"error: Spark failed: {spark_error_summary(exc)}\n(re-run with --verbose for the full trace)",
                  file=sys.stderr)
            log.debug("Spark failure", exc_info=True)
            return 1
        raise


def run_job(job: str, fn: JobFn, argv: Sequence[str] | None = None) -> int:
    """Entry point of a spark-submit job: parse --config/--set, build the session, run ``fn``."""
    from recsys_spark.run import RunContext

    parser = argparse.ArgumentParser(prog=f"jobs/{job.replace('-', '_')}.py", description=f"recsys-spark {job} job")
    _common(parser, suppress=False)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    def go() -> int:
        cfg = load_config(args.config, args.overrides)
        spark = _session(cfg, job)
        started = time.perf_counter()
        fn(spark, cfg, RunContext.new(job, cfg))
        log.info("%s finished in %.1fs", job, time.perf_counter() - started)
        return 0

    return _guard(go)


# -- subcommands ---------------------------------------------------------------------------------


def _cmd_generate(spark, cfg: Config, ctx) -> None:  # noqa: ANN001
    from recsys_spark.pipeline import run_generate

    path, n = run_generate(spark, cfg)
    print(f"synthetic log: {n:,} events in {path}")


def _cmd_ingest(spark, cfg: Config, ctx) -> None:  # noqa: ANN001
    from recsys_spark.pipeline import run_ingest

    print(run_ingest(spark, cfg, ctx).render())


def _cmd_train_als(spark, cfg: Config, ctx) -> None:  # noqa: ANN001
    from recsys_spark.pipeline import run_train_als

    out = run_train_als(spark, cfg, ctx)
    print(f"ALS ({cfg.als.feedback}, rank {cfg.als.rank}): user_factors v{out[T.USER_FACTORS].version} "
          f"({out[T.USER_FACTORS].rows:,} users), item_factors v{out[T.ITEM_FACTORS].version} "
          f"({out[T.ITEM_FACTORS].rows:,} items), models v{out[T.MODELS].version}")


def _cmd_item_similarity(spark, cfg: Config, ctx) -> None:  # noqa: ANN001
    from recsys_spark.pipeline import run_item_similarity

    w = run_item_similarity(spark, cfg, ctx)
    print(f"item_neighbors v{w.version}: {w.rows:,} neighbour rows")


def print_tables(cfg: Config, names: Sequence[str] | None = None) -> None:
    """Print each catalogued table's location, version and row count (reads Delta logs only)."""
    from recsys_spark.storage import describe_table

    print(f"tables under {cfg.storage.root}:")
    print(f"  {'table':<22} {'version':>7} {'rows':>12} {'files':>6} {'MB':>8}  last writer")
    for name in names or list(T.CATALOGUE):
        s = describe_table(cfg.storage.root, name)
        if s.version is None:
            print(f"  {name:<22} {'-':>7} {'-':>12} {'-':>6} {'-':>8}  (not written yet)")
            continue
        print(f"  {name:<22} {s.version:>7} {s.rows:>12,} {s.files:>6} {s.bytes / 1e6:>8.1f}  "
              f"{s.last_job} {s.last_run_id}")


def _cmd_demo(spark, cfg: Config, ctx, fresh: bool) -> None:  # noqa: ANN001
    from pathlib import Path

    from recsys_spark.pipeline import run_generate, run_ingest, run_item_similarity
    from recsys_spark.storage import describe_table

    out = Path(cfg.generate.output)
    if fresh or not out.exists():
        path, n = run_generate(spark, cfg)
        print(f"[1/4] generated {n:,} synthetic events in {path}")
    else:
        print(f"[1/4] reusing the synthetic log in {out} (pass --fresh to regenerate)")
    cfg = cfg.with_overrides([f"ingest.source.path={cfg.generate.output}", "ingest.source.preset=synthetic"])
    report = run_ingest(spark, cfg, ctx)
    print("[2/4] " + report.render())
    if report.events_added or describe_table(cfg.storage.root, T.USER_FACTORS).version is None:
        print("[3/4] ", end="")
        _cmd_train_als(spark, cfg, ctx)
    else:
        print("[3/4] ALS: interactions unchanged, factors are current")
    if report.events_added or describe_table(cfg.storage.root, T.ITEM_NEIGHBORS).version is None:
        w = run_item_similarity(spark, cfg, ctx)
        print(f"[4/4] item-item cosine: item_neighbors v{w.version}, {w.rows:,} neighbour rows")
    else:
        print("[4/4] item-item cosine: interactions unchanged, item_neighbors is current")
    print()
    print_tables(cfg)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-spark", description=__doc__.strip().splitlines()[0])
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p, suppress=True)
        return p

    add("generate", "write the synthetic interaction log (generate.* settings)")
    add("ingest", "ingest raw logs into interactions, users, items and interaction_matrix")
    add("train-als", "fit ALS on interaction_matrix into user_factors, item_factors and models (als.*)")
    add("item-similarity", "item-item cosine neighbours from interaction_matrix into item_neighbors")
    demo = add("demo", "generate the synthetic log (if missing), ingest it, compute item neighbours, show the tables")
    demo.add_argument("--fresh", action="store_true", help="regenerate the synthetic log")
    add("tables", "list the tables with version and row count (no Spark needed)")
    hist = add("history", "show a table's versions and which run wrote each (no Spark needed)")
    hist.add_argument("table", choices=list(T.CATALOGUE))
    hist.add_argument("--limit", type=int, default=20)
    vac = add("vacuum", "delete data files no longer referenced (incl. orphans of killed writes)")
    vac.add_argument("tables", nargs="*", help="tables to vacuum (default: all)")
    vac.add_argument("--retention-hours", type=float, default=None,
                     help="keep files removed less than this long ago (default: storage.vacuum_retention_hours)")
    vac.add_argument("--dry-run", action="store_true", help="list the files without deleting them")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    _setup_logging(args.verbose)

    def go() -> int:
        from recsys_spark.run import RunContext

        cfg = load_config(args.config, args.overrides)
        if args.command == "tables":
            print_tables(cfg)
            return 0
        if args.command == "history":
            return _history(cfg, args.table, args.limit)
        if args.command == "vacuum":
            return _vacuum(cfg, args.tables or list(T.CATALOGUE), args.retention_hours, args.dry_run)
        spark = _session(cfg, args.command)
        ctx = RunContext.new(args.command, cfg)
        started = time.perf_counter()
        if args.command == "generate":
            _cmd_generate(spark, cfg, ctx)
        elif args.command == "ingest":
            _cmd_ingest(spark, cfg, ctx)
        elif args.command == "train-als":
            _cmd_train_als(spark, cfg, ctx)
        elif args.command == "item-similarity":
            _cmd_item_similarity(spark, cfg, ctx)
        elif args.command == "demo":
            _cmd_demo(spark, cfg, ctx, args.fresh)
        log.info("%s finished in %.1fs", args.command, time.perf_counter() - started)
        return 0

    return _guard(go)


def _history(cfg: Config, table: str, limit: int) -> int:
    from recsys_spark.storage import table_history, table_location

    entries = table_history(cfg.storage.root, table, limit)
    print(f"history of {table} ({table_location(cfg.storage.root, table)}):")
    for e in entries:
        m = e.metadata
        print(f"  v{e.version:<4} {e.timestamp:%Y-%m-%d %H:%M:%S} {e.operation:<13} "
              f"job={m.get('job', '-')} run={m.get('run_id', '-')} config={m.get('config_hash', '-')}")
    return 0


def _vacuum(cfg: Config, names: Sequence[str], hours: float | None, dry_run: bool) -> int:
    from recsys_spark.storage import vacuum_table

    for name in names:
        removed = vacuum_table(cfg.storage, name, hours, dry_run)
        if removed is not None:
            print(f"{name}: {'would remove' if dry_run else 'removed'} {len(removed)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
