"""The run context that travels through a job into every commit, and the run manifest.

Each job run ends by appending one row to the ``runs`` table: what ran (job, run id, status,
error), with what (the whole effective config, package versions, Spark master and application),
on which inputs and producing which outputs (table versions). Outputs and inputs are read back
from the Delta logs, from the commits stamped with this run's id, rather than tracked in memory:
the manifest then says what actually landed, even for a run that failed half-way.
"""

from __future__ import annotations

import json
import logging
import platform
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.storage.store import CommitInfo, table_history

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.storage.store import TableStore, WriteResult

log = logging.getLogger(__name__)

#: Distributions whose versions a manifest records (missing ones are left out).
_PACKAGES = ("recsys-spark", "pyspark", "delta-spark", "deltalake", "pyarrow", "numpy", "pandas", "scipy", "pydantic")
#: Commits per table searched for this run's: a job writes a table a handful of times at most,
#: and concurrent runs of other jobs add a few more.
_HISTORY_DEPTH = 100
#: Keys of commit metadata that identify the writer rather than describe the inputs.
_IDENTITY_KEYS = {"job", "run_id", "config_hash", "write_id", "input_versions", "settings_hash"}

RUNS_SCHEMA = (
    "run_id STRING, job STRING, status STRING, started_at TIMESTAMP, finished_at TIMESTAMP, "
    "duration_s DOUBLE, config_hash STRING, config STRING, input_versions STRING, "
    "output_versions STRING, details STRING, packages STRING, spark STRING, error STRING"
)


@dataclass(frozen=True)
class RunContext:
    """Identity of one job run."""

    job: str
    """Job name (generate, ingest, ...)."""
    run_id: str
    """Sortable unique id: UTC start time plus a random suffix."""
    config_hash: str
    """Hash of the effective configuration."""
    started_at: datetime
    """UTC start time; also the 'now' that time-window validation uses, so one run is consistent."""
    notes: dict[str, Any] = field(default_factory=dict, compare=False)
    """What the job reports into its manifest's ``details`` besides its commits (the nightly job's
    stage runs); filled while it runs, so a failed run records what it got through."""

    @classmethod
    def new(cls, job: str, cfg: Config) -> RunContext:
        now = datetime.now(timezone.utc)
        return cls(job, f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}", cfg.config_hash(), now)

    def commit(self, **extra: Any) -> CommitInfo:
        """Commit metadata for a table this run writes."""
        return CommitInfo(self.job, self.run_id, self.config_hash, extra)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's results, plus Python's."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def run_commits(root: str, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per table, the commits (oldest first) stamped with ``run_id``: version and metadata."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table in T.CATALOG:
        if table == T.RUNS:
            continue
        try:
            entries = table_history(root, table, _HISTORY_DEPTH)
        except Exception:  # noqa: BLE001 - a missing table simply has no commits of this run
            continue
        mine = [{"version": e.version, **e.metadata} for e in entries if e.metadata.get("run_id") == run_id]
        if mine:
            found[table] = sorted(mine, key=lambda c: c["version"])
    return found


def manifest_row(
    ctx: RunContext, cfg: Config, status: str, error: str | None, finished_at: datetime, spark_info: dict[str, Any]
) -> tuple[Any, ...]:
    """The ``runs`` row of a finished (or failed) run, in the column order of ``RUNS_SCHEMA``."""
    commits = run_commits(cfg.storage.root, ctx.run_id)
    outputs = {t: [c["version"] for c in cs] for t, cs in commits.items()}
    inputs: dict[str, int | None] = {}
    details: dict[str, Any] = {}
    for table, cs in commits.items():
        for c in cs:
            for name, version in (c.get("input_versions") or {}).items():
                # a version this run wrote itself is not an input; of the others, the first read counts
                if version not in outputs.get(name, ()):
                    inputs.setdefault(name, version)
            extra = {k: v for k, v in c.items() if k not in _IDENTITY_KEYS and k != "version"}
            if extra:
                details.setdefault(table, []).append({"version": c["version"], **extra})
    details.update(ctx.notes)
    return (
        ctx.run_id,
        ctx.job,
        status,
        ctx.started_at,
        finished_at,
        (finished_at - ctx.started_at).total_seconds(),
        ctx.config_hash,
        json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        json.dumps(inputs, sort_keys=True),
        json.dumps(outputs, sort_keys=True),
        json.dumps(details, sort_keys=True, default=str),
        json.dumps(package_versions(), sort_keys=True),
        json.dumps(spark_info, sort_keys=True),
        error,
    )


def manifest_frame(
    spark: SparkSession, ctx: RunContext, cfg: Config, status: str, error: str | None = None
) -> DataFrame:
    """The run's manifest as a one-row DataFrame of the ``runs`` table."""
    sc = spark.sparkContext
    info = {
        "master": sc.master,
        "app_id": sc.applicationId,
        "version": spark.version,
        "default_parallelism": sc.defaultParallelism,
    }
    row = manifest_row(ctx, cfg, status, error, datetime.now(timezone.utc), info)
    return spark.createDataFrame([row], RUNS_SCHEMA)


def record_run(
    spark: SparkSession, store: TableStore, ctx: RunContext, cfg: Config, status: str, error: str | None = None
) -> WriteResult:
    """Append the run's manifest to the ``runs`` table."""
    written = store.write(manifest_frame(spark, ctx, cfg, status, error).coalesce(1), T.RUNS, "append", ctx.commit())
    log.info("run %s (%s) %s: manifest in runs v%d", ctx.run_id, ctx.job, status, written.version)
    return written
