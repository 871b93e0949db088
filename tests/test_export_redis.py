"""``recsys-spark export redis`` against a real redis-server on 127.0.0.1, and the Redis reader
held to the Delta reader's answers."""

from __future__ import annotations

import json
import struct
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config
from recsys_spark.pipeline import export as export_module
from recsys_spark.pipeline.export import run_export_redis
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.serving.app import Service, ServiceSettings, bind, create_app
from recsys_spark.serving.lookup import Recommendations, UnknownItemError, UnknownStrategyError
from recsys_spark.serving.redis_codec import RedisKeys, decode_list, encode_list
from recsys_spark.serving.redis_reader import RedisRecommendations
from recsys_spark.storage.published import PUBLISHED_SCHEMA, SERVED_TABLES
from recsys_spark.storage.store import CommitInfo, TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.redis

COMMIT = CommitInfo("test", "run-export", "cfg")
USERS = 5


def _write_candidates(store: TableStore, spark: SparkSession, generation: int) -> None:
    rows = [
        (f"u{u}", u, r, f"i{(u + r) % 9}", (u + r) % 9, float(generation * 100 + 10 - r) / 7, s, "v", s)
        for s in ("als", "blend")
        for u in range(USERS)
        for r in range(1, 7)
    ]
    store.write(
        spark.createDataFrame(
            rows,
            "user_id STRING, user_idx INT, rank INT, item_id STRING, item_idx INT, "
            "score FLOAT, source STRING, model_version STRING, strategy STRING",
        ),
        T.USER_CANDIDATES,
        "overwrite",
        COMMIT,
        ["strategy"],
    )


def _warehouse(spark: SparkSession, cfg: Config) -> TableStore:
    store = TableStore(spark, cfg.storage)
    _write_candidates(store, spark, 0)
    store.write(
        spark.createDataFrame(
            [
                (f"i{i}", i, f"i{n}", n, 1.0 / (1 + abs(i - n)), rank, 2, m, "v")
                for m in ("cosine", "als")
                for i in range(6)  # items 6..8 have no neighbours
                for rank, n in enumerate([x for x in range(9) if x != i][:4], start=1)
            ],
            "item_id STRING, item_idx INT, neighbor_id STRING, neighbor_idx INT, "
            "similarity DOUBLE, rank INT, cooccurrence LONG, method STRING, model_version STRING",
        ),
        T.ITEM_NEIGHBORS,
        "overwrite",
        COMMIT,
        ["method"],
    )
    store.write(
        spark.createDataFrame(
            [(s, r, r + 1, f"i{r + 1}", 30.0 - r, 9, "p") for s in ("overall", "recent") for r in range(1, 5)],
            "segment STRING, rank INT, item_idx INT, item_id STRING, score DOUBLE, users LONG, model_version STRING",
        ),
        T.POPULAR_ITEMS,
        "overwrite",
        COMMIT,
    )
    store.write(
        spark.createDataFrame([(f"i{i}", i) for i in range(9)], "item_id STRING, item_idx INT"),
        T.ITEMS,
        "overwrite",
        COMMIT,
    )
    return store


@pytest.fixture
def setup(
    spark: SparkSession, cfg: Config, redis_url: str, request: pytest.FixtureRequest
) -> tuple[Config, TableStore]:
    prefix = f"t{abs(hash(request.node.name)) % 10**8}"
    c = cfg.with_overrides(
        [
            f"export.redis_url={redis_url}",
            f"export.redis_prefix={prefix}",
            "export.grace_seconds=0",
            "export.batch_size=7",
        ]
    )
    return c, _warehouse(spark, c)


def _export(spark: SparkSession, c: Config) -> Any:
    return run_export_redis(spark, c, RunContext.new("export-redis", c))


def _reader(c: Config, **kwargs: Any) -> RedisRecommendations:
    return RedisRecommendations(c.export.redis_url, prefix=c.export.redis_prefix, refresh_seconds=0.0, **kwargs)


def test_a_list_survives_its_encoding() -> None:
    ids = ["i00000001", "ü-ñ", "", "x" * 300]
    got = decode_list(encode_list("blend", [1, 2, 3, 2**31 - 1], [0.5, -1e-300, 3.25, 1e300], ids))
    assert (got.source, got.item_idx, got.score, got.item_id) == (
        "blend",
        [1, 2, 3, 2**31 - 1],
        [0.5, -1e-300, 3.25, 1e300],
        ids,
    )
    assert decode_list(encode_list("", [], [], [])).item_id == []
    # the size the codec's docstring quotes: 100 candidates with 9-character ids
    ids100 = [f"i{i:08d}" for i in range(100)]
    assert len(encode_list("als", list(range(100)), [0.1] * 100, ids100)) == 2308
    assert len(encode_list("als", list(range(100)), [0.1] * 100, ids100, ids100, [0.5] * 100)) == 3808


def test_explanations_survive_their_encoding_and_old_values_still_decode() -> None:
    got = decode_list(
        encode_list("blend", [4, 5, 6], [3.0, 2.0, 1.0], ["a", "b", "c"], ["x", None, "ü"], [0.25, None, 1.5])
    )
    assert (got.because_item_id, got.because_share) == (["x", None, "ü"], [0.25, None, 1.5])
    assert decode_list(encode_list("als", [1], [1.0], ["a"])).because_item_id is None
    # a format-1 value, as exports before explanations wrote it: no flags byte
    old = (
        b"\x01\x01\x00\x03als" + (7).to_bytes(4, "little") + struct.pack("<d", 0.5) + (2).to_bytes(2, "little") + b"i7"
    )
    got = decode_list(old)
    assert (got.source, got.item_idx, got.score, got.item_id, got.because_item_id) == ("als", [7], [0.5], ["i7"], None)


def test_the_redis_reader_answers_exactly_as_the_delta_reader(spark: SparkSession, setup: Any) -> None:
    c, _ = setup
    report = _export(spark, c)
    assert (report.users, report.items, report.catalogue, report.previous) == (2 * USERS, 12, 9, None)
    for strategy in ("als", "blend"):
        delta = Recommendations.open(c.storage.root, strategy=strategy)
        red = _reader(c, strategy=strategy)
        for user in [f"u{u}" for u in range(USERS)] + ["nobody"]:
            for k, exclude in ((3, ()), (6, ()), (4, ("i1", "i3"))):
                assert red.for_user(user, k, exclude) == delta.for_user(user, k, exclude), (strategy, user, k)
    for method in ("cosine", "als"):
        delta = Recommendations.open(c.storage.root, neighbor_method=method)
        red = _reader(c, neighbor_method=method)
        for item in [f"i{i}" for i in range(9)]:
            assert red.similar_items(item, 3) == delta.similar_items(item, 3), (method, item)
    red = _reader(c)
    assert red.popular(3, "overall") == Recommendations.open(c.storage.root).popular(3, "overall")
    assert red.versions() == Recommendations.open(c.storage.root).versions()
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        red.similar_items("nope")
    with pytest.raises(
        UnknownStrategyError, match=r"unknown strategy 'ease': redis version .* holds \['als', 'blend'\]"
    ):
        _reader(c, strategy="ease").for_user("u1")


def test_a_new_version_switches_the_pointer_and_deletes_the_old_keys(spark: SparkSession, setup: Any) -> None:
    c, store = setup
    first = _export(spark, c)
    client = redis.Redis.from_url(c.export.redis_url)
    k = RedisKeys(c.export.redis_prefix)
    again = _export(spark, c)  # nothing changed: the same tag rewritten in place, nothing deleted
    assert (again.tag, again.previous, again.deleted) == (first.tag, first.tag, 0)
    reader = _reader(c)
    before = reader.for_user("u1", 2)
    _write_candidates(store, spark, 1)
    second = _export(spark, c)
    assert second.tag != first.tag and second.previous == first.tag
    assert client.get(k.current).decode() == second.tag
    assert not list(client.scan_iter(match=k.of_tag(first.tag))), "the replaced version's keys were kept"
    assert second.deleted == len(list(client.scan_iter(match=k.of_tag(second.tag))))  # same key set, new tag
    reader.refresh()
    after = reader.for_user("u1", 2)
    assert after != before and after == Recommendations.open(c.storage.root).for_user("u1", 2)
    meta = json.loads(client.get(k.meta(second.tag)))
    assert meta["versions"][T.USER_CANDIDATES] == store.version(T.USER_CANDIDATES)
    assert meta["strategies"] == ["als", "blend"] and meta["segments"] == ["overall", "recent"]


def test_the_export_ships_the_published_versions_as_the_delta_reader_serves_them(
    spark: SparkSession, setup: Any
) -> None:
    c, store = setup
    published = {t: store.version(t) for t in SERVED_TABLES}
    row = (1, "r", "publish", json.dumps(published), "{}", "test", datetime.now(timezone.utc))
    store.write(spark.createDataFrame([row], PUBLISHED_SCHEMA), T.PUBLISHED, "append", COMMIT)
    _write_candidates(store, spark, 1)  # written after the publication: not served
    assert store.version(T.USER_CANDIDATES) > published[T.USER_CANDIDATES]
    report = _export(spark, c)
    meta = json.loads(redis.Redis.from_url(c.export.redis_url).get(RedisKeys(c.export.redis_prefix).meta(report.tag)))
    assert meta["versions"][T.USER_CANDIDATES] == published[T.USER_CANDIDATES]
    delta = Recommendations.open(c.storage.root)
    assert delta.versions()[T.USER_CANDIDATES] == published[T.USER_CANDIDATES]
    assert _reader(c).for_user("u1", 3) == delta.for_user("u1", 3)


def test_a_killed_export_leaves_the_served_version_and_the_rerun_completes_it(
    spark: SparkSession, setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, store = setup
    first = _export(spark, c)
    reader = _reader(c)
    served = reader.for_user("u2", 3)
    _write_candidates(store, spark, 1)

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("killed after the user lists were written")

    monkeypatch.setattr(export_module, "_catalogue_writer", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(spark, c)
    client = redis.Redis.from_url(c.export.redis_url)
    k = RedisKeys(c.export.redis_prefix)
    assert client.get(k.current).decode() == first.tag
    partial = [
        n for n in client.scan_iter(match=f"{k.prefix}:*") if not n.startswith(f"{k.prefix}:{first.tag}:".encode())
    ]
    assert len(partial) > 1  # the new tag's user lists landed, its meta did not
    reader.refresh()
    assert reader.for_user("u2", 3) == served  # still the previous version, whole
    monkeypatch.undo()
    done = _export(spark, c)
    assert done.previous == first.tag and client.get(k.current).decode() == done.tag
    assert {n.decode().split(":")[1] for n in client.scan_iter(match=f"{k.prefix}:*") if n != k.current.encode()} == {
        done.tag
    }
    reader.refresh()
    assert reader.for_user("u2", 3) == Recommendations.open(c.storage.root).for_user("u2", 3) != served


def test_the_http_service_over_redis_answers_as_over_delta(spark: SparkSession, setup: Any) -> None:
    c, _ = setup
    _export(spark, c)
    services = [
        Service(create_app(Recommendations.open(c.storage.root), ServiceSettings()), bind("127.0.0.1", 0)).start(),
        Service(create_app(_reader(c), ServiceSettings()), bind("127.0.0.1", 0)).start(),
    ]
    try:
        for path in (
            "/v1/users/u3/recommendations?k=4&exclude=i5",
            "/v1/users/nobody/recommendations?k=2",
            "/v1/items/i2/similar?k=3",
            "/v1/items/i7/similar",
            "/v1/popular?segment=overall&k=2",
        ):
            got = []
            for s in services:
                with urllib.request.urlopen(s.url + path, timeout=10) as r:
                    got.append(json.load(r))
            assert got[0] == got[1], path
    finally:
        for s in services:
            s.stop()


def test_an_unreachable_redis_is_an_error_naming_the_option(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set", f"storage.root={cfg.storage.root}", "--set", "export.redis_url=redis://127.0.0.1:1/0"]
    assert main([*args, "serve", "--backend", "redis", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "export.redis_url 'redis://127.0.0.1:1/0': cannot reach Redis" in err and "Traceback" not in err


def test_the_export_command_needs_the_candidates_tables(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--set", f"storage.root={tmp_path / 'empty'}", "--set", f"export.redis_url={redis_url}"]
    assert main([*args, "export", "redis"]) == 2
    assert "table 'user_candidates' does not exist" in capsys.readouterr().err
