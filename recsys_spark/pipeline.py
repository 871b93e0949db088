"""Jobs: each reads its inputs through storage, applies one stage's transforms, and commits.

Every job is safe to re-run. Ingest commits in an order that keeps a killed run harmless: id maps
first (re-runs find the ids already mapped), then events (re-runs drop events whose key is
already stored), rejected rows (deduplicated by file, line and reason), the rebuilt matrix, and
the ledger last (a file counts as ingested only once all of that has landed).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config import AlsConfig, CandidatesConfig, Config, SimilarityConfig
from recsys_spark.errors import ConcurrentWriteError, RejectThresholdError, StorageError
from recsys_spark.generate import synthetic_events
from recsys_spark.ingest import (
    accepted_events,
    assign_dense_ids,
    interaction_matrix,
    rejected_rows,
    validate_events,
    with_dense_ids,
)
from recsys_spark.run import RunContext
from recsys_spark.session import released_caches
from recsys_spark.similarity import capped_users, fit_item_neighbors
from recsys_spark.sources import SourceFile, file_read_errors, list_source_files, read_source, scan_source_files
from recsys_spark.storage import CommitInfo, TableStore, WriteResult
from recsys_spark.tuning import SearchResult

log = logging.getLogger(__name__)

#: Row groups of lookup tables: small enough that a key lookup on sorted data decodes one group.
LOOKUP_ROW_GROUP_BYTES = 1 << 20


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


def _writable_store(spark: SparkSession, cfg: Config) -> TableStore:
    """The job's table store, checked up front to be writable (see ``TableStore.check_writable``)."""
    store = TableStore(spark, cfg.storage)
    store.check_writable()
    return store


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
    store = _writable_store(spark, cfg)
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


def run_item_similarity(spark: SparkSession, cfg: Config, ctx: RunContext) -> WriteResult:
    """Item neighbours into the ``similarity.method`` partition of item_neighbors.

    method cosine reads the latest interaction_matrix; method als the latest item_factors.
    """
    store = _writable_store(spark, cfg)
    method = cfg.similarity.method
    if method == "als":
        version = store.version(T.ITEM_FACTORS)
        if version is None:
            raise StorageError(
                "table 'item_factors' does not exist yet: run `recsys-spark train-als` first "
                "(similarity.method = 'als' needs ALS item factors)"
            )
        factors = store.read(T.ITEM_FACTORS, version=version)
        first = factors.select("model_version").first()
        model_version = first[0] if first else f"als-{ctx.run_id}"
        neighbors = fit_item_neighbors(cfg.similarity, item_factors=factors)
        inputs = {T.ITEM_FACTORS: version}
        capped = 0
        matrix = None
        similarity, search = cfg.similarity, None
    else:
        version = store.version(T.INTERACTION_MATRIX)
        if version is None:
            raise StorageError("table 'interaction_matrix' does not exist yet: run `recsys-spark ingest` first")
        matrix = store.read(T.INTERACTION_MATRIX, version=version).persist(StorageLevel.MEMORY_AND_DISK)
        capped = capped_users(matrix, cfg.similarity.max_user_items)
        if capped:
            log.info(
                "%d users have more than %d items; their histories are capped", capped, cfg.similarity.max_user_items
            )
        model_version = f"{method}-{ctx.run_id}"
        similarity, search = cfg.similarity, None
        from recsys_spark.fitting import TUNABLE_METHODS

        if similarity.tune and method not in TUNABLE_METHODS:
            log.info("similarity.tune: method %s has no settings to search; fitting it as configured", method)
        elif similarity.tune:
            from recsys_spark.fitting import tune_neighbors
            from recsys_spark.tuning import carve_validation

            validation = carve_validation(matrix, cfg)
            try:
                similarity, search = tune_neighbors(cfg, method, validation)
            finally:
                validation.release()
        neighbors = fit_item_neighbors(similarity, matrix=matrix)
        inputs = {T.INTERACTION_MATRIX: version}
    try:
        items_version = store.version(T.ITEMS)
        if items_version is None:
            raise StorageError("table 'items' does not exist yet: run `recsys-spark ingest` first")
        inputs[T.ITEMS] = items_version
        ids = store.read(T.ITEMS, version=items_version).select("item_idx", "item_id")
        neighbors = (
            neighbors.join(F.broadcast(ids), "item_idx")
            .join(
                F.broadcast(ids.select(F.col("item_idx").alias("neighbor_idx"), F.col("item_id").alias("neighbor_id"))),
                "neighbor_idx",
            )
            .select(
                "item_id",
                "item_idx",
                "rank",
                "neighbor_id",
                "neighbor_idx",
                "similarity",
                "cooccurrence",
                F.lit(method).alias("method"),
                F.lit(model_version).alias("model_version"),
            )
            # the lookup layout: files cover disjoint item_id ranges, sorted inside, so a
            # reader's min/max statistics select one file and one row group per key
            .repartitionByRange("item_id")
            .sortWithinPartitions("item_id", "rank")
        )
        # the transform is what candidates weigh this method's votes with (candidates.vote_weights_of)
        commit = ctx.commit(
            model_version=model_version,
            input_versions=inputs,
            capped_users=capped,
            method=method,
            params=similarity.model_dump(mode="json"),
            **({"search": search.as_record()} if search else {}),
        )
        return store.write(
            neighbors,
            T.ITEM_NEIGHBORS,
            "overwrite",
            commit,
            ["method"],
            replace={"method": method},
            row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
        )
    finally:
        if matrix is not None:
            matrix.unpersist()


def run_train_als(spark: SparkSession, cfg: Config, ctx: RunContext) -> dict[str, WriteResult]:
    """Fit ALS on the latest interaction_matrix; write user_factors, item_factors and a models row."""
    import json
    import time

    from recsys_spark.als import blas_in_use, factor_frames, fit_als, training_frame, training_rmse

    store = _writable_store(spark, cfg)
    inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        raise StorageError(f"tables {missing} do not exist yet: run `recsys-spark ingest` first")
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX])
    als, search = cfg.als, None
    if als.tune:
        from recsys_spark.fitting import tune_als
        from recsys_spark.tuning import carve_validation

        validation = carve_validation(matrix, cfg)
        try:
            als, search = tune_als(cfg, validation)
        finally:
            validation.release()
    train = training_frame(matrix, als).persist(StorageLevel.MEMORY_AND_DISK)
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    try:
        n = train.count()
        if n == 0:
            raise StorageError(
                f"interaction_matrix has no {als.feedback} feedback to train on (als.feedback = {als.feedback!r})"
            )
        started = time.perf_counter()
        model = fit_als(train, als, user_ids, item_ids)  # checks the values first, naming bad pairs by id
        seconds = time.perf_counter() - started
        rmse = training_rmse(model, train, als)
    finally:
        train.unpersist()
    model_version = f"als-{ctx.run_id}"
    users, items = factor_frames(model)
    commit = ctx.commit(
        model_version=model_version,
        input_versions=inputs,
        **({"tuned": search.best, "tuned_value": search.best_value} if search else {}),
    )
    out = {
        T.USER_FACTORS: store.write(
            users.join(user_ids, "user_idx")
            .select("user_idx", "user_id", "factors", F.lit(model_version).alias("model_version"))
            .repartitionByRange("user_idx")
            .sortWithinPartitions("user_idx"),
            T.USER_FACTORS,
            "overwrite",
            commit,
        ),
        T.ITEM_FACTORS: store.write(
            items.join(item_ids, "item_idx")
            .select("item_idx", "item_id", "factors", F.lit(model_version).alias("model_version"))
            .repartitionByRange("item_idx")
            .sortWithinPartitions("item_idx"),
            T.ITEM_FACTORS,
            "overwrite",
            commit,
        ),
    }
    # the settings fitted with; a search's choice and every trial it made ride along
    params = {**als.model_dump(mode="json"), **({"search": search.as_record()} if search else {})}
    row = [
        (
            model_version,
            ctx.run_id,
            "als",
            json.dumps(params, sort_keys=True),
            json.dumps(inputs, sort_keys=True),
            n,
            out[T.USER_FACTORS].rows,
            out[T.ITEM_FACTORS].rows,
            float(seconds),
            rmse,
            blas_in_use(spark),
            ctx.started_at,
        )
    ]
    models = spark.createDataFrame(
        row,
        "model_version STRING, run_id STRING, algorithm STRING, params STRING, "
        "input_versions STRING, num_ratings LONG, num_users LONG, num_items LONG, "
        "train_seconds DOUBLE, train_rmse DOUBLE, blas STRING, trained_at TIMESTAMP",
    )
    out[T.MODELS] = store.write(models.coalesce(1), T.MODELS, "append", commit)
    log.info(
        "ALS model %s: %d ratings, %d users, %d items, %.1fs",
        model_version,
        n,
        out[T.USER_FACTORS].rows,
        out[T.ITEM_FACTORS].rows,
        seconds,
    )
    return out


def _neighbor_params(store: TableStore, version: int, method: str) -> SimilarityConfig:
    """The similarity settings the ``method`` partition of item_neighbors ``version`` was fitted with."""
    newer = (store.version(T.ITEM_NEIGHBORS) or 0) - version
    for entry in store.history(T.ITEM_NEIGHBORS, limit=newer + 200):
        if entry.version <= version and entry.metadata.get("method") == method:
            params = entry.metadata.get("params")
            # partitions written before the settings were recorded: binary cosine, unweighted votes
            return SimilarityConfig.model_validate(params) if params else SimilarityConfig(method=method)
    return SimilarityConfig(method=method)


def _served_als(store: TableStore, item_factors_version: int | None) -> AlsConfig | None:
    """The ALS settings the served item_factors were fitted with (their models row), or None."""
    import json

    if item_factors_version is None or not store.exists(T.MODELS):
        return None
    first = store.read(T.ITEM_FACTORS, version=item_factors_version).select("model_version").first()
    rows = store.read(T.MODELS).where(F.col("model_version") == first[0]).select("params").collect() if first else []
    if not rows:
        return None
    return AlsConfig.model_validate({k: v for k, v in json.loads(rows[0].params).items() if k != "search"})


def _tuned_blend(
    store: TableStore, cfg: Config, matrix: DataFrame, inputs: dict[str, int | None]
) -> tuple[CandidatesConfig, SearchResult]:
    """candidates.tune: blend weights searched on a validation carve-out of ``matrix``, each source
    refitted there with the settings its served model was fitted with."""
    from recsys_spark.candidates import every_blend_source, needed_neighbor_methods
    from recsys_spark.fitting import fit_as_configured, tune_blend
    from recsys_spark.tuning import carve_validation

    every = every_blend_source(cfg.candidates)
    similarity = cfg.similarity
    for method in needed_neighbor_methods(every):
        fitted_with = _neighbor_params(store, inputs[T.ITEM_NEIGHBORS], method)
        similarity = similarity.model_copy(update={method: fitted_with.params(method)})
    served = cfg.model_copy(
        update={
            "als": _served_als(store, inputs.get(T.ITEM_FACTORS)) or cfg.als,
            "similarity": similarity,
            "candidates": every,
        }
    )
    validation = carve_validation(matrix, cfg)
    try:
        fitted = fit_as_configured(validation.fit, served)
        try:
            weights, search = tune_blend(served, validation, fitted)
        finally:
            fitted.release()
    finally:
        validation.release()
    return cfg.candidates.model_copy(update={"blend_weights": weights}), search


def run_candidates(spark: SparkSession, cfg: Config, ctx: RunContext) -> dict[str, WriteResult]:
    """popular_items, then one user_candidates partition per configured strategy.

    Every list is built from the latest inputs by :class:`candidates.CandidateBuilder` (the code
    evaluation scores too); the commit records their versions. Users below
    ``candidates.min_history`` items, and users a strategy cannot score (no factors yet, no
    neighbours), get the popularity list, tagged source "popular".
    """
    import math

    from recsys_spark.candidates import (
        CandidateBuilder,
        ModelInputs,
        every_blend_source,
        log_config,
        needed_neighbor_methods,
        needed_sources,
        popular_items,
        user_history_sizes,
    )
    from recsys_spark.similarity import vote_weight

    cc = cfg.candidates
    log_config(cc)
    store = _writable_store(spark, cfg)
    # a blend search may weigh in a source configured at 0: everything it could use must exist
    scope = every_blend_source(cc) if cc.tune else cc
    methods = needed_neighbor_methods(scope)
    needs = [T.INTERACTION_MATRIX, T.USERS, T.ITEMS]
    if "als" in needed_sources(scope):
        needs += [T.USER_FACTORS, T.ITEM_FACTORS]
    if methods:
        needs.append(T.ITEM_NEIGHBORS)
    inputs = {t: store.version(t) for t in needs}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        raise StorageError(
            f"tables {missing} do not exist yet: run ingest, train-als and item-similarity first "
            f"(candidates.strategies = {list(cc.strategies)})"
        )
    built = store.partition_values(T.ITEM_NEIGHBORS, "method") if methods else set()
    for method in methods:
        if method not in built:
            raise StorageError(
                f"item_neighbors has no {method!r} neighbours: run `recsys-spark "
                f"item-similarity --set similarity.method={method}` first "
                f"(candidates.strategies = {list(cc.strategies)})"
            )

    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    user_ids = store.read(T.USERS, version=inputs[T.USERS]).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS, version=inputs[T.ITEMS]).select("item_idx", "item_id")
    out: dict[str, WriteResult] = {}
    sizes = popular = None
    try:
        sizes = user_history_sizes(matrix).persist()
        n_users = sizes.count()
        popular = popular_items(matrix, cc.popularity_window_days, cc.popular_k).persist()
        pop_version = f"popular-{ctx.run_id}"
        commit = ctx.commit(input_versions=inputs)
        out[T.POPULAR_ITEMS] = store.write(
            popular.join(F.broadcast(item_ids), "item_idx")
            .select(
                "segment",
                "rank",
                "item_idx",
                "item_id",
                F.col("users").cast("double").alias("score"),
                "users",
                F.lit(pop_version).alias("model_version"),
            )
            .repartition(1)
            .sortWithinPartitions("segment", "rank"),
            T.POPULAR_ITEMS,
            "overwrite",
            commit,
        )
        segment = popular.where(F.col("segment") == cc.cold_start_segment).select("rank", "item_idx", "users")
        n_files = max(1, math.ceil(n_users * cc.k / cc.rows_per_file))

        versions: dict[str, str] = {}
        uf = itf = None
        if T.ITEM_FACTORS in inputs:
            uf = store.read(T.USER_FACTORS, version=inputs[T.USER_FACTORS])
            itf = store.read(T.ITEM_FACTORS, version=inputs[T.ITEM_FACTORS])
            versions["als"] = itf.select("model_version").first()[0]
        neighbors, weights = {}, {}
        for method in methods:
            neighbors[method] = store.read(
                T.ITEM_NEIGHBORS, version=inputs[T.ITEM_NEIGHBORS], where=f"method = '{method}'"
            )
            versions[method] = neighbors[method].select("model_version").first()[0]
            weights[method] = vote_weight(_neighbor_params(store, inputs[T.ITEM_NEIGHBORS], method), method)
        model = ModelInputs(matrix, uf, itf, neighbors, weights, versions)
        search = None
        if cc.tune and "blend" in cc.strategies:
            cc, search = _tuned_blend(store, cfg, matrix, inputs)
        with CandidateBuilder(model, sizes, segment, cc) as builder:
            for strategy, lists in builder.strategies():
                model_version = builder.model_version(strategy)
                rows = (
                    lists.join(user_ids, "user_idx")
                    .join(F.broadcast(item_ids), "item_idx")
                    .select(
                        "user_id",
                        "user_idx",
                        "rank",
                        "item_id",
                        "item_idx",
                        "score",
                        "source",
                        F.lit(model_version).alias("model_version"),
                        F.lit(strategy).alias("strategy"),
                    )
                    # the lookup layout: files cover disjoint user_id ranges, sorted inside
                    .repartitionByRange(n_files, "user_id")
                    .sortWithinPartitions("user_id", "rank")
                )
                tuned = (
                    {"blend_weights": cc.blend_weights, "search": search.as_record()}
                    if (search and strategy == "blend")
                    else {}
                )
                commit = ctx.commit(model_version=model_version, input_versions=inputs, strategy=strategy, **tuned)
                out[f"{T.USER_CANDIDATES}/{strategy}"] = store.write(
                    rows,
                    T.USER_CANDIDATES,
                    "overwrite",
                    commit,
                    ["strategy"],
                    replace={"strategy": strategy},
                    row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
                )
                log.info("candidates %s: %d users", strategy, n_users)
    finally:
        for df in (sizes, popular, matrix):
            if df is not None:
                df.unpersist()
    return out


@dataclass
class EvaluationResult:
    """What one evaluation run produced."""

    run_id: str
    summary: dict
    json_path: Path
    report_path: Path
    table: WriteResult

    def headline_table(self) -> str:
        """A plain-text table of the headline metrics, mean ± std over splits."""
        from recsys_spark.evaluation import headline_table

        return headline_table(self.summary)


def _given_matrix(
    spark: SparkSession, cfg: Config, store: TableStore, path: str, key: str, inputs: dict[str, int | None]
) -> DataFrame:
    """The matrix of the files at ``path`` (config key ``key``), mapped to the stored dense ids; pairs
    of users or items the tables do not know are left out."""
    icfg = cfg.ingest
    users = store.read(T.USERS, version=inputs[T.USERS])
    items = store.read(T.ITEMS, version=inputs[T.ITEMS])
    files = list_source_files(path, key)
    raw = read_source(spark, icfg.source, files, icfg.max_line_bytes)
    validated = validate_events(raw, icfg.source, icfg, datetime.now(timezone.utc))
    events = with_dense_ids(accepted_events(validated, icfg.source, icfg), users, items)
    return interaction_matrix(events, icfg)


def _splits(
    spark: SparkSession, cfg: Config, store: TableStore, matrix: DataFrame, inputs: dict[str, int | None]
) -> list[tuple[str, dict, DataFrame, DataFrame]]:
    from recsys_spark.splits import given_split, leave_last_split, random_split, time_split

    ec = cfg.evaluation
    if ec.split == "served":
        test = _given_matrix(spark, cfg, store, ec.given_test, "evaluation.given_test", inputs)
        return [("served", {"test": ec.given_test}, *given_split(matrix, test))]
    if ec.split == "given":
        out = []
        for fold in ec.folds or [None]:
            paths = [
                (key, pattern.replace("{fold}", fold) if fold else pattern)
                for key, pattern in (
                    ("evaluation.given_train", ec.given_train),
                    ("evaluation.given_test", ec.given_test),
                )
            ]
            train, test = (_given_matrix(spark, cfg, store, path, key, inputs) for key, path in paths)
            out.append((fold or "given", {"train": paths[0][1], "test": paths[1][1]}, *given_split(train, test)))
        return out
    if ec.split == "random":
        return [
            (
                "random",
                {"test_fraction": ec.test_fraction, "seed": ec.seed},
                *random_split(matrix, ec.test_fraction, ec.seed),
            )
        ]
    if ec.split == "time":
        cutoff = datetime.fromisoformat(ec.time_cutoff.replace("Z", "+00:00")) if ec.time_cutoff else None
        return [
            (
                "time",
                {"time_cutoff": ec.time_cutoff, "test_fraction": ec.test_fraction},
                *time_split(matrix, cutoff, ec.test_fraction),
            )
        ]
    return [("leave_last", {"n": ec.leave_last_n}, *leave_last_split(matrix, ec.leave_last_n))]


def _point_latest_at(run_dir: Path) -> None:
    """Make ``<output_dir>/latest`` the run's folder, atomically: a symlink swapped with os.replace.

    Two evaluations finishing at once each swap the link, and either way it names one whole run;
    replacing a copied folder (remove, then rename) let the second one fail on the first's.
    """
    latest = run_dir.parent / "latest"
    if latest.is_dir() and not latest.is_symlink():
        shutil.rmtree(latest)  # a folder left by an earlier version of this job
    tmp = run_dir.parent / f".latest-{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)  # relative: the folder may be moved
    os.replace(tmp, latest)


def run_evaluate(spark: SparkSession, cfg: Config, ctx: RunContext) -> EvaluationResult:
    """Score every strategy of ``candidates.strategies`` and every baseline on each split's test
    part, and write evaluation_summary, evaluation.json and report.html.

    The strategies' models are fitted on each split's training part (settings searched on its
    validation carve-out where a stage's ``tune`` is set) and their lists made by the code that
    writes user_candidates; with ``evaluation.split = "served"`` nothing is fitted and the lists
    user_candidates serves now are scored against ``evaluation.given_test``.
    """
    import json

    from recsys_spark.evaluation import beats, evaluate_split, headline_values
    from recsys_spark.report import render_report

    ec = cfg.evaluation
    store = _writable_store(spark, cfg)
    tables = [T.INTERACTION_MATRIX, T.USERS, T.ITEMS] + ([T.USER_CANDIDATES] if ec.split == "served" else [])
    inputs = {t: store.version(t) for t in tables}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        first = "topk" if missing == [T.USER_CANDIDATES] else "ingest"
        raise StorageError(f"tables {missing} do not exist yet: run `recsys-spark {first}` first")
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    n_items = store.read(T.ITEMS, version=inputs[T.ITEMS]).count()
    matrix.count()  # materialised before the per-split released_caches blocks
    graded = matrix.where(F.col("rating").isNotNull()).limit(1).count() > 0
    results: list[dict] = []
    splits_meta: list[dict] = []
    models_meta: dict[str, dict] = {}
    popularity_curve: dict = {}
    try:
        for name, params, train, test in _splits(spark, cfg, store, matrix, inputs):
            with released_caches(spark):  # every model fitted on this split is freed with it
                train = train.persist(StorageLevel.MEMORY_AND_DISK)
                test = test.persist(StorageLevel.MEMORY_AND_DISK)
                served = _served_lists(store, inputs) if ec.split == "served" else None
                scored = evaluate_split(name, train, test, cfg, n_items=n_items, graded=graded, served=served)
                splits_meta.append({**scored.meta, "params": params})
                results += scored.results
                for model, meta in scored.models.items():
                    entry = models_meta.setdefault(
                        model,
                        {
                            "kind": meta["kind"],
                            "params": meta["params"],
                            "model_version": f"{model}-{ctx.run_id}",
                            "splits": {},
                        },
                    )
                    entry["splits"][name] = {k: v for k, v in meta.items() if k != "kind"}
                if not popularity_curve:
                    counts = scored.popularity_counts
                    step = max(1, len(counts) // 2000)
                    popularity_curve = {
                        "n_items": n_items,
                        "n_interactions": scored.meta["train_rows"],
                        "item_counts_desc": counts[::step],
                        "item_rank": list(range(1, len(counts) + 1, step)),
                    }
                train.unpersist()
                test.unpersist()
    finally:
        matrix.unpersist()

    means = headline_values(results, ec.headline_metric, ec.headline_k)
    strategies = [m for m, meta in models_meta.items() if meta["kind"] == "model" and m in means]
    best = max(strategies, key=lambda m: means[m]) if strategies else None
    flags = []
    if "popularity" in models_meta:
        base = means.get("popularity")
        for model, meta in models_meta.items():
            if meta["kind"] == "model" and not beats(means.get(model), base):
                flags.append(
                    f"model {model!r} does not beat most-popular on {ec.headline_metric}@{ec.headline_k} "
                    f"({means.get(model)} vs {base})"
                )
    summary = {
        "run_id": ctx.run_id,
        "created_at": ctx.started_at.isoformat(),
        "dataset": cfg.ingest.source.preset,
        "ks": list(ec.ks),
        "headline": {"metric": ec.headline_metric, "k": ec.headline_k},
        "best": None if best is None else {"model": best, "value": means[best]},
        "splits": splits_meta,
        "models": models_meta,
        "results": results,
        "flags": flags,
        "popularity": popularity_curve,
        "input_versions": inputs,
        "config": cfg.model_dump(mode="json"),
    }
    out_dir = Path(ec.output_dir) / ctx.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    report_path = render_report(summary, out_dir / "report.html")
    _point_latest_at(out_dir)

    rows = [
        (
            ctx.run_id,
            r["split"],
            r["model"],
            models_meta[r["model"]]["kind"],
            models_meta[r["model"]]["model_version"],
            r["metric"],
            r["k"],
            r["value"],
            json.dumps(inputs, sort_keys=True),
            ctx.started_at,
        )
        for r in results
    ]
    df = spark.createDataFrame(
        rows,
        "run_id STRING, split STRING, model STRING, kind STRING, model_version STRING, "
        "metric STRING, k INT, value DOUBLE, input_versions STRING, "
        "evaluated_at TIMESTAMP",
    )
    written = store.write(df.coalesce(1), T.EVALUATION_SUMMARY, "append", ctx.commit(input_versions=inputs))
    return EvaluationResult(ctx.run_id, summary, json_path, report_path, written)


def _served_lists(store: TableStore, inputs: dict[str, int | None]) -> dict[str, DataFrame]:
    """strategy -> (user_idx, item_idx, rank) of every list user_candidates serves at the version read."""
    version = inputs[T.USER_CANDIDATES]
    served = sorted(store.partition_values(T.USER_CANDIDATES, "strategy"))
    return {
        s: store.read(T.USER_CANDIDATES, version=version, where=f"strategy = '{s}'").select(
            "user_idx", "item_idx", "rank"
        )
        for s in served
    }
