"""Whether a stage's output is current, judged from what its last commit says it was built from.

Every stage commit records the versions of the tables it read (``input_versions``) and a hash of
the settings that shape its output (``settings_hash``, from :func:`settings_hash`). A stage is
current when its output's latest commit names, for every input, the version that is still the
latest, and the hash the configuration gives now.

Why the commits rather than what happened earlier in the same process (the demo's old rule was
"ingest added rows, so retrain"): a night killed after training, a stage re-run by hand in the
afternoon, or a second scheduler all move tables behind the back of one process. The commits say
what each table was really built from, whoever wrote it, so a re-run after any of those does
exactly the work left and nothing more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys_spark.config.schema import Config
    from recsys_spark.storage.delta_log import HistoryEntry
    from recsys_spark.storage.store import TableStore

__all__ = ["STAGE_SETTINGS", "last_stage_commit", "settings_hash", "why_stale"]

#: The configuration sections that shape each stage's output. A stage that searches settings
#: (``tune``) refits the other models on its validation carve-out, so candidates and evaluate
#: depend on the model sections too; a change there reruns the model stage anyway.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "train-als": ("als", "tuning"),
    "item-similarity": ("similarity", "tuning"),
    "candidates": ("candidates", "als", "similarity", "tuning"),
    "evaluate": ("evaluation", "candidates", "als", "similarity", "tuning"),
}

#: Commits searched, newest first, for a stage's latest one: a table's partitions are written by
#: turns (one commit per method or strategy), and a handful of other writers may come between.
_HISTORY_DEPTH = 100


def settings_hash(cfg: Config, stage: str) -> str:
    """Short stable hash of the sections of ``cfg`` that ``stage`` reads (:data:`STAGE_SETTINGS`)."""
    sections = {name: getattr(cfg, name).model_dump(mode="json") for name in STAGE_SETTINGS[stage]}
    canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def last_stage_commit(store: TableStore, table: str, match: dict[str, Any] | None = None) -> HistoryEntry | None:
    """The newest commit of ``table`` written by a stage (one that records its inputs) whose metadata
    holds every ``match`` item, e.g. ``{"strategy": "als"}`` for one partition; None if there is none."""
    if not store.exists(table):
        return None
    for entry in store.history(table, limit=_HISTORY_DEPTH):
        meta = entry.metadata
        if "input_versions" in meta and all(meta.get(k) == v for k, v in (match or {}).items()):
            return entry
    return None


def why_stale(
    store: TableStore,
    table: str,
    expected_settings: str,
    match: dict[str, Any] | None = None,
    floors: Mapping[str, int] | None = None,
) -> str | None:
    """Why the stage writing ``table`` (the ``match`` partition of it) must run, or None when its
    latest commit was built from the latest version of every input with ``expected_settings``.

    ``floors``: inputs for which any version from the given one on is current. Between full
    retrains the item-side models stay as the base model was trained (the fold-in refresh moves
    the users alone), so their inputs need only be as new as the base model's.
    """
    part = "" if not match else " (" + ", ".join(f"{k} = {v!r}" for k, v in match.items()) + ")"
    entry = last_stage_commit(store, table, match)
    if entry is None:
        return f"{table}{part} not written yet"
    meta = entry.metadata
    recorded = meta.get("settings_hash")
    if recorded is None:
        return f"{table}{part} v{entry.version} does not record its settings"
    if recorded != expected_settings:
        return f"settings changed since {table}{part} v{entry.version}"
    for name, version in sorted((meta.get("input_versions") or {}).items()):
        now = store.version(name)
        if floors and name in floors and version is not None and version >= floors[name]:
            continue
        if now != version:
            return f"{name} is at v{now}, {table}{part} v{entry.version} was built from v{version}"
    return None
