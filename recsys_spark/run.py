"""The run context: the small object that travels through a job and into every commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from recsys_spark.config import Config
from recsys_spark.storage import CommitInfo


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

    @classmethod
    def new(cls, job: str, cfg: Config) -> RunContext:
        now = datetime.now(timezone.utc)
        return cls(job, f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}", cfg.config_hash(), now)

    def commit(self, **extra: Any) -> CommitInfo:
        """Commit metadata for a table this run writes."""
        return CommitInfo(self.job, self.run_id, self.config_hash, extra)
