"""The ``ingest`` job: new raw files into the validated, deduplicated interaction tables.

Every run is safe to repeat. Ingest commits in an order that keeps a killed run harmless: id maps
first (re-runs find the ids already mapped), then events (re-runs drop events whose key is
already stored), rejected rows (deduplicated by file, line and reason), the rebuilt matrix, and
the ledger last (a file counts as ingested only once all of that has landed).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import ConcurrentWriteError, RejectThresholdError
from recsys_spark.ingest.sources import SourceFile, file_read_errors, read_source, scan_source_files
from recsys_spark.ingest.transforms import (
    accepted_events,
    assign_dense_ids,
    interaction_matrix,
    rejected_rows,
    validate_events,
    with_dense_ids,
)
from recsys_spark.pipeline.common import writable_store
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.storage.store import CommitInfo, TableStore, WriteResult

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
    """Rows that repeat another row of this batch (the same event id, or the same content)."""
    rows_already_stored: int = 0
    """Events already in ``interactions`` (a file re-sent under another name, or a killed run's)."""
    events_added: int = 0
    new_users: int = 0
    new_items: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    writes: list[WriteResult] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    """Races lost to concurrent writers; each restarted the commits on top of the winner."""
    dangling_links: list[str] = field(default_factory=list)
    """Symbolic links under the input path whose target does not exist (skipped)."""
    symlink_loops: list[str] = field(default_factory=list)
    """Links back into a directory already being read (not entered, so no file is read twice)."""

    def render(self) -> str:
        lines = [
            f"ingest run {self.run_id}",
            f"  files: {self.files_seen} seen, {self.files_skipped} already ingested (skipped)",
            f"  rows read: {self.rows_read:,}; rejected: {self.rows_rejected:,}; "
            f"duplicates dropped: {self.rows_duplicate:,}; already stored: {self.rows_already_stored:,}; "
            f"new events: {self.events_added:,}",
            f"  new users: {self.new_users:,}; new items: {self.new_items:,}",
        ]
        if self.dangling_links or self.symlink_loops:
            lines.append(
                f"  links skipped: {len(self.dangling_links)} dangling, {len(self.symlink_loops)} looping back "
                "into a folder already read (see the warnings)"
            )
        if self.conflicts:
            lines.append(
                f"  {len(self.conflicts)} race(s) lost to a concurrent ingest; restarted on top of it each time"
            )
        if self.reject_reasons:
            lines.append("  rejected by reason:")
            lines += [f"    {r:<24} {n:>10,}" for r, n in sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])]
        if self.writes:
            lines.append("  commits:")
            lines += [f"    {w.table:<22} v{w.version:<4} +{w.rows:,} rows" for w in self.writes]
        else:
            lines.append("  nothing new: no table was changed")
        return "\n".join(lines)


def _ledger_key(f: SourceFile) -> tuple[str, int, int]:
    return (f.path, f.size, f.mtime_ms)


#: The tables one ingest writes, in commit order (the ledger last: see the module docstring).
_INGEST_TABLES = (T.USERS, T.ITEMS, T.INTERACTIONS, T.REJECTED_INTERACTIONS, T.INTERACTION_MATRIX, T.INGESTED_FILES)


def _new_files(store: TableStore, files: list[SourceFile], ledger_version: int | None) -> list[SourceFile]:
    if ledger_version is None:
        return files
    seen = {
        (r["path"], r["size"], r["mtime_ms"])
        for r in store.read(T.INGESTED_FILES, version=ledger_version).select("path", "size", "mtime_ms").collect()
    }
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
    sample = validated.where(F.col("reason").isNotNull()).orderBy("source_file", "line_number").limit(3).collect()
    examples = "\n".join(
        f"    {r['source_file']}:{r['line_number']}: {r['reason']}: {r['raw_line'][:120]!r}" for r in sample
    )
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(report.reject_reasons.items(), key=lambda kv: -kv[1]))
    raise RejectThresholdError(
        f"{report.rows_rejected:,} of {report.rows_read:,} rows "
        f"({report.rows_rejected / report.rows_read:.1%}) were rejected, more than "
        f"ingest.max_reject_fraction = {limit:.1%}; nothing was committed.\n"
        f"  reasons: {reasons}\n  first rejected rows:\n{examples}\n"
        "  Check ingest.source (preset, format, delimiter, column mapping) or raise the limit."
    )


def run_ingest(spark: SparkSession, cfg: Config, ctx: RunContext) -> IngestReport:
    """Ingest new files under ``cfg.ingest.source.path`` into the interaction tables.

    Safe against concurrent ingests into the same tables: every commit is conditional on the
    version of its table this attempt read (``TableStore.write(expected_version=...)``). An
    attempt that loses a race commits nothing more and starts again from the tables as the winner
    left them, with the rows it already validated: files the winner ledgered meanwhile are
    skipped, its events and ids are not added twice. After ``ingest.max_conflict_retries`` lost
    races the run fails with :class:`ConcurrentWriteError`.
    """
    store = writable_store(spark, cfg)
    src, icfg = cfg.ingest.source, cfg.ingest
    scan = scan_source_files(src.path)
    files = scan.files
    validated: DataFrame | None = None
    per_file: Counter[tuple[str, str | None]] = Counter()
    conflicts: list[str] = []
    try:
        for attempt in range(icfg.max_conflict_retries + 1):
            versions = {t: store.version(t) for t in _INGEST_TABLES}
            todo = _new_files(store, files, versions[T.INGESTED_FILES])
            report = IngestReport(
                ctx.run_id,
                files_seen=len(files),
                files_skipped=len(files) - len(todo),
                conflicts=list(conflicts),
                dangling_links=list(scan.dangling_links),
                symlink_loops=list(scan.symlink_loops),
            )
            if not todo:
                log.info("all %d file(s) under %s were ingested before; nothing to do", len(files), src.path)
                return report
            if validated is None:
                raw = read_source(spark, src, todo, icfg.max_line_bytes)
                validated = validate_events(raw, src, icfg, ctx.started_at).persist(StorageLevel.MEMORY_AND_DISK)
                with file_read_errors(todo):  # the first full read: a corrupt file fails here, named
                    counts = validated.groupBy("source_file", "reason").count().collect()
                for r in counts:
                    per_file[(r["source_file"], r["reason"])] += r["count"]
            batch = validated
            if len(todo) < len({p for p, _ in per_file}):
                # a concurrent run ledgered some of the files meanwhile: only the rest are ours
                batch = validated.where(F.col("source_file").isin([f.path for f in todo]))
            mine = {f.path for f in todo}
            batch_counts = Counter({key: n for key, n in per_file.items() if key[0] in mine})
            _count_batch(report, batch_counts)
            _check_reject_rate(report, cfg, batch)
            try:
                _commit_ingest(spark, store, cfg, ctx, batch, todo, batch_counts, report, versions)
                return report
            except ConcurrentWriteError as exc:
                conflicts.append(str(exc))
                log.warning(
                    "ingest attempt %d lost a race to a concurrent writer and starts again on top of "
                    "it (%d restart(s) left): %s",
                    attempt + 1,
                    icfg.max_conflict_retries - attempt,
                    exc,
                )
        raise ConcurrentWriteError(
            f"ingest lost {len(conflicts)} races in a row to concurrent writers of the tables under "
            f"{cfg.storage.root} (ingest.max_conflict_retries = {icfg.max_conflict_retries}); what landed is "
            f"consistent and a re-run adds the rest. Last conflict: {conflicts[-1]}"
        )
    finally:
        if validated is not None:
            validated.unpersist()


def _count_batch(report: IngestReport, per_file: Counter[tuple[str, str | None]]) -> None:
    report.rows_read = sum(per_file.values())
    reasons: Counter[str] = Counter()
    for (_, reason), n in per_file.items():
        if reason is not None:
            reasons[reason] += n
    report.reject_reasons = dict(reasons)
    report.rows_rejected = sum(reasons.values())
    for reason, n in reasons.most_common():
        log.warning("rejected %d rows: %s", n, reason)


def _commit_ingest(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    ctx: RunContext,
    validated: DataFrame,
    todo: list[SourceFile],
    per_file: Counter,
    report: IngestReport,
    versions: dict[str, int | None],
) -> None:
    """Commit one attempt: every table is read at, and committed on top of, ``versions``."""
    src, icfg = cfg.ingest.source, cfg.ingest
    commit = ctx.commit(source=src.path, preset=src.preset, files=len(todo))
    unique_events = accepted_events(validated, src, icfg).persist(StorageLevel.MEMORY_AND_DISK)
    events = unique_events
    try:
        unique = unique_events.count()
        report.rows_duplicate = report.rows_read - report.rows_rejected - unique
        if versions[T.INTERACTIONS] is not None and unique:
            # Only the partitions (dates) of this batch can hold its events: prune the rest.
            dates = [r[0] for r in unique_events.select(F.to_date("event_time")).distinct().collect()]
            stored = store.read(T.INTERACTIONS, version=versions[T.INTERACTIONS], where=_date_predicate(dates)).select(
                "event_key"
            )
            events = unique_events.join(stored, "event_key", "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        report.events_added = events.count()
        report.rows_already_stored = unique - report.events_added
        if report.events_added:
            users = _extend_id_map(store, events, T.USERS, "user_id", "user_idx", commit, report, versions[T.USERS])
            items = _extend_id_map(store, events, T.ITEMS, "item_id", "item_idx", commit, report, versions[T.ITEMS])
            report.new_users = _added(report, T.USERS)
            report.new_items = _added(report, T.ITEMS)
            interactions = with_dense_ids(events, users, items)
            report.writes.append(
                store.write(
                    interactions,
                    T.INTERACTIONS,
                    "append",
                    commit,
                    ["event_date"],
                    expected_version=versions[T.INTERACTIONS],
                )
            )
    finally:
        events.unpersist()
        unique_events.unpersist()

    rejected = rejected_rows(validated, ctx.run_id, ctx.started_at)
    if report.rows_rejected:
        if versions[T.REJECTED_INTERACTIONS] is not None:
            known = store.read(T.REJECTED_INTERACTIONS, version=versions[T.REJECTED_INTERACTIONS]).select(
                "source_file", "line_number", "reason", "raw_line"
            )
            rejected = rejected.join(known, ["source_file", "line_number", "reason", "raw_line"], "left_anti").select(
                *rejected.columns
            )
        report.writes.append(
            store.write(
                rejected, T.REJECTED_INTERACTIONS, "append", commit, expected_version=versions[T.REJECTED_INTERACTIONS]
            )
        )

    events_version = _written(report, T.INTERACTIONS, versions[T.INTERACTIONS])
    if events_version is not None and _matrix_source(store, versions[T.INTERACTION_MATRIX]) != events_version:
        # Rebuilt whenever it was not built from the latest interactions: after new events, and
        # also when an earlier run was killed between its interactions commit and this one (its
        # re-run adds no events, but the matrix still lacks the ones that landed).
        matrix = interaction_matrix(store.read(T.INTERACTIONS, version=events_version), icfg)
        report.writes.append(
            store.write(
                matrix,
                T.INTERACTION_MATRIX,
                "overwrite",
                ctx.commit(**commit.extra, input_versions={T.INTERACTIONS: events_version}),
                expected_version=versions[T.INTERACTION_MATRIX],
            )
        )

    now = datetime.now(timezone.utc)
    ledger = spark.createDataFrame(
        [
            (
                f.path,
                f.size,
                f.mtime_ms,
                sum(n for (p, _), n in per_file.items() if p == f.path),
                sum(n for (p, r), n in per_file.items() if p == f.path and r is not None),
                ctx.run_id,
                now,
            )
            for f in todo
        ],
        "path STRING, size LONG, mtime_ms LONG, rows_read LONG, rows_rejected LONG, run_id STRING, "
        "ingested_at TIMESTAMP",
    )
    report.writes.append(
        store.write(ledger.coalesce(1), T.INGESTED_FILES, "append", commit, expected_version=versions[T.INGESTED_FILES])
    )


def _written(report: IngestReport, table: str, read: int | None) -> int | None:
    """The version of ``table`` this attempt left: its own commit, or the one it read."""
    mine = [w.version for w in report.writes if w.table == table]
    return mine[-1] if mine else read


def _matrix_source(store: TableStore, version: int | None) -> int | None:
    """The interactions version interaction_matrix ``version`` was built from (None: unknown or absent)."""
    if version is None:
        return None
    newer = (store.version(T.INTERACTION_MATRIX) or 0) - version
    entry = next((e for e in store.history(T.INTERACTION_MATRIX, limit=newer + 1) if e.version == version), None)
    return (entry.metadata.get("input_versions") or {}).get(T.INTERACTIONS) if entry else None


def _added(report: IngestReport, table: str) -> int:
    return sum(w.rows for w in report.writes if w.table == table)


def _extend_id_map(
    store: TableStore,
    events: DataFrame,
    table: str,
    id_col: str,
    idx_col: str,
    commit: CommitInfo,
    report: IngestReport,
    version: int | None,
) -> DataFrame:
    """The id map (read at ``version``) with ids of ``events`` it lacks appended, as committed.

    New ids are numbered from the map at ``version``, and the append is conditional on it: a map
    can never hold an id twice, since a concurrent run that added ids first makes this commit fail.
    """
    existing = store.read(table, version=version) if version is not None else None
    new = assign_dense_ids(events.select(id_col), existing, id_col, idx_col)
    first_seen = events.groupBy(id_col).agg(F.min("event_time").alias("first_event_time"))
    new = new.join(first_seen, id_col).withColumn("run_id", F.lit(commit.run_id))
    new = new.select(id_col, idx_col, "first_event_time", "run_id").persist()
    try:
        if existing is None or not new.isEmpty():
            written = store.write(new, table, "append", commit, expected_version=version)
            report.writes.append(written)
            version = written.version
    finally:
        new.unpersist()
    return store.read(table, version=version)
