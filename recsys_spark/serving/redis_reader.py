"""Lookups from an exported Redis version, answering as the Delta reader does.

``RedisRecommendations`` follows the pointer key the export moves (``{prefix}:current``) and
answers from the tag it names: a user's list in one GET (a batch in one MGET), the popularity list
for unknown users, an error for an item id not in the catalogue. Its snapshots have the
interface of :class:`~recsys_spark.serving.lookup.Snapshot`, so ``recsys-spark serve --backend
redis`` runs the same HTTP app over it.

The pointer is re-read every ``refresh_seconds``; the export deletes a replaced version
``export.grace_seconds`` after the switch, so a reader that refreshes more often than that never
finds its version gone. If it does (a reader paused for longer), the request fails with a
StorageError rather than answering from a half-deleted version.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from recsys_spark import tables as T
from recsys_spark.errors import StorageError
from recsys_spark.serving.lookup import (
    Lookups,
    Neighbor,
    Recommendation,
    UnknownItemError,
    UnknownListError,
    UnknownMethodError,
    UnknownSegmentError,
    UnknownStrategyError,
    UserList,
    distinct_keys,
    take_k,
)
from recsys_spark.serving.redis_codec import RedisKeys, decode_list

log = logging.getLogger(__name__)

__all__ = ["RedisRecommendations", "RedisSnapshot"]


class RedisSnapshot:
    """One exported version (tag) of the lists, read from Redis."""

    def __init__(self, client: Any, keys: RedisKeys, tag: str | None, meta: dict[str, Any] | None) -> None:
        self._client, self._k, self.tag, self._meta = client, keys, tag, meta or {}
        self._popular: dict[str, list[Recommendation]] = {}

    def versions(self) -> dict[str, int | None]:
        """The Delta versions the exported tag was written from."""
        v = self._meta.get("versions", {})
        return {t: v.get(t) for t in (T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS)}

    def missing(self) -> list[str]:
        if self.tag is None:
            return [T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS]
        return [T.ITEM_NEIGHBORS] if not self._meta.get("methods") else []

    def strategies(self) -> list[str]:
        return list(self._meta.get("strategies", []))

    def neighbor_methods(self) -> list[str]:
        return list(self._meta.get("methods", []))

    def segments(self) -> list[str]:
        return list(self._meta.get("segments", []))

    def _require(self) -> str:
        if self.tag is None:
            raise StorageError(f"nothing exported under {self._k.current}: run `recsys-spark export redis` first")
        return self.tag

    def check_list(self, table: str, value: str) -> None:
        kinds: dict[str, tuple[str, list[str], type[UnknownListError]]] = {
            T.USER_CANDIDATES: ("strategy", self.strategies(), UnknownStrategyError),
            T.ITEM_NEIGHBORS: ("method", self.neighbor_methods(), UnknownMethodError),
            T.POPULAR_ITEMS: ("segment", self.segments(), UnknownSegmentError),
        }
        kind, available, error = kinds[table]
        if value not in available:
            raise error(f"unknown {kind} {value!r}: redis version {self.tag} holds {available}")

    def _values(self, names: list[str]) -> list[bytes | None]:
        tag = self._require()
        *values, meta = self._client.mget([*names, self._k.meta(tag)])
        if meta is None:
            raise StorageError(
                f"redis version {tag} was deleted while it was being read (the reader refreshed too late)"
            )
        return values

    def popular_list(self, segment: str) -> list[Recommendation]:
        self.check_list(T.POPULAR_ITEMS, segment)
        found = self._popular.get(segment)
        if found is None:
            (value,) = self._values([self._k.popular(self._require(), segment)])
            if value is None:
                raise StorageError(f"redis version {self.tag} has no popularity list {segment!r}")
            got = decode_list(value)
            found = self._popular[segment] = [
                Recommendation(i, x, s, r + 1, "popular")
                for r, (i, x, s) in enumerate(zip(got.item_id, got.item_idx, got.score))
            ]
        return found

    def user_lists(
        self,
        user_ids: Iterable[str],
        k: int,
        strategy: str,
        cold_start_segment: str,
        exclude: Collection[str] = (),
    ) -> dict[str, UserList]:
        ids = distinct_keys(user_ids, "user")
        if not ids:
            return {}
        self.check_list(T.USER_CANDIDATES, strategy)
        tag = self._require()
        values = self._values([self._k.user(tag, strategy, u) for u in ids])
        skip = {str(e) for e in exclude}
        out = {}
        for uid, value in zip(ids, values):
            if value is not None:
                got = decode_list(value)
                n = len(got.item_idx)
                because = got.because_item_id or [None] * n
                shares = got.because_share or [None] * n
                recs = [
                    Recommendation(i, x, s, r + 1, got.source, b, sh)
                    for r, (i, x, s, b, sh) in enumerate(zip(got.item_id, got.item_idx, got.score, because, shares))
                ]
                source = got.source
            else:
                recs, source = self.popular_list(cold_start_segment), "popular"
            out[uid] = UserList(uid, *take_k(recs, k, skip), source)
        return out

    def neighbors(self, item_ids: Iterable[str], k: int, method: str) -> dict[str, list[Neighbor]]:
        ids = distinct_keys(item_ids, "item")
        if not ids:
            return {}
        self.check_list(T.ITEM_NEIGHBORS, method)
        tag = self._require()
        values = self._values([self._k.item(tag, method, i) for i in ids])
        out: dict[str, list[Neighbor]] = {}
        missing = []
        for iid, value in zip(ids, values):
            if value is None:
                missing.append(iid)
                out[iid] = []
                continue
            got = decode_list(value)
            out[iid] = [
                Neighbor(n, x, s, r + 1, method)
                for r, (n, x, s) in enumerate(zip(got.item_id, got.item_idx, got.score))
                if r < k
            ]
        if missing:
            known = self._client.smismember(self._k.items(tag), missing)
            unknown = [i for i, ok in zip(missing, known) if not ok]
            if unknown:
                raise UnknownItemError(
                    f"unknown item id {unknown[0]!r}: it is not in the catalogue of redis version {tag}"
                )
        return out


class RedisRecommendations(Lookups):
    """The lookups of :class:`~recsys_spark.serving.lookup.Recommendations`, from Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "recsys",
        strategy: str = "als",
        neighbor_method: str = "cosine",
        cold_start_segment: str = "recent",
        refresh_seconds: float = 1.0,
        socket_timeout_s: float = 10.0,
    ) -> None:
        import redis

        self.root = f"{url} ({prefix})"
        self.strategy, self.neighbor_method, self.cold_start_segment = strategy, neighbor_method, cold_start_segment
        self.refresh_seconds = refresh_seconds
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s)
        self._k = RedisKeys(prefix)
        self._lock = threading.Lock()
        self._snapshot = RedisSnapshot(self._client, self._k, None, None)
        self._checked = 0.0
        self.refresh()

    def refresh(self) -> bool:
        """Follow the pointer now; True when it moved."""
        with self._lock:
            raw = self._client.get(self._k.current)
            tag = raw.decode() if raw is not None else None
            self._checked = time.monotonic()
            if tag == self._snapshot.tag:
                return False
            meta_raw = self._client.get(self._k.meta(tag)) if tag else None
            meta = json.loads(meta_raw) if meta_raw else None
            self._snapshot = RedisSnapshot(self._client, self._k, tag if meta else None, meta)
        log.info("redis lookups now at %s", tag)
        return True

    def snapshot(self) -> RedisSnapshot:
        return super().snapshot()
