"""The HTTP lookup service, through real HTTP requests on 127.0.0.1.

Every request here is bounded: a 10 s timeout each, and the load during a reload is a fixed
number of requests with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config, ServeConfig
from recsys_spark.errors import StorageError
from recsys_spark.serving.app import Service, ServiceSettings, bind, create_app
from recsys_spark.serving.lookup import Recommendations
from recsys_spark.storage.store import CommitInfo, TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

COMMIT = CommitInfo("test", "run-serve", "cfg")
USERS, RANKS = 4, 6
_TIMEOUT_S = 10


def _write_candidates(store: TableStore, spark: SparkSession, generation: int, explained: bool = True) -> int:
    """Both strategies for users u0..u3, ranks 1..6 of items i1..i6; every score carries the
    generation in its thousands, so a response shows which write its rows came from. item_item
    rows are explained by i(10 + rank) with share 1 / rank; ``explained=False`` writes the columns
    of a table from before explanations existed."""
    rows = [
        (f"u{u}", u, r, f"i{r}", r, float(generation * 1000 + 100 - r), s, "v", s)
        + (((f"i{10 + r}", 10 + r, 1.0 / r) if s == "item_item" else (None, None, None)) if explained else ())
        for s in ("als", "item_item")
        for u in range(USERS)
        for r in range(1, RANKS + 1)
    ]
    df = spark.createDataFrame(
        rows,
        "user_id STRING, user_idx INT, rank INT, item_id STRING, item_idx INT, "
        "score DOUBLE, source STRING, model_version STRING, strategy STRING"
        + (", because_item_id STRING, because_item_idx INT, because_share FLOAT" if explained else ""),
    )
    return store.write(df, T.USER_CANDIDATES, "overwrite", COMMIT, ["strategy"]).version


@pytest.fixture(scope="module")
def warehouse(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("serve") / "warehouse")
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    _write_candidates(store, spark, 0)
    store.write(
        spark.createDataFrame(
            [("i1", 1, f"i{n}", n, 1.0 / n, n - 1, 3, "cosine", "v") for n in range(2, 6)],
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
            [(s, r, 10 + r, f"i{10 + r}", 50.0 - r, 9, "p") for s in ("overall", "recent") for r in range(1, 5)],
            "segment STRING, rank INT, item_idx INT, item_id STRING, score DOUBLE, users LONG, model_version STRING",
        ),
        T.POPULAR_ITEMS,
        "overwrite",
        COMMIT,
    )
    store.write(
        spark.createDataFrame([(f"i{i}", i) for i in range(20)], "item_id STRING, item_idx INT"),
        T.ITEMS,
        "overwrite",
        COMMIT,
    )
    return root


def _start(root: str, versions: dict[str, int] | None = None, **limits: Any) -> Service:
    recs = Recommendations.open(root, versions=versions)
    settings = ServiceSettings(serve=ServeConfig(refresh_seconds=0.1, max_k=10, max_batch=5, **limits))
    return Service(create_app(recs, settings), bind("127.0.0.1", 0)).start()


@pytest.fixture(scope="module")
def url(warehouse: str) -> Iterator[str]:
    service = _start(warehouse)
    yield service.url
    service.stop()


def _call(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            raw = response.read()
            status = response.status
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, kind = err.read(), err.code, err.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode()


def test_a_known_user_gets_the_top_k_of_the_default_strategy_with_the_versions_served(url: str) -> None:
    status, got = _call(url, "/v1/users/u1/recommendations?k=3")
    assert status == 200
    assert [(i["item_id"], i["rank"], i["source"]) for i in got["items"]] == [
        ("i1", 1, "als"),
        ("i2", 2, "als"),
        ("i3", 3, "als"),
    ]
    assert got["source"] == "als" and got["strategy"] == "als" and got["filtered"] == 0
    assert got["versions"] == {T.USER_CANDIDATES: 0, T.POPULAR_ITEMS: 0}
    status, got = _call(url, "/v1/users/u1/recommendations?strategy=item_item")
    assert status == 200 and len(got["items"]) == RANKS and {i["source"] for i in got["items"]} == {"item_item"}


def test_every_item_carries_its_explanation(url: str) -> None:
    status, got = _call(url, "/v1/users/u2/recommendations?strategy=item_item&k=3")
    assert status == 200
    assert [(i["because_item_id"], i["because_share"]) for i in got["items"]] == [
        ("i11", 1.0),
        ("i12", 0.5),
        ("i13", pytest.approx(1 / 3)),
    ]
    status, got = _call(url, "/v1/users/u2/recommendations?k=1")  # these als rows explain nothing
    assert [(i["because_item_id"], i["because_share"]) for i in got["items"]] == [(None, None)]
    status, got = _call(url, "/v1/users/nobody/recommendations?k=1")
    assert [(i["source"], i["because_item_id"]) for i in got["items"]] == [("popular", None)]


def test_a_table_from_before_explanations_is_served_without_them(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    root = str(tmp_path / "warehouse")
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    _write_candidates(store, spark, 0, explained=False)
    got = Recommendations.open(root, strategy="item_item").for_user("u1", 2)
    assert [(r.item_id, r.because_item_id, r.because_share) for r in got] == [("i1", None, None), ("i2", None, None)]


def test_an_unknown_user_gets_the_cold_start_list_flagged_popular(url: str) -> None:
    status, got = _call(url, "/v1/users/somebody%20new/recommendations?k=2")
    assert status == 200 and got["user_id"] == "somebody new" and got["source"] == "popular"
    assert [(i["item_id"], i["source"]) for i in got["items"]] == [("i11", "popular"), ("i12", "popular")]


def test_excluded_items_are_made_up_from_lower_ranks_and_counted(url: str) -> None:
    status, got = _call(url, "/v1/users/u2/recommendations?k=3&exclude=i1,i3&exclude=i99")
    assert status == 200
    assert [i["item_id"] for i in got["items"]] == ["i2", "i4", "i5"] and got["filtered"] == 2
    # a list shorter than k once filtered: everything the table has is served, no padding
    status, got = _call(url, "/v1/users/u2/recommendations?k=6&exclude=i1")
    assert [i["item_id"] for i in got["items"]] == ["i2", "i3", "i4", "i5", "i6"] and got["filtered"] == 1
    # unknown users' popularity list obeys the exclusions too
    status, got = _call(url, "/v1/users/nobody/recommendations?k=2&exclude=i11")
    assert [i["item_id"] for i in got["items"]] == ["i12", "i13"] and got["filtered"] == 1


def test_a_batch_answers_every_user_in_order_from_one_snapshot(url: str) -> None:
    status, got = _call(url, "/v1/recommendations", {"user_ids": ["u3", "nobody", "u0", "u3"], "k": 2})
    assert status == 200
    assert [(r["user_id"], r["source"]) for r in got["results"]] == [
        ("u3", "als"),
        ("nobody", "popular"),
        ("u0", "als"),
    ]
    assert all(len(r["items"]) == 2 for r in got["results"]) and got["versions"][T.USER_CANDIDATES] == 0


def test_similar_items_and_popular_lists(url: str) -> None:
    status, got = _call(url, "/v1/items/i1/similar?k=2")
    assert status == 200 and got["method"] == "cosine"
    assert [(n["item_id"], n["rank"]) for n in got["items"]] == [("i2", 1), ("i3", 2)]
    assert got["versions"] == {T.ITEM_NEIGHBORS: 0, T.ITEMS: 0}
    status, got = _call(url, "/v1/items/i7/similar")  # in the catalogue, without neighbours
    assert status == 200 and got["items"] == []
    status, got = _call(url, "/v1/popular?k=3&segment=overall")
    assert status == 200 and [i["item_id"] for i in got["items"]] == ["i11", "i12", "i13"]


def test_an_unknown_item_is_a_404_with_a_json_error(url: str) -> None:
    status, got = _call(url, "/v1/items/nope/similar")
    assert status == 404
    assert got["error"]["code"] == "unknown_item" and "unknown item id 'nope'" in got["error"]["message"]


@pytest.mark.parametrize(
    ("path", "parameter", "message"),
    [
        ("/v1/users/u1/recommendations?k=0", "k", "k must be between 1 and 10, got 0"),
        ("/v1/users/u1/recommendations?k=11", "k", "k must be between 1 and 10, got 11"),
        ("/v1/users/u1/recommendations?k=ten", "k", "k: Input should be a valid integer"),
        ("/v1/users/u1/recommendations?strategy=alss", "strategy", "unknown strategy 'alss'"),
        ("/v1/users/%20/recommendations", "user_id", "is blank"),
        ("/v1/items/i1/similar?method=als", "method", "unknown method 'als'"),
        ("/v1/items/i1/similar?k=-1", "k", "k must be between 1 and 10"),
        ("/v1/popular?segment=weekly", "segment", "unknown segment 'weekly'"),
    ],
)
def test_a_bad_parameter_is_a_422_naming_it(url: str, path: str, parameter: str, message: str) -> None:
    status, got = _call(url, path)
    assert status == 422, got
    assert got["error"]["parameter"] == parameter and message in got["error"]["message"]


def test_too_many_exclusions_are_a_422_naming_exclude(warehouse: str) -> None:
    service = _start(warehouse, max_exclude=2)
    try:
        assert _call(service.url, "/v1/users/u1/recommendations?exclude=a,b")[0] == 200
        status, got = _call(service.url, "/v1/users/u1/recommendations?exclude=a,b&exclude=c")
        assert status == 422 and got["error"]["parameter"] == "exclude"
        assert "exclude names 3 items; at most 2 (serve.max_exclude)" in got["error"]["message"]
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({"user_ids": [f"u{i}" for i in range(6)]}, "user_ids"),
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["u1"], "k": 0}, "k"),
        ({"users": ["u1"]}, "user_ids"),
    ],
)
def test_a_bad_batch_is_a_422_naming_the_field(url: str, body: dict[str, Any], parameter: str) -> None:
    status, got = _call(url, "/v1/recommendations", body)
    assert status == 422 and got["error"]["parameter"] == parameter, got


def test_health_readiness_metrics_and_the_openapi_page(url: str) -> None:
    assert _call(url, "/healthz") == (200, {"status": "ok"})
    status, ready = _call(url, "/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["missing"] == []
    _call(url, "/v1/users/u1/recommendations")
    _call(url, "/v1/items/nope/similar")
    status, text = _call(url, "/metrics")
    assert status == 200
    assert 'recsys_requests_total{endpoint="/v1/items/{item_id}/similar",status="404"}' in text
    assert 'recsys_request_duration_seconds_count{endpoint="/v1/users/{user_id}/recommendations"}' in text
    assert 'recsys_table_version{table="user_candidates"}' in text
    status, spec = _call(url, "/openapi.json")
    assert status == 200 and {
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/popular",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    status, page = _call(url, "/docs")
    assert status == 200 and "swagger" in page.lower()


def _raw(url: str, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/u1/recommendations",
        "/v1/users/u1/recommendations?k=3",
        "/v1/users/u1/recommendations?k=3&strategy=als",
        "/v1/users/u1/recommendations?strategy=als&k=2",
        "/v1/users/u1/recommendations?strategy=",
        "/v1/users/u1/recommendations?strategy=a%6Cs",
        "/v1/users/u1/recommendations?strategy=alss",
        "/v1/users/u1/recommendations?strategy=%FF",
        "/v1/users/u1/recommendations?k=0",
        "/v1/users/u1/recommendations?k=11",
        "/v1/users/u1/recommendations?k=0003",
        "/v1/users/u1/recommendations?k=ten",
        "/v1/users/u1/recommendations?k=",
        "/v1/users/u1/recommendations?k",
        "/v1/users/u1/recommendations?k=2&k=3",
        "/v1/users/u1/recommendations?%6B=2",
        "/v1/users/u1/recommendations?k=2&exclude=i5",
        "/v1/users/u1/recommendations?k=2&other=1",
        "/v1/users/u1/recommendations?k=2&&strategy=als",
        "/v1/users/nobody/recommendations?k=2",
        "/v1/users/%20/recommendations",
        "/v1/users/u%31/recommendations?k=2",
        "/v1/users//recommendations",
        "/v1/users/u1/x/recommendations",
        "/v1/users/u1/recommendations/",
    ],
)
def test_plain_user_requests_get_the_same_bytes_from_the_fast_path_as_from_fastapi(
    url: str, plain_url: str, path: str
) -> None:
    assert _raw(url, path) == _raw(plain_url, path)
    assert _raw(url, path, "HEAD")[:2] == _raw(plain_url, path, "HEAD")[:2]


@pytest.mark.parametrize(
    ("query", "parsed"),
    [
        (b"", (None, None)),
        (b"k=3", (3, None)),
        (b"strategy=blend&k=12", (12, "blend")),
        (b"strategy=a%20b+c", (None, "a b c")),
        (b"k=-1", None),
        (b"k=1e3", None),
        (b"k=1234567890", None),
        (b"k=2&k=3", None),
        (b"exclude=i1", None),
        (b"k", None),
        (b"k=2&", None),
        (b"strategy=%FF", "error"),
    ],
)
def test_only_a_plain_k_and_strategy_take_the_fast_path(query: bytes, parsed: Any) -> None:
    from recsys_spark.serving.app import _plain_query

    if parsed == "error":
        with pytest.raises(UnicodeDecodeError):
            _plain_query(query)
    else:
        assert _plain_query(query) == parsed


def test_the_fast_path_answers_plain_requests_itself_and_passes_the_rest_on() -> None:
    import asyncio

    from recsys_spark.serving.app import _UserFastPath

    passed, answered = [], []

    async def fastapi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    class _Answer:
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            answered.append((scope["path"], scope["route"]))

    async def handler(user_id: str, k: int | None, strategy: str | None) -> _Answer:
        answered.append((user_id, k, strategy))
        return _Answer()

    fast = _UserFastPath(fastapi, handler, "the route")

    def call(path: str, query: bytes = b"", method: str = "GET") -> None:
        scope = {"type": "http", "method": method, "path": path, "query_string": query, "root_path": ""}
        asyncio.run(fast(scope, None, None))

    call("/v1/users/u7/recommendations", b"k=4")
    call("/v1/users/u7/recommendations", b"exclude=i1")
    call("/v1/users/u7/recommendations", b"k=4", method="HEAD")
    call("/v1/users//recommendations")
    call("/v1/items/i1/similar")
    assert answered == [("u7", 4, None), ("/v1/users/u7/recommendations", "the route")]
    assert passed == ["/v1/users/u7/recommendations"] * 2 + ["/v1/users//recommendations", "/v1/items/i1/similar"]


@pytest.fixture(scope="module")
def plain_url(warehouse: str) -> Iterator[str]:
    recs = Recommendations.open(warehouse)
    settings = ServiceSettings(serve=ServeConfig(refresh_seconds=0.1, max_k=10, max_batch=5))
    service = Service(create_app(recs, settings, fast_path=False), bind("127.0.0.1", 0)).start()
    yield service.url
    service.stop()


def test_the_fast_path_counts_its_requests_under_the_route_template(warehouse: str) -> None:
    service = _start(warehouse)
    try:
        for path in ("/v1/users/u1/recommendations?k=2", "/v1/users/u1/recommendations?k=0"):
            _call(service.url, path)
        _, text = _call(service.url, "/metrics")
    finally:
        service.stop()
    route = 'endpoint="/v1/users/{user_id}/recommendations"'
    assert f'recsys_requests_total{{{route},status="200"}} 1.0' in text
    assert f'recsys_requests_total{{{route},status="422"}} 1.0' in text


def test_a_service_over_an_empty_warehouse_is_up_but_not_ready(tmp_path: Path) -> None:
    service = _start(str(tmp_path / "empty"))
    try:
        assert _call(service.url, "/healthz")[0] == 200
        status, ready = _call(service.url, "/readyz")
        assert status == 503 and ready["missing"] == [T.USER_CANDIDATES, T.POPULAR_ITEMS, T.ITEMS]
        status, got = _call(service.url, "/v1/users/u1/recommendations")
        assert status == 503 and got["error"]["code"] == "not_ready" and "user_candidates" in got["error"]["message"]
    finally:
        service.stop()


def test_the_service_opens_every_strategy_before_its_first_request_and_each_new_version_before_the_switch(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    root = str(tmp_path / "warehouse")
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    _write_candidates(store, spark, 0)
    recs = Recommendations.open(root)

    def opened() -> list[tuple[str, str] | None]:
        # the row-group indexes of the version being served, built before any lookup asked
        return sorted(p for _, p in recs.snapshot()._tables[T.USER_CANDIDATES]._indexes)

    service = Service(create_app(recs, ServiceSettings(serve=ServeConfig(refresh_seconds=0.1))), bind("127.0.0.1", 0))
    service.start()
    try:
        assert opened() == [("strategy", "als"), ("strategy", "item_item")]
        second = _write_candidates(store, spark, 1)
        deadline = time.monotonic() + 30
        while recs.versions()[T.USER_CANDIDATES] != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recs.versions()[T.USER_CANDIDATES] == second
        assert opened() == [("strategy", "als"), ("strategy", "item_item")]
    finally:
        service.stop()


def test_a_new_version_is_served_without_a_restart_and_no_request_sees_a_mix(
    spark: SparkSession, base_config: Config, tmp_path: Path
) -> None:
    root = str(tmp_path / "warehouse")
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    first = _write_candidates(store, spark, 0)
    store.write(
        spark.createDataFrame(
            [("recent", 1, 1, "i1", 1.0, 1, "p")],
            "segment STRING, rank INT, item_idx INT, item_id STRING, score DOUBLE, users LONG, model_version STRING",
        ),
        T.POPULAR_ITEMS,
        "overwrite",
        COMMIT,
    )
    store.write(spark.createDataFrame([("i1", 1)], "item_id STRING, item_idx INT"), T.ITEMS, "overwrite", COMMIT)
    live, pinned = _start(root), _start(root, versions={T.USER_CANDIDATES: first})
    generation_of: dict[int, int] = {first: 0}
    problems: list[str] = []
    seen: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 120
        for n in range(2000):  # bounded by count and by time
            if stop.is_set() or time.monotonic() > deadline:
                return
            status, got = _call(live.url, f"/v1/users/u{n % USERS}/recommendations?k={RANKS}")
            if status != 200:
                problems.append(f"{status}: {got}")
                continue
            version = got["versions"][T.USER_CANDIDATES]
            generations = {int(i["score"]) // 1000 for i in got["items"]}
            seen.add(version)
            if len(got["items"]) != RANKS or len(generations) != 1:
                problems.append(f"v{version}: {got['items']}")
            elif version in generation_of and generations != {generation_of[version]}:
                problems.append(f"v{version} answered with generation {generations}")

    client = threading.Thread(target=load)
    client.start()
    try:
        for generation in (1, 2, 3):
            generation_of[_write_candidates(store, spark, generation)] = generation
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        stop.set()
        client.join(timeout=60)
    try:
        assert not problems, problems[:5]
        last = max(generation_of)
        assert _call(live.url, "/v1/users/u1/recommendations")[1]["versions"][T.USER_CANDIDATES] == last
        assert len(seen) >= 2, f"the service served only versions {seen} while three commits landed"
        got = _call(pinned.url, "/v1/users/u1/recommendations")[1]
        assert got["versions"][T.USER_CANDIDATES] == first and int(got["items"][0]["score"]) // 1000 == 0
        metrics = _call(live.url, "/metrics")[1]
        assert f'recsys_table_version{{table="user_candidates"}} {float(last)}' in metrics
    finally:
        live.stop()
        pinned.stop()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_serve_command_serves_until_told_to_stop(warehouse: str, stop: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_spark.cli", "--set", f"storage.root={warehouse}", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving "), line + (proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        status, got = _call(url, "/v1/users/u1/recommendations?k=2")
        assert status == 200 and [i["item_id"] for i in got["items"]] == ["i1", "i2"]
    finally:
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_several_workers_share_the_port_and_stop_together(warehouse: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "recsys_spark.cli", "--set", f"storage.root={warehouse}"),
            *("serve", "--port", "0", "--workers", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    workers: list[int] = []
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving "), line + (proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        for n in range(20):  # a connection each: the workers take turns accepting them
            status, got = _call(url, f"/v1/users/u{n % USERS}/recommendations?k=2&strategy=item_item")
            assert status == 200 and [i["because_item_id"] for i in got["items"]] == ["i11", "i12"]
        workers = _children(proc.pid)
        assert len(workers) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    deadline = time.monotonic() + 15
    while [w for w in workers if Path(f"/proc/{w}").exists()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]  # no worker outlives the service


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "user_candidates"], "--version 'user_candidates': expected TABLE=VERSION"),
        (["--version", "runs=1"], "cannot pin ['runs']"),
        (["--version", "user_candidates=7"], "table 'user_candidates' has no version 7"),
    ],
)
def test_the_serve_command_exits_2_naming_a_bad_option(
    warehouse: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--set", f"storage.root={warehouse}", "serve", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_serve_command_names_the_port_it_cannot_listen_on(
    warehouse: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = url.rsplit(":", 1)[1]
    assert main(["--set", f"storage.root={warehouse}", "serve", "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (serve.host, serve.port)" in capsys.readouterr().err


def test_the_demo_asks_a_running_service_and_prints_what_curl_would_get(
    warehouse: str, base_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsys_spark.cli import demo_service

    demo_service(base_config.with_overrides([f"storage.root={warehouse}"]), "u1", k=2)
    out = capsys.readouterr().out
    curl = next(line for line in out.splitlines() if line.startswith("$ curl -s 'http://127.0.0.1:"))
    assert curl.endswith("/v1/users/u1/recommendations?k=2'")
    body = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2"] and body["versions"][T.USER_CANDIDATES] == 0
    assert "recsys-spark serve" in out.splitlines()[-1]


def test_the_exclusions_table_takes_each_users_items_out_and_its_version_is_served(
    spark: SparkSession, base_config: Config, warehouse: str
) -> None:
    store = TableStore(spark, base_config.with_overrides([f"storage.root={warehouse}"]).storage)

    def exclusions(pairs: list[tuple[str, str]]) -> int:
        df = spark.createDataFrame(pairs, "user_id STRING, item_id STRING").orderBy("user_id")
        return store.write(df, "user_exclusions", "overwrite", COMMIT).version

    first = exclusions([("u1", "i1"), ("u1", "i4"), ("u2", "i2"), ("nobody", "i11")])
    recs = Recommendations.open(warehouse, exclusions_table="user_exclusions")
    service = Service(
        create_app(recs, ServiceSettings(serve=ServeConfig(refresh_seconds=0.1, max_k=10))), bind("127.0.0.1", 0)
    ).start()
    try:
        status, got = _call(service.url, "/v1/users/u1/recommendations?k=3&exclude=i2")
        assert status == 200 and [i["item_id"] for i in got["items"]] == ["i3", "i5", "i6"] and got["filtered"] == 3
        assert got["versions"]["user_exclusions"] == first
        got = _call(service.url, "/v1/users/nobody/recommendations?k=2")[1]  # unknown users' list too
        assert [i["item_id"] for i in got["items"]] == ["i12", "i13"] and got["filtered"] == 1
        got = _call(service.url, "/v1/users/u3/recommendations?k=2")[1]  # nothing excluded for u3
        assert [i["item_id"] for i in got["items"]] == ["i1", "i2"] and got["filtered"] == 0
        second = exclusions([("u1", "i2")])
        deadline = time.monotonic() + 10
        while _call(service.url, "/readyz")[1]["versions"]["user_exclusions"] != second:
            assert time.monotonic() < deadline, "the new exclusions version was not picked up"
            time.sleep(0.05)
        got = _call(service.url, "/v1/users/u1/recommendations?k=3")[1]
        assert [i["item_id"] for i in got["items"]] == ["i1", "i3", "i4"] and got["filtered"] == 1
    finally:
        service.stop()
    with pytest.raises(StorageError, match="'items' is a pipeline table"):
        Recommendations.open(warehouse, exclusions_table="items")
