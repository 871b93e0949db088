"""The table catalogue: every Delta table the pipeline reads or writes, named once.

Column-level documentation lives in README.md ("Table catalogue"); this module
is the single place code takes table names from.
"""

from __future__ import annotations

import re
from typing import Final

from deltalake import DeltaTable

from recsys_spark.errors import StorageError
from recsys_spark.uris import absolute

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

INGESTED_FILES: Final = "ingested_files"
ITEM_NEIGHBORS: Final = "item_neighbors"
INTERACTIONS: Final = "interactions"
INTERACTION_MATRIX: Final = "interaction_matrix"
ITEMS: Final = "items"
ITEM_FACTORS: Final = "item_factors"
MODELS: Final = "models"
USER_FACTORS: Final = "user_factors"
REJECTED_INTERACTIONS: Final = "rejected_interactions"
USERS: Final = "users"
USER_CANDIDATES: Final = "user_candidates"
POPULAR_ITEMS: Final = "popular_items"
EVALUATION_SUMMARY: Final = "evaluation_summary"
RUNS: Final = "runs"
PUBLISHED: Final = "published"

#: name -> one-line meaning, in pipeline order.
CATALOG: Final[dict[str, str]] = {
    INGESTED_FILES: "ledger of source files already ingested (path, size, mtime, counts, run id)",
    INTERACTIONS: "validated, deduplicated raw events with dense ids, partitioned by event_date",
    REJECTED_INTERACTIONS: "quarantined input rows: raw line, source file, line number, reason",
    USERS: "stable mapping original user id -> dense int user_idx",
    ITEMS: "stable mapping original item id -> dense int item_idx",
    INTERACTION_MATRIX: "one row per (user_idx, item_idx): confidence, rating, event count, last time",
    ITEM_NEIGHBORS: "top-N neighbours per item, partitioned by method (cosine, als), sorted by item_idx",
    USER_FACTORS: "ALS user factors: user_idx, user_id, factors, model_version",
    ITEM_FACTORS: "ALS item factors: item_idx, item_id, factors, model_version",
    MODELS: "one row per training run: parameters, input versions, counts, time, loss",
    USER_CANDIDATES: "top-k items per user, partitioned by strategy, sorted by user_id for lookups",
    POPULAR_ITEMS: "most popular items overall and in a recent window (cold-start fallback)",
    EVALUATION_SUMMARY: "one row per (run, split, model, metric, k): held-out evaluation results",
    RUNS: "one manifest row per job run: status, config, input and output table versions, package versions",
    PUBLISHED: "one row per publish or rollback: the served tables' versions readers use (the latest row)",
}


def table_location(root: str, table: str) -> str:
    """Where ``table`` lives under ``root``; names are plain identifiers, so no path escapes the root."""
    if not _TABLE_NAME.match(table):
        raise StorageError(
            f"invalid table name {table!r}: use lowercase letters, digits and '_' "
            "(a table may not point outside the table root)"
        )
    root = absolute(root)
    return f"{root.rstrip('/')}/{table}"


def available_versions(uri: str) -> str:
    """What a reader asking for a missing version can have instead, e.g. "it has versions 0..7"."""
    try:
        dt = DeltaTable(uri)
    except Exception:  # noqa: BLE001 - no table at all is itself the answer
        return "the table does not exist"
    latest = dt.version()
    try:
        # vacuumed or expired log entries move the oldest version a reader can open forward
        oldest = min(int(h["version"]) for h in dt.history())
    except Exception:  # noqa: BLE001 - the range stays informative without the history
        oldest = 0
    return f"it has versions {oldest}..{latest}" if latest != oldest else f"it has version {latest} only"
