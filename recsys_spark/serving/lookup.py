"""Lookups of precomputed rows for downstream services, without Spark or a JVM.

    from recsys_spark.serving.lookup import Recommendations
    recs = Recommendations.open("data/warehouse")
    recs.for_user("u0000042", k=10)
    recs.similar_items("i0001234", k=10)

Reads the Delta tables with ``deltalake`` + ``pyarrow`` only (this module never imports pyspark, so
a serving process stays small). Candidate and neighbour tables are written sorted by their key into
files covering disjoint key ranges, with small row groups; a lookup therefore opens one file and
decodes one row group, pruned by the min/max statistics of the Delta log and the Parquet footer.

A long-lived reader checks for a new table version at most every ``refresh_seconds`` and then
switches to it atomically. Delta commits are atomic, so a reader sees a whole version or the
previous one, never a half-written one. Pinned versions never move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from recsys_spark import tables as T
from recsys_spark.errors import RecsysError, StorageError
from recsys_spark.uris import is_uri

log = logging.getLogger(__name__)

#: The command that writes each table lookups read, for "run X first" errors.
_WRITTEN_BY = {
    T.USER_CANDIDATES: "candidates",
    T.POPULAR_ITEMS: "candidates",
    T.ITEM_NEIGHBORS: "item-similarity",
    T.ITEMS: "ingest",
}


class UnknownItemError(RecsysError, KeyError):
    """The item id is not in the catalogue (the items table)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownListError(RecsysError, ValueError):
    """A strategy, neighbour method or popularity segment that the tables do not hold.

    Never answered with another list: a service asking for a typo, or for a list that was never
    built, would otherwise serve popularity to everyone without a sign of trouble.
    """


class UnknownStrategyError(UnknownListError):
    """No ``user_candidates`` partition for this strategy."""


class UnknownMethodError(UnknownListError):
    """No ``item_neighbors`` partition for this method."""


class UnknownSegmentError(UnknownListError):
    """No ``popular_items`` list for this segment."""


@dataclass(frozen=True)
class Recommendation:
    """One candidate for a user."""

    item_id: str
    item_idx: int
    score: float
    rank: int
    source: str
    """als, item_item, blend, or popular (cold start / unknown user)."""


@dataclass(frozen=True)
class Neighbor:
    """One neighbour of an item."""

    item_id: str
    item_idx: int
    similarity: float
    rank: int
    method: str


class _Table:
    """One Delta table, at its latest or a pinned version, with cached pyarrow datasets."""

    def __init__(self, root: str, name: str, version: int | None) -> None:
        self.name = name
        self.location = T.table_location(root, name)
        self.pinned = version
        self._lock = threading.Lock()
        self._datasets: dict[Any, pads.Dataset] = {}
        self._dt: DeltaTable | None = None
        self.version: int | None = None
        self._values: dict[tuple[int | None, str], list[str]] = {}
        self._open()

    def _open(self) -> None:
        try:
            dt = (
                DeltaTable(self.location, version=self.pinned) if self.pinned is not None else DeltaTable(self.location)
            )
        except TableNotFoundError:
            if self.pinned is not None:
                raise StorageError(f"table {self.name!r} does not exist at {self.location}") from None
            return  # may appear later; refresh() will pick it up
        except Exception as exc:  # noqa: BLE001 - e.g. a pinned version that was never written or was vacuumed
            if self.pinned is not None:
                raise StorageError(
                    f"table {self.name!r} has no version {self.pinned}: {T.available_versions(self.location)}"
                ) from None
            raise StorageError(f"cannot open table {self.name!r} at {self.location}: {exc}") from None
        self._dt, self.version, self._datasets, self._values = dt, dt.version(), {}, {}

    @property
    def exists(self) -> bool:
        return self._dt is not None

    def refresh(self) -> bool:
        """Move to the newest version if there is one; True when the version changed."""
        if self.pinned is not None:
            return False
        with self._lock:
            before = self.version
            if self._dt is None:
                self._open()
            else:
                self._dt.update_incremental()
                if self._dt.version() != before:
                    self.version, self._datasets, self._values = self._dt.version(), {}, {}
            return self.version != before

    def values(self, column: str) -> list[str]:
        """Sorted distinct values of ``column`` in the version being served (empty: no table).

        A partition column is read from the log alone; another column (popular_items' segment, one
        small file) from the data.
        """
        if self._dt is None:
            return []
        key = (self.version, column)
        values = self._values.get(key)
        if values is None:
            if column in self._dt.metadata().partition_columns:
                found = {p[column] for p in self._dt.partitions()}
            else:
                found = set(self.dataset().to_table(columns=[column]).column(column).to_pylist())
            values = sorted(v for v in found if v is not None)
            self._values = {key: values, **{k: v for k, v in self._values.items() if k[0] == self.version}}
        return values

    def dataset(self, partition: tuple[str, str] | None = None) -> pads.Dataset:
        if self._dt is None:
            raise StorageError(
                f"table {self.name!r} does not exist at {self.location}: run "
                f"`recsys-spark {_WRITTEN_BY.get(self.name, 'demo')}` first"
            )
        key = (self.version, partition)
        ds = self._datasets.get(key)
        if ds is None:
            # the SubTree filesystem reader; deltalake's default one can abort Python at exit
            fs = pafs.SubTreeFileSystem(self.location, pafs.LocalFileSystem()) if not is_uri(self.location) else None
            where = [(partition[0], "=", partition[1])] if partition else None
            ds = self._dt.to_pyarrow_dataset(file_pruning_predicate=where, filesystem=fs)
            self._datasets = {key: ds, **{k: v for k, v in self._datasets.items() if k[0] == self.version}}
        return ds

    def rows(
        self, key_col: str, keys: list[str], columns: list[str], partition: tuple[str, str] | None = None
    ) -> pa.Table:
        expr = pc.field(key_col) == keys[0] if len(keys) == 1 else pc.field(key_col).isin(keys)
        return self.dataset(partition).to_table(filter=expr, columns=columns)


class Recommendations:
    """Read side of the pipeline: user candidates, item neighbours and popularity lists."""

    def __init__(
        self,
        root: str,
        *,
        strategy: str = "als",
        neighbor_method: str = "cosine",
        cold_start_segment: str = "recent",
        versions: Mapping[str, int] | None = None,
        refresh_seconds: float = 5.0,
    ) -> None:
        versions = dict(versions or {})
        unknown = set(versions) - {T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS}
        if unknown:
            raise StorageError(
                f"cannot pin {sorted(unknown)}: lookups read user_candidates, item_neighbors, popular_items and items"
            )
        self.root = root
        self.strategy = strategy
        self.neighbor_method = neighbor_method
        self.cold_start_segment = cold_start_segment
        self.refresh_seconds = refresh_seconds
        self._tables = {
            name: _Table(root, name, versions.get(name))
            for name in (T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS)
        }
        self._checked = time.monotonic()
        self._popular: dict[tuple[int | None, str], list[Recommendation]] = {}

    def strategies(self) -> list[str]:
        """The candidate strategies user_candidates holds at the version served."""
        return self._tables[T.USER_CANDIDATES].values("strategy")

    def neighbor_methods(self) -> list[str]:
        """The neighbour methods item_neighbors holds at the version served."""
        return self._tables[T.ITEM_NEIGHBORS].values("method")

    def segments(self) -> list[str]:
        """The popularity segments popular_items holds at the version served."""
        return self._tables[T.POPULAR_ITEMS].values("segment")

    _LISTS: ClassVar[dict[str, tuple[str, type[UnknownListError], str]]] = {
        T.USER_CANDIDATES: (
            "strategy",
            UnknownStrategyError,
            "pick one of those, or build it with `recsys-spark candidates` (candidates.strategies)",
        ),
        T.ITEM_NEIGHBORS: (
            "method",
            UnknownMethodError,
            "pick one of those, or build it with `recsys-spark item-similarity --set similarity.method=...`",
        ),
        T.POPULAR_ITEMS: ("segment", UnknownSegmentError, "`candidates` writes the overall and recent lists"),
    }

    def _check_list(self, table: str, value: str) -> None:
        """Raise when the served version of ``table`` has no list ``value`` (see UnknownListError)."""
        kind, error, hint = self._LISTS[table]
        t = self._tables[table]
        if not t.exists:
            return  # dataset() names the job to run
        available = t.values(kind)
        if value not in available:
            raise error(f"unknown {kind} {value!r}: {table} version {t.version} holds {available}; {hint}")

    @classmethod
    def open(cls, root: str, **kwargs: Any) -> Recommendations:
        """Open the tables under ``root`` (see :class:`Recommendations` for the options)."""
        return cls(root, **kwargs)

    # -- versions --------------------------------------------------------------------------------

    def versions(self) -> dict[str, int | None]:
        """The table versions lookups are served from."""
        return {name: t.version for name, t in self._tables.items()}

    def refresh(self) -> bool:
        """Pick up new table versions now; True when any changed."""
        changed = [t.refresh() for t in self._tables.values()]
        self._checked = time.monotonic()
        if any(changed):
            log.info("lookup tables now at %s", self.versions())
        return any(changed)

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._checked >= self.refresh_seconds:
            self.refresh()

    # -- users -----------------------------------------------------------------------------------

    def for_user(self, user_id: str, k: int = 10) -> list[Recommendation]:
        """The user's top-k candidates; the popularity list for users without any."""
        return self.for_users([user_id], k)[user_id]

    def for_users(self, user_ids: Iterable[str], k: int = 10) -> dict[str, list[Recommendation]]:
        """Top-k candidates of several users in one read."""
        ids = _keys(user_ids, "user")
        if not ids:
            return {}
        self._maybe_refresh()
        self._check_list(T.USER_CANDIDATES, self.strategy)
        table = self._tables[T.USER_CANDIDATES].rows(
            "user_id", ids, ["user_id", "rank", "item_id", "item_idx", "score", "source"], ("strategy", self.strategy)
        )
        found: dict[str, list[Recommendation]] = {}
        cols = table.to_pydict()
        for uid, rank, iid, idx, score, source in zip(
            cols["user_id"], cols["rank"], cols["item_id"], cols["item_idx"], cols["score"], cols["source"]
        ):
            if rank <= k:
                found.setdefault(uid, []).append(Recommendation(iid, idx, float(score), rank, source))
        out = {}
        for uid in ids:
            recs = found.get(uid)
            out[uid] = sorted(recs, key=lambda r: r.rank) if recs else self.popular(k)
        return out

    def popular(self, k: int = 10, segment: str | None = None) -> list[Recommendation]:
        """The popularity list (``cold_start_segment`` by default), as unknown users get it."""
        seg = segment or self.cold_start_segment
        self._maybe_refresh()
        self._check_list(T.POPULAR_ITEMS, seg)
        t = self._tables[T.POPULAR_ITEMS]
        key = (t.version, seg)
        if key not in self._popular:
            rows = (
                t.dataset()
                .to_table(filter=pc.field("segment") == seg, columns=["rank", "item_id", "item_idx", "score"])
                .to_pydict()
            )
            self._popular = {
                key: sorted(
                    (
                        Recommendation(i, x, float(s), r, "popular")
                        for r, i, x, s in zip(rows["rank"], rows["item_id"], rows["item_idx"], rows["score"])
                    ),
                    key=lambda r: r.rank,
                )
            }
        return self._popular[key][:k]

    # -- items -----------------------------------------------------------------------------------

    def similar_items(self, item_id: str, k: int = 10, method: str | None = None) -> list[Neighbor]:
        """The item's k nearest neighbours; UnknownItemError for an id not in the catalogue."""
        return self.similar_items_batch([item_id], k, method)[str(item_id)]

    def similar_items_batch(
        self, item_ids: Iterable[str], k: int = 10, method: str | None = None
    ) -> dict[str, list[Neighbor]]:
        """Neighbours of several items in one read."""
        ids = _keys(item_ids, "item")
        if not ids:
            return {}
        self._maybe_refresh()
        m = method or self.neighbor_method
        self._check_list(T.ITEM_NEIGHBORS, m)
        table = self._tables[T.ITEM_NEIGHBORS].rows(
            "item_id", ids, ["item_id", "rank", "neighbor_id", "neighbor_idx", "similarity"], ("method", m)
        )
        found: dict[str, list[Neighbor]] = {}
        cols = table.to_pydict()
        for iid, rank, nid, nidx, sim in zip(
            cols["item_id"], cols["rank"], cols["neighbor_id"], cols["neighbor_idx"], cols["similarity"]
        ):
            if rank <= k:
                found.setdefault(iid, []).append(Neighbor(nid, nidx, float(sim), rank, m))
        missing = [i for i in ids if i not in found]
        if missing:
            known = set(self._tables[T.ITEMS].rows("item_id", missing, ["item_id"]).column("item_id").to_pylist())
            unknown = [i for i in missing if i not in known]
            if unknown:
                raise UnknownItemError(
                    f"unknown item id {unknown[0]!r}: it is not in the items table "
                    f"({self._tables[T.ITEMS].location}, version {self._tables[T.ITEMS].version})"
                )
        return {i: sorted(found.get(i, []), key=lambda n: n.rank) for i in ids}


def _keys(ids: Iterable[str], kind: str) -> list[str]:
    """Distinct lookup keys, in order; a blank one is an error rather than an unknown id."""
    keys = list(dict.fromkeys(str(i) for i in ids))
    blank = [k for k in keys if not k.strip()]
    if blank:
        raise RecsysError(
            f"{kind} id {blank[0]!r} is blank: ids are never empty (ingest rejects them), so this "
            "is a caller's bug, not an unknown id"
        )
    return keys
