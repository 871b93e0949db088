"""The ``published`` table: which version of each served table the readers use.

Each row is one publish (the gate passed) or one rollback, and names a version of every served
table (``user_candidates``, ``popular_items``, ``item_neighbors``, ``items``); the row with the
highest ``seq`` is in force. Until a warehouse has a row, readers serve the latest versions, as
they did before there was a gate.

Why a pointer table rather than restoring each served table to the version wanted:

* one commit moves every served table at once, so a reader never pairs new candidates with the
  previous night's popularity lists;
* candidates can be written, checked and refused without a reader ever seeing them;
* a rollback is a new row: recorded, and itself undone by another one, while the lists' own
  history stays as written, which is what the nightly job's staleness rule reads.

Read with deltalake alone, so the no-JVM readers follow it; written by the publish job through
the table store, conditionally on the version read, so two publishers cannot both advance it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from recsys_spark import tables as T

__all__ = ["PUBLISHED_SCHEMA", "SERVED_TABLES", "Publication", "current_publication", "publications"]

#: The tables a publication names a version of: what the lookups read.
SERVED_TABLES = (T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS)

PUBLISHED_SCHEMA = (
    "seq LONG, run_id STRING, action STRING, versions STRING, stats STRING, reason STRING, published_at TIMESTAMP"
)


@dataclass(frozen=True)
class Publication:
    """One row of ``published``."""

    seq: int
    """Position in the sequence of publications: the highest is in force."""
    run_id: str
    """The run that wrote it (a nightly, publish or rollback run)."""
    action: str
    """``publish`` (the gate passed) or ``rollback``."""
    versions: dict[str, int]
    """Served table -> the version readers use."""
    stats: dict[str, Any]
    """What the gate measured on the published lists, per strategy (rows, coverage, the headline
    metric); a rollback carries the stats of the publication it returns to."""
    reason: str
    """Why: the gate's verdict, or the rollback's target."""
    published_at: datetime


def publications(root: str) -> list[Publication]:
    """Every publication under ``root``, oldest first (empty before the first)."""
    try:
        dt = DeltaTable(T.table_location(root, T.PUBLISHED))
    except TableNotFoundError:
        return []
    rows = dt.to_pyarrow_table().to_pylist()
    out = [
        Publication(
            r["seq"],
            r["run_id"],
            r["action"],
            {k: int(v) for k, v in json.loads(r["versions"]).items()},
            json.loads(r["stats"] or "{}"),
            r["reason"] or "",
            r["published_at"],
        )
        for r in rows
    ]
    return sorted(out, key=lambda p: p.seq)


def current_publication(root: str) -> Publication | None:
    """The publication in force, or None when nothing was ever published."""
    found = publications(root)
    return found[-1] if found else None
