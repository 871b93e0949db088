"""Lookups of precomputed rows for downstream services, without Spark or a JVM.

    from recsys_spark.serving.lookup import Recommendations
    recs = Recommendations.open("data/warehouse")
    recs.for_user("u0000042", k=10)
    recs.similar_items("i0001234", k=10)

Reads the Delta tables with ``deltalake`` + ``pyarrow`` only (this module never imports pyspark, so
a serving process stays small). Candidate and neighbour tables are written sorted by their key into
files covering disjoint key ranges, with small row groups; a lookup therefore opens one file and
decodes one row group, pruned by the min/max statistics of the Delta log and the Parquet footer.

A long-lived reader checks for new table versions at most every ``refresh_seconds`` and then
switches to them in one step: the tables it serves form a :class:`Snapshot` of opened versions that
is never modified, and a refresh builds the next snapshot beside it and swaps one reference. A
request holds one snapshot from start to end, so it never mixes two versions of a table, however
many commits land meanwhile; Delta commits are atomic, so each version it sees is whole. Pinned
versions never move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from recsys_spark import tables as T
from recsys_spark.errors import RecsysError, StorageError
from recsys_spark.serving.row_groups import RowGroupIndex
from recsys_spark.storage.published import current_publication
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
    because_item_id: str | None = None
    """The user's history item that explains the row (see user_candidates in the README); None for
    popularity rows and for tables written before explanations existed."""
    because_share: float | None = None
    """That item's share of the score (neighbour strategies, blend); None otherwise."""


@dataclass(frozen=True)
class Neighbor:
    """One neighbour of an item."""

    item_id: str
    item_idx: int
    similarity: float
    rank: int
    method: str


@dataclass(frozen=True)
class UserList:
    """One user's served list, with what the request's exclusions took out of it."""

    user_id: str
    items: list[Recommendation]
    filtered: int
    """Candidates skipped because the request excluded them."""
    source: str
    """The strategy whose row answered (als, item_item, blend), or ``popular`` for an unknown user."""


def columns_as_lists(table: pa.Table) -> dict[str, list[Any]]:
    """``table.to_pydict()`` for the few rows of a lookup, in a fraction of its time: numbers go
    through numpy and dictionary-encoded strings through their codes. On a user's 12 rows of
    rank, item_idx, score and source, to_pydict took 27 us, 15 of them for the one dictionary
    column."""
    return {name: _as_list(column) for name, column in zip(table.column_names, table.columns)}


def _as_list(column: pa.ChunkedArray) -> list[Any]:
    if column.num_chunks != 1 or column.null_count:
        return [None] * len(column) if column.null_count == len(column) else column.to_pylist()
    values = column.chunk(0)
    kind = values.type
    if pa.types.is_dictionary(kind):
        words = values.dictionary.to_pylist()
        return [words[i] for i in values.indices.to_numpy().tolist()]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return values.to_numpy().tolist()
    return values.to_pylist()


def take_k(ranked: list[Recommendation], k: int, skip: Collection[str]) -> tuple[list[Recommendation], int]:
    """The first ``k`` of ``ranked`` whose item is not in ``skip``, and how many were skipped on the way."""
    served: list[Recommendation] = []
    filtered = 0
    for r in ranked:
        if len(served) == k:
            break
        if r.item_id in skip:
            filtered += 1
        else:
            served.append(r)
    return served, filtered


class _TableVersion:
    """One Delta table at one version, never moved: a refresh opens a new one beside it.

    Keeping each opened version immutable is what makes a switch atomic. A request holds the
    snapshot it started with, and every row it reads comes from those versions, however many
    commits land meanwhile.
    """

    def __init__(self, name: str, location: str, dt: DeltaTable | None) -> None:
        self.name = name
        self.location = location
        self._dt = dt
        self.version: int | None = dt.version() if dt is not None else None
        self._datasets: dict[tuple[str, str] | None, pads.Dataset] = {}
        self._values: dict[str, list[str]] = {}
        self._popular: dict[str, list[Recommendation]] = {}
        self._indexes: dict[tuple[str, tuple[str, str] | None], RowGroupIndex | None] = {}
        self._id_list: list[str | None] | None = None
        self._id_set: frozenset[str] | None = None
        self._columns: frozenset[str] | None = None

    @classmethod
    def open(cls, root: str, name: str, version: int | None) -> _TableVersion:
        location = T.table_location(root, name)
        try:
            dt = DeltaTable(location, version=version) if version is not None else DeltaTable(location)
        except TableNotFoundError:
            if version is not None:
                raise StorageError(f"table {name!r} does not exist at {location}") from None
            return cls(name, location, None)  # may appear later; a refresh will pick it up
        except Exception as exc:  # noqa: BLE001 - e.g. a pinned version that was never written or was vacuumed
            if version is not None:
                raise StorageError(
                    f"table {name!r} has no version {version}: {T.available_versions(location)}"
                ) from None
            raise StorageError(f"cannot open table {name!r} at {location}: {exc}") from None
        return cls(name, location, dt)

    @property
    def exists(self) -> bool:
        return self._dt is not None

    def has_column(self, name: str) -> bool:
        """Whether this version's schema has ``name`` (tables written by an older release may not)."""
        if self._dt is None:
            return False
        if self._columns is None:
            self._columns = frozenset(f.name for f in self._dt.schema().fields)
        return name in self._columns

    def values(self, column: str) -> list[str]:
        """Sorted distinct values of ``column`` (empty: no table).

        A partition column is read from the log alone; another column (popular_items' segment, one
        small file) from the data.
        """
        if self._dt is None:
            return []
        values = self._values.get(column)
        if values is None:
            if column in self._dt.metadata().partition_columns:
                found = {p[column] for p in self._dt.partitions()}
            else:
                found = set(self.dataset().to_table(columns=[column]).column(column).to_pylist())
            values = self._values[column] = sorted(v for v in found if v is not None)
        return values

    def dataset(self, partition: tuple[str, str] | None = None) -> pads.Dataset:
        if self._dt is None:
            raise StorageError(
                f"table {self.name!r} does not exist at {self.location}: run "
                f"`recsys-spark {_WRITTEN_BY.get(self.name, 'demo')}` first"
            )
        ds = self._datasets.get(partition)
        if ds is None:
            # the SubTree filesystem reader; deltalake's default one can abort Python at exit
            fs = pafs.SubTreeFileSystem(self.location, pafs.LocalFileSystem()) if not is_uri(self.location) else None
            where = [(partition[0], "=", partition[1])] if partition else None
            ds = self._datasets[partition] = self._dt.to_pyarrow_dataset(file_pruning_predicate=where, filesystem=fs)
        return ds

    def rows(
        self,
        key_col: str,
        keys: list[str],
        columns: list[str],
        partition: tuple[str, str] | None = None,
        dictionary: Sequence[str] = (),
    ) -> pa.Table:
        """The rows of ``keys``: through the row-group index when the files are laid out for it
        (``dictionary`` columns then stay dictionary-encoded), else a filtered dataset scan."""
        index = self._row_groups(key_col, partition)
        if index is not None:
            return index.read(key_col, keys, columns, list(dictionary))
        expr = pc.field(key_col) == keys[0] if len(keys) == 1 else pc.field(key_col).isin(keys)
        return self.dataset(partition).to_table(filter=expr, columns=columns)

    def _row_groups(self, key_col: str, partition: tuple[str, str] | None) -> RowGroupIndex | None:
        if self._dt is None or is_uri(self.location):
            return None
        cache_key = (key_col, partition)
        if cache_key not in self._indexes:
            where = [(partition[0], "=", partition[1])] if partition else None
            paths = [u.removeprefix("file://") for u in self._dt.file_uris(file_pruning_predicate=where)]
            self._indexes[cache_key] = RowGroupIndex.build([unquote(p) for p in paths], key_col) if paths else None
        return self._indexes[cache_key]

    def warm(self, key_col: str, partition_col: str | None = None) -> None:
        """Open now what a lookup by ``key_col`` would open on first use: the row-group index of
        every partition (the footers of every file; 4.2 s at 1M users x 100 candidates), or the
        dataset where there is no index."""
        if self._dt is None:
            return
        for value in self.values(partition_col) if partition_col else [None]:
            partition = (partition_col, value) if partition_col and value is not None else None
            if self._row_groups(key_col, partition) is None:
                self.dataset(partition)

    def id_list(self, id_col: str, idx_col: str) -> list[str | None]:
        """``id_col`` values at the positions of ``idx_col`` (the items table: item_id by item_idx),
        read once per version; empty when the table does not exist. A Python list: a lookup
        indexes it with a handful of ints, where ``pc.take`` and ``to_pylist`` cost ~5 us of fixed
        overhead."""
        if self._dt is None:
            return []
        if self._id_list is None:
            t = self.dataset().to_table(columns=[id_col, idx_col])
            idx = t[idx_col].to_numpy()
            size = int(idx.max()) + 1 if len(idx) else 0
            ids: list[str | None] = [None] * size
            for i, v in zip(idx.tolist(), t[id_col].to_pylist()):
                ids[i] = v
            self._id_list = ids
        return self._id_list

    def id_set(self, id_col: str, idx_col: str) -> frozenset[str]:
        """The ids of :meth:`id_list`, for membership: is an item in the catalogue."""
        if self._id_set is None:
            self._id_set = frozenset(i for i in self.id_list(id_col, idx_col) if i is not None)
        return self._id_set

    def popular(self, segment: str) -> list[Recommendation]:
        """The whole popularity list of ``segment``, read once per version."""
        found = self._popular.get(segment)
        if found is None:
            rows = (
                self.dataset()
                .to_table(filter=pc.field("segment") == segment, columns=["rank", "item_id", "item_idx", "score"])
                .to_pydict()
            )
            found = self._popular[segment] = sorted(
                (
                    Recommendation(i, x, float(s), r, "popular")
                    for r, i, x, s in zip(rows["rank"], rows["item_id"], rows["item_idx"], rows["score"])
                ),
                key=lambda r: r.rank,
            )
        return found


class Snapshot:
    """The lookup tables at one version each: every answer it gives comes from those versions.

    Obtained from :meth:`Recommendations.snapshot`; a service takes one per request, so a
    response can say exactly which versions it was served from.
    """

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

    def __init__(self, tables: Mapping[str, _TableVersion], exclusions: str | None = None) -> None:
        self._tables = dict(tables)
        self.exclusions = exclusions

    def versions(self) -> dict[str, int | None]:
        """The version of each lookup table this snapshot reads (None: not written yet)."""
        return {name: t.version for name, t in self._tables.items()}

    def warm(self) -> None:
        """Read everything the first lookups would otherwise read on their way: the catalogue's
        ids, the popularity lists and the row-group indexes of every strategy and method, so that
        no request pays for opening a version."""
        items = self._tables[T.ITEMS]
        items.id_set("item_id", "item_idx")
        self._tables[T.USER_CANDIDATES].warm("user_id", "strategy")
        self._tables[T.ITEM_NEIGHBORS].warm("item_id", "method")
        if self._tables[T.POPULAR_ITEMS].exists:
            for segment in self.segments():
                self._tables[T.POPULAR_ITEMS].popular(segment)
        if self.exclusions and self._tables[self.exclusions].exists:
            self._tables[self.exclusions].warm("user_id")

    def missing(self) -> list[str]:
        """Lookup tables that do not exist yet (the optional exclusions table is never missing)."""
        return [name for name, t in self._tables.items() if not t.exists and name != self.exclusions]

    def strategies(self) -> list[str]:
        """The candidate strategies user_candidates holds."""
        return self._tables[T.USER_CANDIDATES].values("strategy")

    def neighbor_methods(self) -> list[str]:
        """The neighbour methods item_neighbors holds."""
        return self._tables[T.ITEM_NEIGHBORS].values("method")

    def segments(self) -> list[str]:
        """The popularity segments popular_items holds."""
        return self._tables[T.POPULAR_ITEMS].values("segment")

    def check_list(self, table: str, value: str) -> None:
        """Raise when ``table`` has no list ``value`` (see UnknownListError)."""
        kind, error, hint = self._LISTS[table]
        t = self._tables[table]
        if not t.exists:
            return  # dataset() names the job to run
        available = t.values(kind)
        if value not in available:
            raise error(f"unknown {kind} {value!r}: {table} version {t.version} holds {available}; {hint}")

    def user_lists(
        self,
        user_ids: Iterable[str],
        k: int,
        strategy: str,
        cold_start_segment: str,
        exclude: Collection[str] = (),
    ) -> dict[str, UserList]:
        """Each user's top-k of ``strategy`` without the ``exclude`` ids; the popularity list of
        ``cold_start_segment`` for a user without a row.

        The table holds ``candidates.k`` rows per user, so an exclusion is made up from the rows
        below rank k: the list stays k long whenever the table has enough rows left.
        """
        ids = distinct_keys(user_ids, "user")
        if not ids:
            return {}
        self.check_list(T.USER_CANDIDATES, strategy)
        skip = {str(e) for e in exclude}
        per_user = self._excluded_by_user(ids)
        # take_k never looks past rank k + (ids it may skip): rows below are not decoded into Python
        deepest = k + len(skip) + max((len(m) for m in per_user.values()), default=0)
        table = self._tables[T.USER_CANDIDATES]
        explained = table.has_column("because_item_idx")
        cols = self._with_ids(
            table,
            "user_id",
            ids,
            [
                "user_id",
                "rank",
                "item_idx",
                "score",
                "source",
                *(("because_item_idx", "because_share") if explained else ()),
            ],
            ("strategy", strategy),
            ("item_id", "item_idx"),
            ("because_item_id", "because_item_idx") if explained else None,
            max_rank=deepest,
        )
        n = len(cols["user_id"])
        because = cols.get("because_item_id", [None] * n)
        shares = cols.get("because_share", [None] * n)
        found: dict[str, list[Recommendation]] = {}
        for uid, rank, iid, idx, score, source, why, share in zip(
            cols["user_id"],
            cols["rank"],
            cols["item_id"],
            cols["item_idx"],
            cols["score"],
            cols["source"],
            because,
            shares,
        ):
            found.setdefault(uid, []).append(
                Recommendation(iid, idx, float(score), rank, source, why, None if share is None else float(share))
            )
        out = {}
        for uid in ids:
            recs = found.get(uid)
            if recs:
                recs.sort(key=lambda r: r.rank)
                source = recs[0].source
            else:
                recs, source = self.popular_list(cold_start_segment), "popular"
            mine = per_user.get(uid)
            out[uid] = UserList(uid, *take_k(recs, k, skip | mine if mine else skip), source)
        return out

    def _excluded_by_user(self, ids: list[str]) -> dict[str, set[str]]:
        """user_id -> item ids the exclusions table holds for that user (e.g. bought since the
        candidates run); empty without the table."""
        table = self._tables.get(self.exclusions) if self.exclusions else None
        if table is None or not table.exists:
            return {}
        cols = table.rows("user_id", ids, ["user_id", "item_id"]).to_pydict()
        out: dict[str, set[str]] = {}
        for uid, iid in zip(cols["user_id"], cols["item_id"]):
            out.setdefault(uid, set()).add(iid)
        return out

    def _with_ids(
        self,
        table: _TableVersion,
        key_col: str,
        keys: list[str],
        columns: list[str],
        partition: tuple[str, str],
        id_of: tuple[str, str],
        also_id_of: tuple[str, str] | None = None,
        max_rank: int | None = None,
    ) -> dict[str, list[Any]]:
        """The rows as columns, with ``id_of[0]`` (item_id, neighbor_id) taken from the catalogue by
        ``id_of[1]`` rather than decoded from the table, and likewise ``also_id_of`` (because_item_id,
        whose index may be null) when given. ``max_rank``: only the rows ranked up to it.

        Decoding a row group's item-id strings cost more than all its numeric columns together,
        and the ``items`` table maps each item_idx to its id for good (ingest never renumbers an
        item). An index the catalogue version being served does not know (a candidates run newer
        than the items snapshot) reads the ids from the table instead.
        """
        pairs = [id_of, *([also_id_of] if also_id_of else [])]
        items = self._tables[T.ITEMS]

        def head(rows: pa.Table) -> pa.Table:
            if max_rank is None:
                return rows
            # one user's rows come in rank order (the jobs sort by key, then rank): a slice, where
            # a compute filter costs ~40 us whatever its size
            ranks = rows["rank"].to_numpy()
            if len(ranks) < 2 or bool(np.all(ranks[1:] >= ranks[:-1])):
                return rows.slice(0, int(np.searchsorted(ranks, max_rank, side="right")))
            return rows.filter(pc.less_equal(rows["rank"], max_rank))

        # the key stays dictionary-encoded: a row group holds a few dozen keys, each on ~100 rows
        dictionary = ["source", key_col]
        if items.exists:
            got = head(table.rows(key_col, keys, columns, partition, dictionary=dictionary))
            named: dict[str, list[Any]] = {}
            if len(keys) == 1 and key_col in columns:  # every row has the one key: no need to decode it
                named[key_col] = [keys[0]] * got.num_rows
                got = got.drop_columns([key_col])
            id_list = items.id_list("item_id", "item_idx")
            for id_col, idx_col in pairs:
                idx = got[idx_col]
                at = _as_list(idx)
                known = [i for i in at if i is not None]
                if known and (max(known) >= len(id_list) or min(known) < 0):
                    break
                found = [None if i is None else id_list[i] for i in at]
                if found.count(None) != idx.null_count:  # an index the catalogue has no id for
                    break
                named[id_col] = found
            else:
                return {**columns_as_lists(got), **named}
        extra = [c for c, _ in pairs]
        return head(table.rows(key_col, keys, [*columns, *extra], partition, dictionary=dictionary)).to_pydict()

    def popular_list(self, segment: str) -> list[Recommendation]:
        """The whole popularity list of ``segment``."""
        self.check_list(T.POPULAR_ITEMS, segment)
        t = self._tables[T.POPULAR_ITEMS]
        t.dataset()  # names the job to run when the table is missing
        return t.popular(segment)

    def neighbors(self, item_ids: Iterable[str], k: int, method: str) -> dict[str, list[Neighbor]]:
        """The k nearest neighbours of each item; UnknownItemError for an id not in the catalogue."""
        ids = distinct_keys(item_ids, "item")
        if not ids:
            return {}
        self.check_list(T.ITEM_NEIGHBORS, method)
        cols = self._with_ids(
            self._tables[T.ITEM_NEIGHBORS],
            "item_id",
            ids,
            ["item_id", "rank", "neighbor_idx", "similarity"],
            ("method", method),
            ("neighbor_id", "neighbor_idx"),
        )
        found: dict[str, list[Neighbor]] = {}
        for iid, rank, nid, nidx, sim in zip(
            cols["item_id"], cols["rank"], cols["neighbor_id"], cols["neighbor_idx"], cols["similarity"]
        ):
            if rank <= k:
                found.setdefault(iid, []).append(Neighbor(nid, nidx, float(sim), rank, method))
        missing = [i for i in ids if i not in found]
        if missing:
            # the catalogue's ids are in memory already (the lookups name items by them), and the
            # items table is sorted by item_idx, so a read by item_id would scan it
            items = self._tables[T.ITEMS]
            items.dataset()  # names the job to run when there is no catalogue yet
            known = items.id_set("item_id", "item_idx")
            unknown = [i for i in missing if i not in known]
            if unknown:
                raise UnknownItemError(
                    f"unknown item id {unknown[0]!r}: it is not in the items table "
                    f"({items.location}, version {items.version})"
                )
        return {i: sorted(found.get(i, []), key=lambda n: n.rank) for i in ids}


#: The tables lookups read.
LOOKUP_TABLES = (T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS)


class Lookups:
    """What every reader offers, over whichever snapshot it serves: the Delta tables
    (:class:`Recommendations`) or an exported Redis version (``RedisRecommendations``)."""

    strategy: str
    neighbor_method: str
    cold_start_segment: str
    refresh_seconds: float
    _checked: float
    _snapshot: Any

    #: Whether :meth:`refresh` prepares a new snapshot (:meth:`warm`) before switching to it.
    warm_on_refresh: bool = False

    def refresh(self) -> bool:
        raise NotImplementedError

    def warm(self) -> None:
        """Prepare the snapshot being served so that its first lookups cost what later ones do
        (a no-op where there is nothing to open)."""
        warm = getattr(self._snapshot, "warm", None)
        if warm is not None:
            warm()

    def snapshot(self) -> Any:
        """What is served now; later commits or exports never change what it answers."""
        if time.monotonic() - self._checked >= self.refresh_seconds:
            self.refresh()
        return self._snapshot

    def versions(self) -> dict[str, int | None]:
        """The table versions lookups are served from."""
        return self._snapshot.versions()

    # -- lists -----------------------------------------------------------------------------------

    def strategies(self) -> list[str]:
        """The candidate strategies user_candidates holds at the version served."""
        return self.snapshot().strategies()

    def neighbor_methods(self) -> list[str]:
        """The neighbour methods item_neighbors holds at the version served."""
        return self.snapshot().neighbor_methods()

    def segments(self) -> list[str]:
        """The popularity segments popular_items holds at the version served."""
        return self.snapshot().segments()

    # -- users -----------------------------------------------------------------------------------

    def for_user(self, user_id: str, k: int = 10, exclude: Collection[str] = ()) -> list[Recommendation]:
        """The user's top-k candidates; the popularity list for users without any."""
        return self.for_users([user_id], k, exclude)[str(user_id)]

    def for_users(
        self, user_ids: Iterable[str], k: int = 10, exclude: Collection[str] = ()
    ) -> dict[str, list[Recommendation]]:
        """Top-k candidates of several users in one read, without the ``exclude`` item ids."""
        lists = self.snapshot().user_lists(user_ids, k, self.strategy, self.cold_start_segment, exclude)
        return {uid: ul.items for uid, ul in lists.items()}

    def popular(self, k: int = 10, segment: str | None = None) -> list[Recommendation]:
        """The popularity list (``cold_start_segment`` by default), as unknown users get it."""
        return self.snapshot().popular_list(segment or self.cold_start_segment)[:k]

    # -- items -----------------------------------------------------------------------------------

    def similar_items(self, item_id: str, k: int = 10, method: str | None = None) -> list[Neighbor]:
        """The item's k nearest neighbours; UnknownItemError for an id not in the catalogue."""
        return self.similar_items_batch([item_id], k, method)[str(item_id)]

    def similar_items_batch(
        self, item_ids: Iterable[str], k: int = 10, method: str | None = None
    ) -> dict[str, list[Neighbor]]:
        """Neighbours of several items in one read."""
        return self.snapshot().neighbors(item_ids, k, method or self.neighbor_method)


class Recommendations(Lookups):
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
        exclusions_table: str | None = None,
    ) -> None:
        versions = dict(versions or {})
        unknown = set(versions) - set(LOOKUP_TABLES)
        if unknown:
            raise StorageError(
                f"cannot pin {sorted(unknown)}: lookups read user_candidates, item_neighbors, popular_items and items"
            )
        self.root = root
        self.strategy = strategy
        self.neighbor_method = neighbor_method
        self.cold_start_segment = cold_start_segment
        self.refresh_seconds = refresh_seconds
        self.pinned = versions
        self._lock = threading.Lock()
        # one handle per unpinned table that only the refresher moves, to learn of new commits
        # cheaply (update_incremental reads the new log entries alone)
        self._probes: dict[str, DeltaTable] = {}
        if exclusions_table in LOOKUP_TABLES or exclusions_table in T.CATALOG:
            raise StorageError(
                f"serve.exclusions_table {exclusions_table!r} is a pipeline table; name a table of its own"
            )
        self.exclusions_table = exclusions_table or None
        self._names = (*LOOKUP_TABLES, *((self.exclusions_table,) if self.exclusions_table else ()))
        # the published pointer, when the warehouse has one (the gate's): the versions to serve
        self._published: tuple[int | None, dict[str, int]] = (None, {})
        published = self._published_versions()
        self._snapshot = Snapshot(
            {name: _TableVersion.open(root, name, versions.get(name, published.get(name))) for name in self._names},
            self.exclusions_table,
        )
        self._checked = time.monotonic()

    @property
    def reads_local_files(self) -> bool:
        """Whether the tables are on a local filesystem (then a lookup is a page-cache read)."""
        return not is_uri(self.root)

    @classmethod
    def open(cls, root: str, **kwargs: Any) -> Recommendations:
        """Open the tables under ``root`` (see :class:`Recommendations` for the options)."""
        return cls(root, **kwargs)

    # -- versions --------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The tables as served now; later commits never change what it answers."""
        return super().snapshot()

    def refresh(self) -> bool:
        """Switch to the newest table versions now, all in one step; True when any changed.

        Once the warehouse has a ``published`` pointer, the newest versions are the ones it names
        (a publish or a rollback moves them); tables it does not name follow their latest commit.
        Pinned tables never move. Readers holding the previous snapshot finish on it.
        """
        with self._lock:
            current = self._snapshot._tables
            moved: dict[str, _TableVersion] = {}
            published = self._published_versions()
            for name in self._names:
                if name in self.pinned:
                    continue
                latest = published[name] if name in published else self._latest_version(name)
                if latest is not None and latest != current[name].version:
                    moved[name] = _TableVersion.open(self.root, name, latest)
            if moved:
                fresh = Snapshot({**current, **moved}, self.exclusions_table)
                if self.warm_on_refresh:  # before the switch: no request waits on the new version's footers
                    fresh.warm()
                self._snapshot = fresh
            self._checked = time.monotonic()
        if moved:
            log.info("lookup tables now at %s", self.versions())
        return bool(moved)

    def _published_versions(self) -> dict[str, int]:
        """The versions the publication in force names (empty before the first); re-read only
        when the ``published`` table has a new commit."""
        version = self._latest_version(T.PUBLISHED)
        if version is not None and version != self._published[0]:
            publication = current_publication(self.root)
            self._published = (version, publication.versions if publication else {})
        return self._published[1]

    def _latest_version(self, name: str) -> int | None:
        probe = self._probes.get(name)
        if probe is None:
            try:
                probe = self._probes[name] = DeltaTable(T.table_location(self.root, name))
            except TableNotFoundError:
                return None
        else:
            probe.update_incremental()
        return probe.version()


def distinct_keys(ids: Iterable[str], kind: str) -> list[str]:
    """Distinct lookup keys, in order; a blank one is an error rather than an unknown id."""
    keys = list(dict.fromkeys(str(i) for i in ids))
    blank = [k for k in keys if not k.strip()]
    if blank:
        raise RecsysError(
            f"{kind} id {blank[0]!r} is blank: ids are never empty (ingest rejects them), so this "
            "is a caller's bug, not an unknown id"
        )
    return keys
