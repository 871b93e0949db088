"""The ``recsys-spark`` command, and the shared entry point of the spark-submit jobs.

recsys-spark [--config FILE] [--set section.key=value ...] COMMAND [options]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from recsys_spark import tables as T
from recsys_spark.config.loader import DEFAULT_CONFIG, load_config
from recsys_spark.config.schema import Config
from recsys_spark.errors import ConfigError, RecsysError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import TableStore

log = logging.getLogger("recsys_spark")

JobFn = Callable[["SparkSession", Config, "RunContext"], None]

#: The spark-submit jobs (jobs/*.py) and the CLI stage commands run through the same table.
ALIASES = {"topk": "candidates"}
"""Older command names that still work: ``topk`` is the ``candidates`` stage."""


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config", "-c", default=default, metavar="FILE", help=f"TOML config (default: {DEFAULT_CONFIG} when present)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=argparse.SUPPRESS if suppress else [],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set ingest.source.path=logs/ "
        "(repeatable; values are TOML literals, else strings)",
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", default=argparse.SUPPRESS if suppress else False, help="debug logging"
    )


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _session(cfg: Config, job: str) -> SparkSession:
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
            print(
                f"error: Spark failed: {spark_error_summary(exc)}\n(re-run with --verbose for the full trace)",
                file=sys.stderr,
            )
            log.debug("Spark failure", exc_info=True)
            return 1
        raise


def run_job(job: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of a spark-submit job (``jobs/<job>.py``): parse --config/--set, build the
    session, run the stage ``job`` (a key of :data:`STAGES`) and record it in ``runs``."""
    from recsys_spark.pipeline.runs import RunContext

    if job not in STAGES:
        raise ValueError(f"unknown job {job!r}; known: {', '.join(STAGES)}")
    fn = STAGES[job]
    parser = argparse.ArgumentParser(prog=f"jobs/{job.replace('-', '_')}.py", description=f"recsys-spark {job} job")
    _common(parser, suppress=False)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    def go() -> int:
        cfg = load_config(args.config, args.overrides)
        spark = _session(cfg, job)
        ctx = RunContext.new(job, cfg)
        started = time.perf_counter()
        _recorded(spark, cfg, ctx, lambda: fn(spark, cfg, ctx))
        log.info("%s finished in %.1fs", job, time.perf_counter() - started)
        return 0

    return _guard(go)


def _recorded(spark: SparkSession, cfg: Config, ctx: RunContext, call: Callable[[], None]) -> None:
    """Run a job and append its manifest to the ``runs`` table, whether it succeeds or fails."""
    from recsys_spark.pipeline.runs import record_run
    from recsys_spark.storage.store import TableStore

    try:
        call()
    except BaseException as exc:
        from recsys_spark.errors import GateRefusedError

        status = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt)
            else "refused"
            if isinstance(exc, GateRefusedError)
            else "failed"
        )
        error = str(exc) if isinstance(exc, RecsysError) else spark_error_summary(exc)
        try:
            store = TableStore(spark, cfg.storage)
            store.check_writable()  # an unwritable root is the job's own error: say it once
            record_run(spark, store, ctx, cfg, status, error)
        except Exception as record_error:  # the job's own error matters more than its manifest's
            log.warning("could not record run %s in the runs table: %s", ctx.run_id, spark_error_summary(record_error))
            log.debug("manifest failure", exc_info=True)
        raise
    record_run(spark, TableStore(spark, cfg.storage), ctx, cfg, "succeeded")


# -- subcommands ---------------------------------------------------------------------------------


def _cmd_generate(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.generate import run_generate

    path, n = run_generate(spark, cfg)
    print(f"synthetic log: {n:,} events in {path}")


def _cmd_ingest(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.ingest import run_ingest

    print(run_ingest(spark, cfg, ctx).render())


def _cmd_train_als(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.train import als_summary, run_train_als

    print(als_summary(cfg, run_train_als(spark, cfg, ctx)))


def _cmd_item_similarity(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.similarity import run_item_similarity

    w = run_item_similarity(spark, cfg, ctx)
    print(f"item_neighbors v{w.version}: {w.rows:,} neighbour rows (method = {cfg.similarity.method!r})")


def _cmd_candidates(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.candidates import run_candidates

    out = run_candidates(spark, cfg, ctx)
    for name, w in out.items():
        print(f"{name} v{w.version}: {w.rows:,} rows in {w.files} file(s)")


def _cmd_refresh_users(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.refresh import run_refresh_users

    print(run_refresh_users(spark, cfg, ctx).render())


def _cmd_evaluate(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.evaluate import run_evaluate

    res = run_evaluate(spark, cfg, ctx)
    print(res.headline_table())
    print(f"evaluation_summary v{res.table.version}; {res.json_path}; report: {res.report_path}")


def _cmd_export_redis(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.export import run_export_redis

    print(run_export_redis(spark, cfg, ctx).render())


def _cmd_publish(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.publish import run_publish

    print(run_publish(spark, cfg, ctx).render())


def _cmd_nightly(spark: SparkSession, cfg: Config, ctx: RunContext) -> None:
    from recsys_spark.pipeline.nightly import run_nightly

    result = run_nightly(spark, cfg, ctx)
    print()
    if result.headline_table:
        print(result.headline_table)
    current = [s.stage for s in result.stages if not s.ran]
    print(
        f"nightly run {ctx.run_id}: ran {', '.join(result.ran) or 'nothing'}; "
        f"current: {', '.join(current) or 'nothing'}; evaluation report: {result.report_path}"
    )


STAGES: dict[str, JobFn] = {
    "generate": _cmd_generate,
    "ingest": _cmd_ingest,
    "train-als": _cmd_train_als,
    "item-similarity": _cmd_item_similarity,
    "candidates": _cmd_candidates,
    "refresh-users": _cmd_refresh_users,
    "evaluate": _cmd_evaluate,
    "export-redis": _cmd_export_redis,
    "publish": _cmd_publish,
    "nightly": _cmd_nightly,
}
"""Each stage command by its name in the CLI, in ``jobs/`` and in the ``runs`` table."""


def _lookup(cfg: Config, what: str, key: str, k: int, version: int | None, variant: str | None, as_json: bool) -> int:
    """``recsys-spark lookup``: no Spark, no JVM; prints one row per candidate or neighbour."""
    import json

    from recsys_spark.serving.lookup import Recommendations

    cc = cfg.candidates
    table = T.USER_CANDIDATES if what == "user" else T.ITEM_NEIGHBORS
    recs = Recommendations.open(
        cfg.storage.root,
        strategy=(variant if what == "user" and variant else cc.strategies[0]),
        neighbor_method=(variant if what == "item" and variant else cfg.similarity.method),
        cold_start_segment=cc.cold_start_segment,
        versions={table: version} if version is not None else None,
    )
    rows: list[Any] = recs.for_user(key, k) if what == "user" else recs.similar_items(key, k)
    if as_json:
        print(
            json.dumps(
                {"key": key, "table": table, "version": recs.versions()[table], "rows": [r.__dict__ for r in rows]}
            )
        )
        return 0
    if what == "user":
        print(f"top-{k} for user {key!r} ({recs.strategy}, user_candidates v{recs.versions()[table]}):")
        for r in rows:
            why = ""
            if r.because_item_id is not None:
                share = f", {r.because_share:.0%} of the score" if r.because_share is not None else ""
                why = f"  because of {r.because_item_id}{share}"
            print(f"  {r.rank:>4}  {r.item_id:<16} {r.score:>10.4f}  {r.source:<9}{why}")
    else:
        print(f"neighbours of item {key!r} ({recs.neighbor_method}, item_neighbors v{recs.versions()[table]}):")
        for r in rows:
            print(f"  {r.rank:>4}  {r.item_id:<16} {r.similarity:>8.4f}")
        if not rows:
            print("  (none: the item shares no users with other items above the thresholds)")
    return 0


def _serve(cfg: Config, host: str | None, port: int | None, pins: Sequence[str], backend: str = "delta") -> int:
    """``recsys-spark serve``: the HTTP lookup service, in the foreground until stopped."""
    if backend == "redis" and pins:
        raise ConfigError("--version pins a Delta table version; with --backend redis the export's pointer decides")
    service = _service(cfg, host, port, _pinned_versions(pins), backend)
    print(f"serving {cfg.storage.root} at {service.url} (tables {service.app_versions()}); Ctrl-C stops")
    print(f"  try: curl '{service.url}/v1/popular?k=5'   API docs: {service.url}/docs", flush=True)
    # uvicorn drains the open requests on SIGINT or SIGTERM, then re-raises the signal: both are
    # the ordinary way to stop a service, so both end it with status 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        service.run()
    print("stopped", flush=True)
    return 0


def _pinned_versions(pins: Sequence[str]) -> dict[str, int]:
    """``--version user_candidates=3`` -> {"user_candidates": 3}."""
    out: dict[str, int] = {}
    for pin in pins:
        table, sep, version = pin.partition("=")
        if not sep or not version.strip().isdigit():
            raise ConfigError(f"--version {pin!r}: expected TABLE=VERSION, e.g. user_candidates=3")
        out[table.strip()] = int(version)
    return out


def _service(
    cfg: Config, host: str | None, port: int | None, versions: dict[str, int] | None = None, backend: str = "delta"
) -> Any:
    """The lookup service for ``cfg``'s tables, bound but not yet serving."""
    try:
        from recsys_spark.serving.app import Service, app_for, bind
    except ImportError as exc:
        raise ConfigError(
            f"serve needs the optional serving packages ({exc.name} is missing): pip install 'recsys-spark[serve]'"
        ) from None

    if backend == "redis" and cfg.serve.exclusions_table:
        raise ConfigError("serve.exclusions_table is read from the Delta tables: it needs --backend delta")
    if backend == "redis":
        from recsys_spark.pipeline.export import connect

        connect(cfg.export).close()  # an unreachable server is an error naming export.redis_url
    app = app_for(cfg, versions, backend)
    sock = bind(host or cfg.serve.host, cfg.serve.port if port is None else port)
    spec = {"config": cfg.model_dump(mode="json"), "versions": versions, "backend": backend}
    return Service(app, sock, spec if cfg.serve.workers > 1 else None)


def print_tables(cfg: Config, names: Sequence[str] | None = None) -> None:
    """Print each catalogued table's location, version and row count (reads Delta logs only)."""
    from recsys_spark.storage.store import describe_table, table_location

    print(f"tables under {cfg.storage.root}:")
    print(f"  {'table':<22} {'version':>7} {'rows':>12} {'files':>6} {'MB':>8}  {'last writer':<36} location")
    for name in names or list(T.CATALOG):
        s = describe_table(cfg.storage.root, name)
        where = table_location(cfg.storage.root, name)
        if s.version is None:
            print(f"  {name:<22} {'-':>7} {'-':>12} {'-':>6} {'-':>8}  {'(not written yet)':<36} {where}")
            continue
        print(
            f"  {name:<22} {s.version:>7} {s.rows:>12,} {s.files:>6} {s.bytes / 1e6:>8.1f}  "
            f"{(s.last_job or '-') + ' ' + (s.last_run_id or '-'):<36} {where}"
        )


def _cmd_rollback(spark: SparkSession, cfg: Config, ctx: RunContext, args: argparse.Namespace) -> None:
    from recsys_spark.pipeline.publish import run_rollback

    p = run_rollback(spark, cfg, ctx, args.table, args.to_version, args.to_run)
    print(f"rollback ({p.reason}): readers now use " + ", ".join(f"{t} v{v}" for t, v in p.versions.items()))


def _cmd_demo(spark: SparkSession, cfg: Config, ctx: RunContext, fresh: bool) -> None:
    """The nightly job on the synthetic log, then the tables and a lookup of each kind."""
    from recsys_spark.pipeline.demo import run_demo

    result = run_demo(spark, cfg, ctx, fresh)
    print()
    print_tables(cfg)
    _demo_lookups(cfg, result.store)
    print()
    if result.headline_table:
        print(result.headline_table)
    print(f"evaluation report: {result.report_path}")


def _demo_lookups(cfg: Config, store: TableStore) -> None:
    """End the demo the way a downstream service starts: lookups through the CLI, no Spark."""
    sample_user = _sample_key(store, T.USER_CANDIDATES, "user_id", "source = 'als'")
    sample_item = _sample_key(store, T.ITEM_NEIGHBORS, "item_id", "method = 'cosine'")
    for what, key in (("user", sample_user), ("item", sample_item)):
        if key is None:
            continue
        print(f"\n$ recsys-spark lookup {what} {key} --k 10")
        _lookup(cfg, what, key, 10, None, None, False)
    if sample_user is not None:
        demo_service(cfg, sample_user)


def demo_service(cfg: Config, user_id: str, k: int = 5) -> None:
    """Start the HTTP service on a free loopback port, ask it for ``user_id``'s list as curl
    would, print the answer and stop; then say how to run the service for real."""
    import json
    import urllib.parse
    import urllib.request

    try:
        service = _service(cfg, "127.0.0.1", 0).start()
    except ConfigError as exc:  # the serving extra is not installed
        print(f"\n(the HTTP service is skipped: {exc})")
        return
    try:
        url = f"{service.url}/v1/users/{urllib.parse.quote(user_id, safe='')}/recommendations?k={k}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    finally:
        service.stop()
    print(f"\n$ recsys-spark serve &   # the HTTP service, started and stopped by the demo\n$ curl -s '{url}'")
    items = ",\n".join(f"    {json.dumps(i)}" for i in body.pop("items"))
    versions = body.pop("versions")
    print(f'{{{json.dumps(body)[1:-1]},\n  "items": [\n{items}\n  ],\n  "versions": {json.dumps(versions)}}}')
    print(
        "serve these tables yourself, with this run's --config and --set options: recsys-spark serve "
        f"(http://{cfg.serve.host}:{cfg.serve.port}/docs lists the endpoints)"
    )


def _sample_key(store: TableStore, table: str, column: str, where: str) -> str | None:
    """A deterministic, realistic key: the median one (by id) among the rank-1 rows matching ``where``."""
    if not store.exists(table):
        return None
    keys = sorted(r[0] for r in store.read(table, where=f"{where} AND rank = 1").select(column).collect())
    return keys[len(keys) // 2] if keys else None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-spark", description=__doc__.strip().splitlines()[0])
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases))
        _common(p, suppress=True)
        return p

    add("generate", "write the synthetic interaction log (generate.* settings)")
    add("ingest", "ingest raw logs into interactions, users, items and interaction_matrix")
    add("train-als", "fit ALS on interaction_matrix into user_factors, item_factors and models (als.*)")
    add(
        "item-similarity",
        "item neighbours into item_neighbors: cosine of interaction-matrix columns, or of "
        "ALS item factors with --set similarity.method=als",
    )
    add(
        "evaluate",
        "fit models and baselines on a train split, score the held-out part, write evaluation_summary, "
        "evaluation.json and report.html (evaluation.* settings)",
    )
    add(
        "candidates",
        "precompute popular_items and per-user top-k user_candidates (candidates.* settings)",
        aliases=[a for a, stage in ALIASES.items() if stage == "candidates"],
    )
    add(
        "refresh-users",
        "fold in the users whose interactions changed since the lists were built: fresh ALS user factors "
        "against the fixed item factors, and their candidate rows alone (refresh.* settings)",
    )
    look = add("lookup", "fetch precomputed rows without Spark: a user's candidates or an item's neighbours")
    look.add_argument("what", choices=["user", "item"])
    look.add_argument("key", help="original user or item id")
    look.add_argument("--k", type=int, default=10, help="rows to return (default 10)")
    look.add_argument(
        "--strategy",
        "--method",
        dest="variant",
        default=None,
        help="user: candidates strategy (default: first of candidates.strategies); "
        "item: neighbour method (default: similarity.method)",
    )
    look.add_argument("--version", type=int, default=None, help="serve this table version instead of the latest")
    look.add_argument("--json", action="store_true", help="print JSON")
    srv = add("serve", "the HTTP lookup service over the precomputed tables, no Spark (serve.* settings)")
    exp = add("export", "bulk-load the served lists into Redis as a new version, then switch readers to it (export.*)")
    exp.add_argument("target", choices=["redis"], help="where to export (redis)")
    srv.add_argument(
        "--backend",
        choices=["delta", "redis"],
        default="delta",
        help="read the Delta tables (default) or the version `export redis` last switched to",
    )
    srv.add_argument("--host", default=None, help="listen address (default: serve.host, 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="TCP port (default: serve.port, 8000; 0 = any free)")
    srv.add_argument("--workers", type=int, default=None, help="server processes (default: serve.workers, 1)")
    srv.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="TABLE=VERSION",
        help="serve this version of a table and never move it (repeatable)",
    )
    add(
        "publish",
        "gate the latest user_candidates, item_neighbors, popular_items and items (gate.*) and, if "
        "every check passes, switch readers to them",
    )
    rb = add("rollback", "switch readers back to an earlier published version (recorded in published and runs)")
    rb.add_argument("table", nargs="?", default=None, help="the served table to roll back (with --to-version)")
    rb.add_argument("--to-version", type=int, default=None, metavar="N", help="the version of TABLE readers use")
    rb.add_argument("--to-run", default=None, metavar="RUN_ID", help="every served table as this run published it")
    add(
        "nightly",
        "ingest, train-als, item-similarity, candidates and evaluate on the configured source, "
        "each skipped when its inputs and settings are unchanged; one runs row for the night",
    )
    demo = add(
        "demo",
        "the nightly job on the synthetic log (generated if missing), then the tables, a lookup of "
        "each kind and one HTTP request",
    )
    demo.add_argument("--fresh", action="store_true", help="regenerate the synthetic log")
    comp = add(
        "compare",
        "the headline table of several evaluation.json files together, mean ± std over all "
        "their splits (no Spark needed)",
    )
    comp.add_argument("files", nargs="+", metavar="EVALUATION_JSON")
    add("tables", "list the tables with version and row count (no Spark needed)")
    hist = add("history", "show a table's versions and which run wrote each (no Spark needed)")
    hist.add_argument("table", choices=list(T.CATALOG))
    hist.add_argument("--limit", type=int, default=20)
    vac = add("vacuum", "delete data files no longer referenced (incl. orphans of killed writes)")
    vac.add_argument("tables", nargs="*", help="tables to vacuum (default: all)")
    vac.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="keep files removed less than this long ago (default: storage.vacuum_retention_hours)",
    )
    vac.add_argument("--dry-run", action="store_true", help="list the files without deleting them")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    _setup_logging(args.verbose)

    def go() -> int:
        from recsys_spark.pipeline.runs import RunContext

        cfg = load_config(args.config, args.overrides)
        if args.command == "tables":
            print_tables(cfg)
            return 0
        if args.command == "compare":
            return _compare(args.files)
        if args.command == "history":
            return _history(cfg, args.table, args.limit)
        if args.command == "lookup":
            if args.k < 1:
                raise ConfigError(f"--k must be at least 1, got {args.k}")
            return _lookup(cfg, args.what, args.key, args.k, args.version, args.variant, args.json)
        if args.command == "serve":
            if args.workers is not None:
                cfg = cfg.with_overrides([f"serve.workers={args.workers}"])
            return _serve(cfg, args.host, args.port, args.version, args.backend)
        if args.command == "vacuum":
            return _vacuum(cfg, args.tables or list(T.CATALOG), args.retention_hours, args.dry_run)
        if args.command == "rollback" and (args.to_run is None) == (args.table is None):
            raise ConfigError("rollback: name a TABLE with --to-version N, or give --to-run RUN_ID (not both)")
        command = ALIASES.get(args.command, args.command)
        if command == "export":
            command = f"export-{args.target}"
        spark = _session(cfg, command)
        ctx = RunContext.new(command, cfg)
        started = time.perf_counter()
        if command == "demo":
            _recorded(spark, cfg, ctx, lambda: _cmd_demo(spark, cfg, ctx, args.fresh))
        elif command == "rollback":
            _recorded(spark, cfg, ctx, lambda: _cmd_rollback(spark, cfg, ctx, args))
        else:
            _recorded(spark, cfg, ctx, lambda: STAGES[command](spark, cfg, ctx))
        log.info("%s finished in %.1fs", command, time.perf_counter() - started)
        return 0

    return _guard(go)


def _compare(files: Sequence[str]) -> int:
    """``recsys-spark compare``: evaluation.json files of several runs (e.g. one per fold) as one table."""
    import json
    from pathlib import Path

    from recsys_spark.evaluation.scoring import combined_summary, headline_table

    summaries, names = [], []
    for f in files:
        path = Path(f)
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read evaluation file {path}: {exc}") from None
        # data/ml-100k/u1/reports/latest/evaluation.json -> u1: the first folder that tells the runs apart
        names.append(
            path.resolve().parent.name
            if path.resolve().parent.name != "latest"
            else next((p.name for p in path.resolve().parents if p.name not in ("latest", "reports")), f)
        )
    if len(set(names)) != len(names):
        names = [str(Path(f)) for f in files]
    print(headline_table(combined_summary(summaries, names)))
    return 0


def _history(cfg: Config, table: str, limit: int) -> int:
    from recsys_spark.storage.store import table_history, table_location

    entries = table_history(cfg.storage.root, table, limit)
    print(f"history of {table} ({table_location(cfg.storage.root, table)}):")
    for e in entries:
        m = e.metadata
        print(
            f"  v{e.version:<4} {e.timestamp:%Y-%m-%d %H:%M:%S} {e.operation:<13} "
            f"job={m.get('job', '-')} run={m.get('run_id', '-')} config={m.get('config_hash', '-')}"
        )
    return 0


def _vacuum(cfg: Config, names: Sequence[str], hours: float | None, dry_run: bool) -> int:
    from recsys_spark.storage.store import vacuum_table

    for name in names:
        T.table_location(cfg.storage.root, name)  # a name that would leave the root says so first
    unknown = [n for n in names if n not in T.CATALOG]
    if unknown:
        # checked before any table is touched: a typo must not vacuum the others and exit 0
        raise ConfigError(f"vacuum: unknown table {unknown[0]!r}; the tables are {', '.join(T.CATALOG)}")
    for name in names:
        removed = vacuum_table(cfg.storage, name, hours, dry_run)
        if removed is None:
            print(f"{name}: not written yet, nothing to vacuum")
        else:
            print(f"{name}: {'would remove' if dry_run else 'removed'} {len(removed)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
