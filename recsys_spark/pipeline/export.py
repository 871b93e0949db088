"""``recsys-spark export redis``: the served lists bulk-loaded into Redis, version by version.

The export writes a whole version under a tag of its own, named after the source table versions,
and only then moves the one pointer key readers follow (``{prefix}:current``, a single SET, so
readers switch atomically). The keys of every other tag are deleted after the switch. Hence:

* a reader never sees a half-loaded version: until the pointer moves it reads the previous one;
* a killed export leaves the served version intact, and its partial keys under the new tag are
  overwritten by the re-run, which completes the tag, switches and cleans up;
* re-running with unchanged tables rewrites the same tag in place and switches nothing.

Lists are grouped and encoded on the executors, and each task writes its partition with
pipelined SETs (``export.batch_size`` commands a round trip) over its own connection. The driver
writes only the popularity lists, the meta record and the pointer. Key layout and value encoding:
``recsys_spark/serving/redis_codec.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from recsys_spark import tables as T
from recsys_spark.config.schema import Config, ExportConfig
from recsys_spark.errors import ConfigError, StorageError
from recsys_spark.serving.redis_codec import FORMAT, RedisKeys, encode_list
from recsys_spark.storage.published import SERVED_TABLES, current_publication
from recsys_spark.storage.store import TableStore

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.pipeline.runs import RunContext

log = logging.getLogger(__name__)

__all__ = ["ExportReport", "connect", "run_export_redis"]


@dataclass(frozen=True)
class ExportReport:
    """What one export wrote and switched to."""

    tag: str
    """The version's tag (``uc<v>-in<v>-pi<v>-it<v>``)."""
    previous: str | None
    """The tag served before, None on the first export."""
    users: int
    """User lists written (one per user and strategy)."""
    items: int
    """Neighbour lists written (one per item and method)."""
    catalogue: int
    """Item ids in the catalogue set."""
    deleted: int
    """Keys of other tags deleted after the switch."""
    seconds: float
    """Wall time of the whole export."""

    def render(self) -> str:
        was = f" (was {self.previous})" if self.previous and self.previous != self.tag else ""
        return (
            f"redis: serving {self.tag}{was}: {self.users:,} user lists, {self.items:,} neighbour lists, "
            f"{self.catalogue:,} catalogue ids; {self.deleted:,} keys of other versions deleted; {self.seconds:.1f}s"
        )


def connect(ec: ExportConfig) -> Any:
    """A client of ``export.redis_url``, checked with a PING; ConfigError naming the option otherwise."""
    try:
        import redis
    except ImportError:
        raise ConfigError("export redis needs the redis package: pip install 'recsys-spark[export]'") from None
    try:
        client = redis.Redis.from_url(ec.redis_url, socket_timeout=ec.socket_timeout_s)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(f"export.redis_url {ec.redis_url!r}: cannot reach Redis: {exc}") from None
    return client


def _tag(versions: dict[str, int | None]) -> str:
    short = {T.USER_CANDIDATES: "uc", T.ITEM_NEIGHBORS: "in", T.POPULAR_ITEMS: "pi", T.ITEMS: "it"}
    return "-".join(f"{short[t]}{'' if v is None else v}" for t, v in versions.items())


def _list_writer(ec: ExportConfig, tag: str, kind: str) -> Any:
    """The mapInArrow function of one task: encode each grouped list and SET it, pipelined."""
    url, prefix, batch_size, timeout = ec.redis_url, ec.redis_prefix, ec.batch_size, ec.socket_timeout_s

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import redis

        k = RedisKeys(prefix)
        client = redis.Redis.from_url(url, socket_timeout=timeout)
        pipe = client.pipeline(transaction=False)
        pending = 0
        written: dict[str, int] = {}
        try:
            for batch in batches:
                lists = batch.column("l")
                offsets = lists.offsets.to_numpy()
                flat = lists.flatten()
                idx = flat.field("item_idx").to_numpy(zero_copy_only=False)
                score = pc.cast(flat.field("score"), pa.float64()).to_numpy(zero_copy_only=False)
                ids = flat.field("item_id").to_pylist()
                sources = flat.field("source").to_pylist() if kind == "u" else None
                explained = flat.type.get_field_index("because_item_id") >= 0
                because = flat.field("because_item_id").to_pylist() if explained else None
                shares = flat.field("because_share").to_pylist() if explained else None
                variants = batch.column("variant").to_pylist()
                for row, key_id in enumerate(batch.column("key").to_pylist()):
                    a, b = offsets[row], offsets[row + 1]
                    source = sources[a] if sources and b > a else ""
                    value = encode_list(
                        source or "",
                        idx[a:b].tolist(),
                        score[a:b].tolist(),
                        ids[a:b],
                        because[a:b] if because is not None else None,
                        shares[a:b] if shares is not None else None,
                    )
                    name = k.user(tag, variants[row], key_id) if kind == "u" else k.item(tag, variants[row], key_id)
                    pipe.set(name, value)
                    written[variants[row]] = written.get(variants[row], 0) + 1
                    pending += 1
                    if pending >= batch_size:
                        pipe.execute()
                        pending = 0
            if pending:
                pipe.execute()
        finally:
            client.close()
        yield pa.RecordBatch.from_pydict({"variant": list(written), "written": list(written.values())})

    return write


def _catalogue_writer(ec: ExportConfig, tag: str) -> Any:
    url, prefix, batch_size, timeout = ec.redis_url, ec.redis_prefix, ec.batch_size, ec.socket_timeout_s

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout)
        name, written = RedisKeys(prefix).items(tag), 0
        try:
            for batch in batches:
                ids = batch.column("item_id").to_pylist()
                for start in range(0, len(ids), batch_size):
                    chunk = ids[start : start + batch_size]
                    if chunk:
                        client.sadd(name, *chunk)
                        written += len(chunk)
        finally:
            client.close()
        yield pa.RecordBatch.from_pydict({"variant": [""], "written": [written]})

    return write


def _grouped(df: DataFrame, key: str, variant: str, fields: list[str]) -> DataFrame:
    """One row per (variant, key) with its rows as a rank-ordered array of structs."""
    from pyspark.sql import functions as F

    return df.groupBy(F.col(variant).alias("variant"), F.col(key).alias("key")).agg(
        F.array_sort(F.collect_list(F.struct("rank", *fields))).alias("l")
    )


def _sum_written(df: DataFrame, fn: Any) -> dict[str, int]:
    """Run a writer over ``df``; what it wrote, by strategy or method ("" for the catalogue)."""
    from pyspark.sql import functions as F

    rows = df.mapInArrow(fn, "variant STRING, written LONG").groupBy("variant").agg(F.sum("written")).collect()
    return {r[0]: int(r[1]) for r in rows}


def run_export_redis(spark: SparkSession, cfg: Config, ctx: RunContext) -> ExportReport:
    """Export the served tables' versions as of now (those the ``published`` pointer names, once
    there is one) under a new tag, switch the pointer, clean up."""
    started = time.perf_counter()
    ec = cfg.export
    client = connect(ec)
    k = RedisKeys(ec.redis_prefix)
    store = TableStore(spark, cfg.storage)
    # what the Delta readers serve: the publication in force (the gate's), else the latest versions
    published = current_publication(cfg.storage.root)
    pointed = published.versions if published else {}
    versions = {t: pointed.get(t, store.version(t)) for t in SERVED_TABLES}
    for table, job in ((T.USER_CANDIDATES, "candidates"), (T.POPULAR_ITEMS, "candidates"), (T.ITEMS, "ingest")):
        if versions[table] is None:
            raise StorageError(
                f"export redis: table {table!r} does not exist under {cfg.storage.root}: run `{job}` first"
            )
    tag = _tag(versions)
    previous = client.get(k.current)
    previous = previous.decode() if previous is not None else None
    # every read pinned to the versions the tag names: a commit landing meanwhile is the next export's
    uc = store.read(T.USER_CANDIDATES, version=versions[T.USER_CANDIDATES])
    if ec.strategies:
        uc = uc.where(uc.strategy.isin(ec.strategies))
    # the strategies and methods are those written: no second scan of the tables to list them
    fields = ["item_idx", "score", "item_id", "source"]
    if "because_item_id" in uc.columns:  # tables written before explanations have none
        fields += ["because_item_id", "because_share"]
    by_strategy = _sum_written(_grouped(uc, "user_id", "strategy", fields), _list_writer(ec, tag, "u"))
    by_method: dict[str, int] = {}
    if versions[T.ITEM_NEIGHBORS] is not None:
        nb = store.read(T.ITEM_NEIGHBORS, version=versions[T.ITEM_NEIGHBORS])
        if ec.methods:
            nb = nb.where(nb.method.isin(ec.methods))
        nb = nb.selectExpr(
            "item_id AS key_item",
            "method",
            "rank",
            "neighbor_idx AS item_idx",
            "similarity AS score",
            "neighbor_id AS item_id",
        )
        by_method = _sum_written(
            _grouped(nb, "key_item", "method", ["item_idx", "score", "item_id"]), _list_writer(ec, tag, "i")
        )
    catalogue = sum(
        _sum_written(
            store.read(T.ITEMS, version=versions[T.ITEMS]).select("item_id"), _catalogue_writer(ec, tag)
        ).values()
    )
    users, items = sum(by_strategy.values()), sum(by_method.values())
    popular = store.read(T.POPULAR_ITEMS, version=versions[T.POPULAR_ITEMS]).collect()
    segments = sorted({r["segment"] for r in popular})
    pipe = client.pipeline(transaction=False)
    for seg in segments:
        rows = sorted((r for r in popular if r["segment"] == seg), key=lambda r: r["rank"])
        pipe.set(
            k.popular(tag, seg),
            encode_list(
                "popular",
                [r["item_idx"] for r in rows],
                [float(r["score"]) for r in rows],
                [r["item_id"] for r in rows],
            ),
        )
    meta = {
        "format": FORMAT,
        "tag": tag,
        "versions": versions,
        "strategies": sorted(by_strategy),
        "methods": sorted(by_method),
        "segments": segments,
        "users": users,
        "items": items,
        "catalogue": catalogue,
        "run_id": ctx.run_id,
        "exported_at": datetime.now(timezone.utc).isoformat(),
    }
    pipe.set(k.meta(tag), json.dumps(meta, sort_keys=True))
    pipe.execute()
    client.set(k.current, tag)  # the switch: one SET
    log.info("redis %s: serving %s (was %s)", ec.redis_url, tag, previous)
    if previous not in (None, tag):
        time.sleep(ec.grace_seconds)  # readers still on the previous version finish on it
    deleted = _delete_other_tags(client, k, tag, ec.batch_size)
    report = ExportReport(tag, previous, users, items, catalogue, deleted, time.perf_counter() - started)
    log.info("%s", report.render())
    return report


def _delete_other_tags(client: Any, k: RedisKeys, tag: str, batch_size: int) -> int:
    """UNLINK every key of the prefix but the pointer and ``tag``'s: the previous version, and the
    partial keys of any killed export."""
    keep = f"{k.prefix}:{tag}:".encode()
    doomed: list[bytes] = []
    deleted = 0
    for name in client.scan_iter(match=f"{k.prefix}:*", count=10_000):
        if name.startswith(keep) or name == k.current.encode():
            continue
        doomed.append(name)
        if len(doomed) >= batch_size:
            deleted += client.unlink(*doomed)
            doomed = []
    if doomed:
        deleted += client.unlink(*doomed)
    return deleted
