"""The table catalogue: every Delta table the pipeline reads or writes, named once.

Column-level documentation lives in README.md ("Table catalogue"); this module
is the single place code takes table names from.
"""

from __future__ import annotations

from typing import Final

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

#: name -> one-line meaning, in pipeline order.
CATALOGUE: Final[dict[str, str]] = {
    INGESTED_FILES: "ledger of source files already ingested (path, size, mtime, counts, run id)",
    INTERACTIONS: "validated, deduplicated raw events with dense ids, partitioned by event_date",
    REJECTED_INTERACTIONS: "quarantined input rows: raw line, source file, line number, reason",
    USERS: "stable mapping original user id -> dense int user_idx",
    ITEMS: "stable mapping original item id -> dense int item_idx",
    INTERACTION_MATRIX: "one row per (user_idx, item_idx): confidence, rating, event count, last time",
    ITEM_NEIGHBORS: "top-N most similar items per item (item-item cosine), sorted by item_idx",
    USER_FACTORS: "ALS user factors: user_idx, user_id, factors, model_version",
    ITEM_FACTORS: "ALS item factors: item_idx, item_id, factors, model_version",
    MODELS: "one row per training run: parameters, input versions, counts, time, loss",
}
