"""The ``publish`` job and ``rollback``: moving the ``published`` pointer readers follow.

``publish`` gates the latest versions of the served tables (:mod:`recsys_spark.evaluation.gate`)
and, when every check passes, appends a publication naming them; a refusal leaves the pointer
where it was, records every failed check in the run's manifest and raises
:class:`~recsys_spark.errors.GateRefusedError`. Versions already in force are not published again,
so a re-run changes nothing. ``rollback`` appends a publication naming earlier versions, and marks
the ones it replaces as withdrawn: the gate refuses them from then on, until a new run replaces them.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.errors import ConfigError, GateRefusedError, StorageError
from recsys_spark.evaluation.churn import list_churn
from recsys_spark.evaluation.gate import GateCheck, gate_checks, list_stats
from recsys_spark.pipeline.common import writable_store
from recsys_spark.pipeline.staleness import last_stage_commit, settings_hash, why_stale
from recsys_spark.storage.published import PUBLISHED_SCHEMA, SERVED_TABLES, Publication, publications

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import TableStore, WriteResult

log = logging.getLogger(__name__)

__all__ = ["PublishResult", "run_publish", "run_rollback", "withdrawn_versions"]


@dataclass(frozen=True)
class PublishResult:
    """What a publish did: the versions in force after it, and the checks it made (none when the
    versions were already published)."""

    published: bool
    versions: dict[str, int]
    checks: list[GateCheck] = field(default_factory=list)
    written: WriteResult | None = None

    def render(self) -> str:
        named = ", ".join(f"{t} v{v}" for t, v in self.versions.items())
        if not self.published:
            return f"publish: already in force ({named})"
        return f"publish: gate passed ({len(self.checks)} checks), readers now use {named}"


def withdrawn_versions(history: list[Publication]) -> dict[tuple[str, int], str]:
    """(table, version) -> the rollback run that took it out of service."""
    out: dict[tuple[str, int], str] = {}
    for before, after in itertools.pairwise(history):
        if after.action == "rollback":
            for table, version in before.versions.items():
                if after.versions.get(table) != version:
                    out[(table, version)] = after.run_id
    return out


def _append(
    spark: SparkSession, store: TableStore, ctx: RunContext, history: list[Publication], row: dict[str, Any]
) -> WriteResult:
    import json

    seq = history[-1].seq + 1 if history else 1
    values = (
        seq,
        ctx.run_id,
        row["action"],
        json.dumps(row["versions"], sort_keys=True),
        json.dumps(row["stats"], sort_keys=True),
        row["reason"],
        datetime.now(timezone.utc),
    )
    # conditional on the version read: of two publishers, the second fails instead of both advancing
    return store.write(
        spark.createDataFrame([values], PUBLISHED_SCHEMA).coalesce(1),
        T.PUBLISHED,
        "append",
        ctx.commit(),
        expected_version=store.version(T.PUBLISHED),
    )


def _night_metrics(store: TableStore, cfg: Config) -> dict[str, float]:
    """strategy -> the headline metric of the latest evaluation, mean over its splits."""
    ec = cfg.evaluation
    entry = last_stage_commit(store, T.EVALUATION_SUMMARY)
    if entry is None:
        return {}
    rows = (
        store.read(T.EVALUATION_SUMMARY, version=entry.version)
        .where(
            (F.col("run_id") == entry.metadata["run_id"])
            & (F.col("metric") == ec.headline_metric)
            & (F.col("k") == ec.headline_k)
            & (F.col("kind") == "model")
        )
        .groupBy("model")
        .agg(F.mean("value").alias("value"))
        .collect()
    )
    return {r["model"]: float(r["value"]) for r in rows}


def run_publish(spark: SparkSession, cfg: Config, ctx: RunContext) -> PublishResult:
    """Gate the latest served tables and publish them if they pass (see the module docstring)."""
    store = writable_store(spark, cfg)
    versions = {t: store.version(t) for t in SERVED_TABLES}
    missing = [t for t, v in versions.items() if v is None]
    if missing:
        raise StorageError(f"tables {missing} do not exist yet: run the nightly job (or each stage) first")
    latest: dict[str, int] = {t: v for t, v in versions.items() if v is not None}
    history = publications(cfg.storage.root)
    current = history[-1] if history else None
    if current is not None and current.versions == latest:
        return PublishResult(False, latest)

    ec, strategies = cfg.evaluation, list(cfg.candidates.strategies)
    metric = f"{ec.headline_metric}@{ec.headline_k}"
    checks: list[GateCheck] = []
    for (table, version), run in sorted(withdrawn_versions(history).items()):
        if latest.get(table) == version:
            checks.append(
                GateCheck(
                    "*", "withdrawn", False, f"{table} v{version} was rolled back by run {run}; a new run replaces it"
                )
            )
    stale = why_stale(store, T.EVALUATION_SUMMARY, settings_hash(cfg, "evaluate"))
    checks.append(
        GateCheck("*", "evaluation current", stale is None, stale or "this configuration's evaluation of these inputs")
    )
    built = last_stage_commit(store, T.USER_CANDIDATES)
    inputs = (built.metadata.get("input_versions") or {}) if built else {}
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs.get(T.INTERACTION_MATRIX))
    lists = store.read(T.USER_CANDIDATES, version=latest[T.USER_CANDIDATES]).where(F.col("strategy").isin(strategies))
    stats: dict[str, dict[str, Any]] = {s: dict(v) for s, v in list_stats(lists, matrix).items()}
    n_users = store.read(T.USERS, version=inputs.get(T.USERS)).count()
    n_items = store.read(T.ITEMS, version=latest[T.ITEMS]).count()
    metrics = _night_metrics(store, cfg)
    for strategy in strategies:
        if strategy not in stats:
            checks.append(GateCheck(strategy, "lists", False, "user_candidates holds no list of it"))
    if current is not None:
        # the users' top 10 against what readers are served now
        served = store.read(T.USER_CANDIDATES, version=current.versions[T.USER_CANDIDATES])
        for strategy, figures in list_churn(lists, served.where(F.col("strategy").isin(strategies))).items():
            if strategy in stats:
                stats[strategy]["churn"] = figures
    for strategy, s in stats.items():
        s["user_coverage"] = s["users"] / n_users if n_users else 0.0
        s["item_coverage"] = s["items"] / n_items if n_items else 0.0
        s["metric"] = metrics.get(strategy)
    checks += gate_checks(stats, current.stats if current else None, cfg.gate, metric)
    failed = [c for c in checks if not c.passed]
    ctx.notes["gate"] = {
        "passed": not failed,
        "versions": latest,
        "metric": metric,
        "checks": [asdict(c) for c in checks],
        "churn": {name: s["churn"] for name, s in stats.items() if "churn" in s},
    }
    if failed:
        in_force = ", ".join(f"{t} v{v}" for t, v in current.versions.items()) if current else "the latest versions"
        raise GateRefusedError(
            f"the quality gate refused {', '.join(f'{t} v{v}' for t, v in latest.items())}: "
            + "; ".join(c.render() for c in failed)
            + f". Readers keep {in_force}."
        )
    written = _append(
        spark,
        store,
        ctx,
        history,
        {"action": "publish", "versions": latest, "stats": stats, "reason": f"gate passed: {len(checks)} checks"},
    )
    log.info("published %s (published v%d)", latest, written.version)
    return PublishResult(True, latest, checks, written)


def run_rollback(
    spark: SparkSession, cfg: Config, ctx: RunContext, table: str | None, to_version: int | None, to_run: str | None
) -> Publication:
    """Bring back earlier versions for readers: ``table`` at ``to_version``, or every served table
    as run ``to_run`` published it. Recorded as a ``rollback`` publication."""
    store = writable_store(spark, cfg)
    history = publications(cfg.storage.root)
    if not history:
        raise ConfigError(
            "rollback: nothing was published yet under this storage.root; readers use the latest versions"
        )
    current = history[-1]
    if to_run is not None:
        target = next((p for p in reversed(history) if p.run_id == to_run), None)
        if target is None:
            runs = ", ".join(dict.fromkeys(p.run_id for p in history))
            raise ConfigError(f"rollback --to-run: run {to_run!r} published nothing; runs that did: {runs}")
        versions, stats, reason = dict(target.versions), target.stats, f"back to run {to_run}"
    else:
        if table not in SERVED_TABLES:
            raise ConfigError(f"rollback: {table!r} is not a served table; readers use {', '.join(SERVED_TABLES)}")
        if to_version is None:
            raise ConfigError("rollback TABLE needs --to-version N (or use --to-run RUN_ID)")
        known = [e.version for e in store.history(table)]
        if to_version not in known:
            raise ConfigError(f"rollback: {table} has no version {to_version}; it has {sorted(known)}")
        versions = {**current.versions, table: to_version}
        earlier = next((p for p in reversed(history) if p.versions.get(table) == to_version), None)
        stats, reason = (earlier.stats if earlier else current.stats), f"{table} back to v{to_version}"
    if versions == current.versions:
        raise ConfigError(f"rollback: readers already use {versions}")
    _append(spark, store, ctx, history, {"action": "rollback", "versions": versions, "stats": stats, "reason": reason})
    ctx.notes["rollback"] = {"from": current.versions, "to": versions}
    return publications(cfg.storage.root)[-1]
