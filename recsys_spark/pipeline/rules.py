"""Item eligibility at precompute time: items no list may hold (out of stock, not allowed here).

The rules are a UTF-8 file, one item per line, ``item_id`` or ``item_id,reason``; blank lines
and lines starting with ``#`` are skipped. The ``candidates`` job removes the listed items from
every input that can propose them, before any ranking:

* from the item factors, so ALS never scores them;
* from the ``neighbor_idx`` side of every neighbour list, so no vote reaches them, while the
  user's own history still votes, excluded items included;
* from the rows popularity counts, so both popularity lists, and the cold-start lists cut from
  them, are re-ranked without them.

Each list is then the top k of the eligible items: as long as it was, whenever the user has k
eligible items to be offered. Blend lists are blends of the filtered sources. The commit records
the file, its SHA-256 and the counts, so a run says which rule set it applied.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from recsys_spark.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ItemRules", "read_item_rules"]


@dataclass(frozen=True)
class ItemRules:
    """A parsed rules file."""

    path: str
    """Where it was read from."""
    sha256: str
    """The first 16 hex digits of the file's SHA-256: the rule set's version."""
    item_ids: dict[str, str]
    """item_id -> reason ("" when the line gave none)."""

    def record(self, known: int) -> dict[str, object]:
        """What a commit says of the rules: file, version, ids listed, ids the catalogue knows."""
        return {"path": self.path, "sha256": self.sha256, "items": len(self.item_ids), "in_catalogue": known}


def read_item_rules(path: str) -> ItemRules:
    """Parse the rules file at ``path`` (option ``candidates.exclude_items``)."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"candidates.exclude_items: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"candidates.exclude_items: {path}:{line}: not UTF-8") from None
    items: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        item_id, _, reason = stripped.partition(",")
        item_id = item_id.strip()
        if not item_id:
            raise ConfigError(f"candidates.exclude_items: {path}:{n}: the line has no item id: {line!r}")
        items.setdefault(item_id, reason.strip())
    rules = ItemRules(str(p), hashlib.sha256(raw).hexdigest()[:16], items)
    log.info("item rules %s (%s): %d items excluded", rules.path, rules.sha256, len(items))
    return rules
