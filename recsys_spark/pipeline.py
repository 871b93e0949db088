"""Jobs: each reads its inputs through storage, applies one stage's transforms, and commits.

Every job is safe to re-run. Ingest commits in an order that keeps a killed run harmless: id maps
first (re-runs find the ids already mapped), then events (re-runs drop events whose key is
already stored), rejected rows (deduplicated by file, line and reason), the rebuilt matrix, and
the ledger last (a file counts as ingested only once all of that has landed).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config import Config
from recsys_spark.errors import RejectThresholdError, StorageError
from recsys_spark.generate import synthetic_events
from recsys_spark.ingest import (accepted_events, assign_dense_ids, interaction_matrix, rejected_rows,
                                 validate_events, with_dense_ids)
from recsys_spark.run import RunContext
from recsys_spark.similarity import capped_users, item_cosine
from recsys_spark.sources import SourceFile, list_source_files, read_source
from recsys_spark.storage import TableStore, WriteResult

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest run did, for logs, the CLI and tests."""

    run_id: str
    files_seen: int = 0
    files_skipped: int = 0
    rows_read: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    events_added: int = 0
    new_users: int = 0
    new_items: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    writes: list[WriteResult] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"ingest run {self.run_id}",
            f"  files: {self.files_seen} seen, {self.files_skipped} already ingested (skipped)",
            f"  rows read: {self.rows_read:,}; rejected: {self.rows_rejected:,}; "
            f"duplicates dropped: {self.rows_duplicate:,}; new events: {self.events_added:,}",
            f"  new users: {self.new_users:,}; new items: {self.new_items:,}",
        ]
        if self.reject_reasons:
            lines.append("  rejected by reason:")
            lines += [f"    {r:<24} {n:>10,}" for r, n in sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])]
        if self.writes:
            lines.append("  commits:")
            lines += [f"    {w.table:<22} v{w.version:<4} +{w.rows:,} rows" for w in self.writes]
        else:
            lines.append("  nothing new: no table was changed")
        return "\n".join(lines)


def run_generate(spark: SparkSession, cfg: Config) -> tuple[str, int]:
    """Write the synthetic log to ``cfg.generate.output`` (replacing it); returns (path, events)."""
    g = cfg.generate
    events = synthetic_events(spark, g)
    out = g.output if "://" in g.output else str(Path(g.output).resolve())
    target = out if "://" in out else "file://" + out
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


def _ledger_key(f: SourceFile) -> tuple[str, int, int]:
    return (f.path, f.size, f.mtime_ms)


def _new_files(store: TableStore, files: list[SourceFile]) -> list[SourceFile]:
    if not store.exists(T.INGESTED_FILES):
        return files
    seen = {(r["path"], r["size"], r["mtime_ms"]) for r in
            store.read(T.INGESTED_FILES).select("path", "size", "mtime_ms").collect()}
    return [f for f in files if _ledger_key(f) not in seen]


def _date_predicate(dates: list) -> str:
    """A pruning predicate on event_date covering ``dates`` (None means events without a time)."""
    named = sorted({d.isoformat() for d in dates if d is not None})
    parts = []
    if named:
        parts.append("event_date IN (" + ", ".join(f"DATE'{d}'" for d in named) + ")")
    if any(d is None for d in dates):
        parts.append("event_date IS NULL")
    return " OR ".join(parts) or "false"


def _check_reject_rate(report: IngestReport, cfg: Config, validated: DataFrame) -> None:
    limit = cfg.ingest.max_reject_fraction
    if report.rows_read == 0 or report.rows_rejected / report.rows_read <= limit:
        return
    sample = (validated.where(F.col("reason").isNotNull())
              .orderBy("source_file", "line_number").limit(3).collect())
    examples = "\n".join(f"    {r['source_file']}:{r['line_number']}: {r['reason']}: {r['raw_line'][:120]!r}"
                         for r in sample)
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(report.reject_reasons.items(), key=lambda kv: -kv[1]))
    raise RejectThresholdError(
        f"{report.rows_rejected:,} of {report.rows_read:,} rows "
        f"({report.rows_rejected / report.rows_read:.1%}) were rejected, more than "
        f"ingest.max_reject_fraction = {limit:.1%}; nothing was committed.\n"
        f"  reasons: {reasons}\n  first rejected rows:\n{examples}\n"
        "  Check ingest.source (preset, format, delimiter, column mapping) or raise the limit."
    )


def run_ingest(spark: SparkSession, cfg: Config, ctx: RunContext) -> IngestReport:
    """Ingest new files under ``cfg.ingest.source.path`` into the interaction tables."""
    store = TableStore(spark, cfg.storage)
    src, icfg = cfg.ingest.source, cfg.ingest
    report = IngestReport(ctx.run_id)
    files = list_source_files(src.path)
    todo = _new_files(store, files)
    report.files_seen, report.files_skipped = len(files), len(files) - len(todo)
    if not todo:
        log.info("all %d file(s) under %s were ingested before; nothing to do", len(files), src.path)
        return report

    raw = read_source(spark, src, todo, icfg.max_line_bytes)
    validated = validate_events(raw, src, icfg, ctx.started_at).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        per_file: Counter[tuple[str, str | None]] = Counter()
        for r in validated.groupBy("source_file", "reason").count().collect():
            per_file[(r["source_file"], r["reason"])] += r["count"]
        report.rows_read = sum(per_file.values())
        reasons: Counter[str] = Counter()
        for (_, reason), n in per_file.items():
            if reason is not None:
                reasons[reason] += n
        report.reject_reasons = dict(reasons)
        report.rows_rejected = sum(reasons.values())
        for reason, n in reasons.most_common():
            log.warning("rejected %d rows: %s", n, reason)
        _check_reject_rate(report, cfg, validated)
        _commit_ingest(spark, store, cfg, ctx, validated, todo, per_file, report)
    finally:
        validated.unpersist()
    return report


def _commit_ingest(spark: SparkSession, store: TableStore, cfg: Config, ctx: RunContext, validated: DataFrame,
                   todo: list[SourceFile], per_file: Counter, report: IngestReport) -> None:
    src, icfg = cfg.ingest.source, cfg.ingest
    commit = ctx.commit(source=src.path, preset=src.preset, files=len(todo))
    unique_events = accepted_events(validated, src, icfg).persist(StorageLevel.MEMORY_AND_DISK)
    events = unique_events
    try:
        unique = unique_events.count()
        report.rows_duplicate = report.rows_read - report.rows_rejected - unique
        if store.exists(T.INTERACTIONS) and unique:
            # Only the partitions (dates) of this batch can hold its events: prune the rest.
            dates = [r[0] for r in unique_events.select(F.to_date("event_time")).distinct().collect()]
            stored = store.read(T.INTERACTIONS, where=_date_predicate(dates)).select("event_key")
            events = unique_events.join(stored, "event_key", "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        report.events_added = events.count()
        report.rows_duplicate += unique - report.events_added
        if report.events_added:
            users = _extend_id_map(store, events, T.USERS, "user_id", "user_idx", commit, report)
            items = _extend_id_map(store, events, T.ITEMS, "item_id", "item_idx", commit, report)
            report.new_users = _added(report, T.USERS)
            report.new_items = _added(report, T.ITEMS)
            interactions = with_dense_ids(events, users, items)
            report.writes.append(store.write(interactions, T.INTERACTIONS, "append", commit, ["event_date"]))
    finally:
        events.unpersist()
        unique_events.unpersist()

    rejected = rejected_rows(validated, ctx.run_id, ctx.started_at)
    if report.rows_rejected:
        if store.exists(T.REJECTED_INTERACTIONS):
            known = store.read(T.REJECTED_INTERACTIONS).select("source_file", "line_number", "reason", "raw_line")
            rejected = (rejected.join(known, ["source_file", "line_number", "reason", "raw_line"], "left_anti")
                        .select(*rejected.columns))
        report.writes.append(store.write(rejected, T.REJECTED_INTERACTIONS, "append", commit))

    if report.events_added or not store.exists(T.INTERACTION_MATRIX):
        matrix = interaction_matrix(store.read(T.INTERACTIONS), icfg) if store.exists(T.INTERACTIONS) else None
        if matrix is not None:
            report.writes.append(store.write(matrix, T.INTERACTION_MATRIX, "overwrite", commit))

    now = datetime.now(timezone.utc)
    ledger = spark.createDataFrame(
        [(f.path, f.size, f.mtime_ms,
          sum(n for (p, _), n in per_file.items() if p == f.path),
          sum(n for (p, r), n in per_file.items() if p == f.path and r is not None),
          ctx.run_id, now) for f in todo],
        "path STRING, size LONG, mtime_ms LONG, rows_read LONG, rows_rejected LONG, run_id STRING, "
        "ingested_at TIMESTAMP",
    )
    report.writes.append(store.write(ledger.coalesce(1), T.INGESTED_FILES, "append", commit))


def _added(report: IngestReport, table: str) -> int:
    return sum(w.rows for w in report.writes if w.table == table)


def _extend_id_map(store: TableStore, events: DataFrame, table: str, id_col: str, idx_col: str,
                   commit, report: IngestReport) -> DataFrame:
    existing = store.read(table) if store.exists(table) else None
    new = assign_dense_ids(events.select(id_col), existing, id_col, idx_col)
    first_seen = events.groupBy(id_col).agg(F.min("event_time").alias("first_event_time"))
    new = new.join(first_seen, id_col).withColumn("run_id", F.lit(commit.run_id))
    new = new.select(id_col, idx_col, "first_event_time", "run_id").persist()
    try:
        if existing is None or not new.isEmpty():
            report.writes.append(store.write(new, table, "append", commit))
    finally:
        new.unpersist()
    return store.read(table)


def run_item_similarity(spark: SparkSession, cfg: Config, ctx: RunContext) -> WriteResult:
    """Item-item cosine neighbours from the latest interaction_matrix into item_neighbors."""
    store = TableStore(spark, cfg.storage)
    version = store.version(T.INTERACTION_MATRIX)
    if version is None:
        raise StorageError("table 'interaction_matrix' does not exist yet: run `recsys-spark ingest` first")
    matrix = store.read(T.INTERACTION_MATRIX, version=version).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        capped = capped_users(matrix, cfg.similarity.max_user_items)
        if capped:
            log.info("%d users have more than %d items; their histories are capped",
                     capped, cfg.similarity.max_user_items)
        model_version = f"cosine-{ctx.run_id}"
        neighbors = (item_cosine(matrix, cfg.similarity)
                     .withColumn("method", F.lit("cosine")).withColumn("model_version", F.lit(model_version))
                     # sorted by key so that a lookup's min/max file pruning reads one or two files
                     .repartitionByRange("item_idx").sortWithinPartitions("item_idx", "rank"))
        commit = ctx.commit(model_version=model_version, input_versions={T.INTERACTION_MATRIX: version},
                            capped_users=capped)
        return store.write(neighbors, T.ITEM_NEIGHBORS, "overwrite", commit)
    finally:
        matrix.unpersist()


def run_train_als(spark: SparkSession, cfg: Config, ctx: RunContext) -> dict[str, WriteResult]:
    """Fit ALS on the latest interaction_matrix; write user_factors, item_factors and a models row."""
    import json
    import time

    from recsys_spark.als import blas_in_use, factor_frames, fit_als, training_frame, training_rmse

    store = TableStore(spark, cfg.storage)
    inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        raise StorageError(f"tables {missing} do not exist yet: run `recsys-spark ingest` first")
    train = training_frame(store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]), cfg.als)
    train = train.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n = train.count()
        if n == 0:
            raise StorageError(f"interaction_matrix has no {cfg.als.feedback} feedback to train on "
                               f"(als.feedback = {cfg.als.feedback!r})")
        started = time.perf_counter()
        model = fit_als(train, cfg.als)
        seconds = time.perf_counter() - started
        rmse = training_rmse(model, train, cfg.als)
    finally:
        train.unpersist()
    model_version = f"als-{ctx.run_id}"
    users, items = factor_frames(model)
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    commit = ctx.commit(model_version=model_version, input_versions=inputs)
    out = {
        T.USER_FACTORS: store.write(
            users.join(user_ids, "user_idx").select("user_idx", "user_id", "factors",
                                                     F.lit(model_version).alias("model_version"))
            .repartitionByRange("user_idx").sortWithinPartitions("user_idx"), T.USER_FACTORS, "overwrite", commit),
        T.ITEM_FACTORS: store.write(
            items.join(item_ids, "item_idx").select("item_idx", "item_id", "factors",
                                                     F.lit(model_version).alias("model_version"))
            .repartitionByRange("item_idx").sortWithinPartitions("item_idx"), T.ITEM_FACTORS, "overwrite", commit),
    }
    params = cfg.als.model_dump(mode="json")
    row = [(model_version, ctx.run_id, "als", json.dumps(params, sort_keys=True), json.dumps(inputs, sort_keys=True),
            n, out[T.USER_FACTORS].rows, out[T.ITEM_FACTORS].rows, float(seconds), rmse, blas_in_use(spark),
            ctx.started_at)]
    models = spark.createDataFrame(row, "model_version STRING, run_id STRING, algorithm STRING, params STRING, "
                                        "input_versions STRING, num_ratings LONG, num_users LONG, num_items LONG, "
                                        "train_seconds DOUBLE, train_rmse DOUBLE, blas STRING, trained_at TIMESTAMP")
    out[T.MODELS] = store.write(models.coalesce(1), T.MODELS, "append", commit)
    log.info("ALS model %s: %d ratings, %d users, %d items, %.1fs", model_version, n,
             out[T.USER_FACTORS].rows, out[T.ITEM_FACTORS].rows, seconds)
    return out
