"""The HTTP lookup service: ``recsys-spark serve``, a FastAPI app over :class:`Recommendations`.

No Spark and no JVM: requests read the Delta tables through deltalake and pyarrow, as the Python
reader does. Every response names the table versions it was served from, and all of its rows come
from those versions: a request takes one :class:`~recsys_spark.serving.lookup.Snapshot` and keeps
it to the end. A background thread looks for new versions every ``serve.refresh_seconds`` and
swaps the snapshot in one step, so a request never waits for a reload and never fails because one
happened. Pinned versions (``--version``) never move.

Why a thread and not the request path: a reload opens the new version's Delta log, which takes
milliseconds to seconds with the log's length; a request that happened to trigger it would carry
that latency into the service's p99.

The new snapshot is also *warmed* before the switch (and the first one before the service
accepts a request): the row-group index of every strategy and method, the catalogue ids and the
popularity lists. Opening them lazily made the first request of each version wait 4.2 s at 1M
users x 100 candidates.

Why single lookups of local tables run on the event loop rather than in FastAPI's thread pool:
they are page-cache reads of well under a millisecond, all CPU under one GIL, so the pool adds a
thread hop and GIL contention and no parallelism. Measured at 1M users, 16 clients: 1.88 ms of
server CPU a request in the pool against 0.84 ms on the loop, and 706 against 1,168 requests/s.
They run one at a time in the order their requests arrived (:mod:`~recsys_spark.serving.arrival_order`),
which took p99 at 16 clients from 20.8 to 15.9 ms. Batches (up to ``serve.max_batch`` users, long
enough to stall other connections) and tables on object stores or in Redis (network reads) stay in
the pool.

Errors are JSON, ``{"error": {"code", "message", "parameter"}}``:

* 422 for a bad parameter, naming it (``k`` out of range, an unknown ``strategy``, ``method`` or
  ``segment``, a blank id, a batch too large);
* 404 for an item id not in the catalogue;
* 503 while a table the endpoint needs has not been written yet (``/readyz`` says which).

Unknown *users* are not an error: they get the cold-start popularity list, marked
``"source": "popular"``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import unquote_plus

import orjson
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from recsys_spark import __version__
from recsys_spark import tables as T
from recsys_spark.config.schema import Config, ServeConfig
from recsys_spark.errors import ConfigError, RecsysError, StorageError
from recsys_spark.serving.arrival_order import ArrivalOrder
from recsys_spark.serving.lookup import (
    Recommendations,
    Snapshot,
    UnknownItemError,
    UnknownMethodError,
    UnknownSegmentError,
    UnknownStrategyError,
    UserList,
)
from recsys_spark.serving.metrics import CONTENT_TYPE_LATEST, ServiceMetrics

__all__ = ["Service", "ServiceSettings", "bind", "create_app"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The tables user requests read (the popularity list answers unknown users).
_USER_TABLES = (T.USER_CANDIDATES, T.POPULAR_ITEMS)
#: What /readyz waits for: the user tables and the catalogue that /similar checks ids against.
_REQUIRED = (*_USER_TABLES, T.ITEMS)


class ServiceSettings(BaseModel):
    """What the app serves by default, taken from the config by ``recsys-spark serve``."""

    strategy: str = "als"
    """The candidate strategy a request without ``strategy=`` gets."""
    method: str = "cosine"
    """The neighbour method a request without ``method=`` gets."""
    cold_start_segment: str = "recent"
    """The popularity list unknown users get."""
    serve: ServeConfig = Field(default_factory=ServeConfig)
    """Limits and the reload interval."""


class _Json(JSONResponse):
    """A JSON response encoded by orjson: the standard encoder took 7% of the service's CPU at 16
    clients (a top-10 body of ~1.5 KB), orjson a tenth of that. Finite floats print as Python
    prints them; the bodies hold no NaN."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error answered as JSON with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter

    def response(self) -> _Json:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter:
            body["parameter"] = self.parameter
        return _Json({"error": body}, status_code=self.status)


class BatchRequest(BaseModel):
    """The body of ``POST /v1/recommendations``."""

    user_ids: list[str] = Field(min_length=1)
    """The users, in the order their lists come back (a repeated id is answered once)."""
    k: int | None = None
    """Items per user (default 10)."""
    strategy: str | None = None
    """Candidate strategy (default: the service's)."""
    exclude: list[str] = Field(default_factory=list)
    """Item ids none of the lists may contain."""


def _exclusions(values: list[str] | None) -> list[str]:
    """``exclude=a,b&exclude=c`` -> [a, b, c]."""
    return [part for v in values or [] for part in v.split(",") if part]


def _user_body(ul: UserList, strategy: str) -> dict[str, Any]:
    return {
        "user_id": ul.user_id,
        "strategy": strategy,
        "source": ul.source,
        "filtered": ul.filtered,
        "items": [
            {
                "item_id": r.item_id,
                "item_idx": r.item_idx,
                "score": r.score,
                "rank": r.rank,
                "source": r.source,
                "because_item_id": r.because_item_id,
                "because_share": r.because_share,
            }
            for r in ul.items
        ],
    }


class _Timing:
    """Counts and times every request by its route template (``/v1/users/{user_id}/...``).

    A plain ASGI wrapper rather than an HTTP middleware class, which would copy each response
    body through an extra stream.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, status, time.perf_counter() - started)


_USER_PREFIX, _USER_SUFFIX = "/v1/users/", "/recommendations"


def _plain_query(query: bytes) -> tuple[int | None, str | None] | None:
    """(k, strategy) of a query string holding at most one plain decimal ``k`` and one ``strategy``;
    None for anything else (``exclude``, a repeated or unknown name, a ``k`` that is not digits),
    which FastAPI then parses and validates."""
    k: int | None = None
    strategy: str | None = None
    seen = set()
    for part in query.split(b"&") if query else ():
        name, eq, value = part.partition(b"=")
        if not eq or name in seen:
            return None
        seen.add(name)
        if name == b"k" and value.isdigit() and len(value) <= 9:
            k = int(value)
        elif name == b"strategy":
            strategy = unquote_plus(value.decode("latin-1"), encoding="utf-8", errors="strict")
        else:
            return None
    return k, strategy


class _UserFastPath:
    """``GET /v1/users/{user_id}/recommendations`` with at most ``k`` and ``strategy``, answered by
    the route's own handler without FastAPI's routing and parameter validation; any other request,
    and any other query, goes to FastAPI unchanged.

    Why: it is the request a live site sends for every page view, and at 1M users x 100 candidates
    FastAPI's routing, dependency solving and query validation took a third of the service's CPU
    for it (a profile at 16 clients). The handler, its checks and its errors are the route's, so
    the answers are the same bytes (tested request by request against the FastAPI route).
    """

    def __init__(self, app: ASGIApp, handler: Callable[..., Awaitable[Response]], route: Any) -> None:
        self.app, self.handler, self.route = app, handler, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(_USER_PREFIX) and path.endswith(_USER_SUFFIX):
                user_id = path[len(_USER_PREFIX) : -len(_USER_SUFFIX)]
                try:
                    query = _plain_query(scope["query_string"])
                except UnicodeDecodeError:
                    query = None
                if user_id and "/" not in user_id and query is not None:
                    scope["route"] = self.route  # the metrics name the route template, as FastAPI's would
                    response = await self.handler(user_id, *query)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _Reloader(threading.Thread):
    """Looks for new table versions every ``interval`` seconds until stopped."""

    def __init__(self, recs: Recommendations, metrics: ServiceMetrics, interval: float) -> None:
        super().__init__(name="recsys-table-reloader", daemon=True)
        self.recs, self.metrics, self.interval = recs, metrics, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if self.recs.refresh():
                    self.metrics.reloads.inc()
                self.metrics.served(self.recs.versions())
            except Exception:  # a failed look (a storage hiccup) keeps serving the last snapshot
                log.exception("looking for new table versions failed; still serving %s", self.recs.versions())


def create_app(recs: Recommendations, settings: ServiceSettings | None = None, fast_path: bool = True) -> FastAPI:
    """The service over ``recs``; its reloader runs while the app is being served.

    Args:
        fast_path: answer plain user requests through :class:`_UserFastPath` (False: through
            FastAPI alone, as the test comparing the two does).
    """
    s = settings or ServiceSettings()
    limits = s.serve
    # a user's answer also depends on the exclusions table when there is one: its version is served too
    exclusions = getattr(recs, "exclusions_table", None)
    user_tables = (*_USER_TABLES, *((exclusions,) if exclusions else ()))
    metrics = ServiceMetrics()
    # the reloader alone moves the snapshot; requests never trigger a reload themselves
    recs.refresh_seconds = float("inf")
    metrics.served(recs.versions())

    # single lookups of local tables run on the event loop, in arrival order; see the module docstring
    inline = bool(getattr(recs, "reads_local_files", False))
    in_order = ArrivalOrder()

    async def lookup(fn: Callable[..., _Json], *args: Any) -> _Json:
        return await in_order.run(fn, *args) if inline else await run_in_threadpool(fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # open every index before the first request (and each new version before its switch),
        # so that no request waits seconds on a version's footers
        started = time.perf_counter()
        await run_in_threadpool(recs.warm)
        recs.warm_on_refresh = True
        log.info("tables opened in %.2fs", time.perf_counter() - started)
        reloader = _Reloader(recs, metrics, limits.refresh_seconds)
        reloader.start()
        log.info("serving %s, tables at %s", recs.root, recs.versions())
        try:
            yield
        finally:
            reloader.stopped.set()
            reloader.join(timeout=10)

    app = FastAPI(
        title="recsys-spark",
        version=__version__,
        summary="Precomputed recommendations, item neighbours and popularity lists, served from Delta tables.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.recommendations = recs

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> _Json:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> _Json:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        parameter = ".".join(where) or "body"
        return ApiError(422, "invalid_parameter", f"{parameter}: {first.get('msg', 'invalid')}", parameter).response()

    def check_k(k: int | None) -> int:
        k = 10 if k is None else k
        if not 1 <= k <= limits.max_k:
            raise ApiError(422, "invalid_parameter", f"k must be between 1 and {limits.max_k}, got {k}", "k")
        return k

    def check_exclude(ids: list[str]) -> list[str]:
        if len(ids) > limits.max_exclude:
            raise ApiError(
                422,
                "invalid_parameter",
                f"exclude names {len(ids)} items; at most {limits.max_exclude} (serve.max_exclude)",
                "exclude",
            )
        return ids

    def require(snap: Snapshot, needs: tuple[str, ...] = _USER_TABLES) -> None:
        missing = [t for t in needs if t in snap.missing()]
        if missing:
            raise ApiError(503, "not_ready", f"not written yet: {', '.join(missing)}")

    def answer(snap: Snapshot, body: dict[str, Any], needs: tuple[str, ...] | None = None) -> _Json:
        # a response object, so FastAPI skips re-encoding a plain dict through jsonable_encoder
        versions = snap.versions()
        return _Json({**body, "versions": {t: versions[t] for t in (needs or user_tables)}})

    def user_lists(snap: Snapshot, user_ids: list[str], k: int, strategy: str, exclude: list[str]) -> list[UserList]:
        require(snap)  # 503 before any lookup when a table is missing
        try:
            got = snap.user_lists(user_ids, k, strategy, s.cold_start_segment, exclude)
        except UnknownStrategyError as exc:
            raise ApiError(422, "unknown_strategy", str(exc), "strategy") from None
        except UnknownSegmentError as exc:  # the service's own cold-start segment: a deployment error
            raise ApiError(503, "unknown_segment", str(exc)) from None
        except StorageError as exc:
            raise ApiError(503, "not_ready", str(exc)) from None
        except RecsysError as exc:
            raise ApiError(422, "invalid_parameter", str(exc), "user_id") from None
        metrics.filtered.inc(sum(u.filtered for u in got.values()))
        return list(got.values())

    @app.get("/v1/users/{user_id}/recommendations", tags=["users"])
    async def recommendations(
        user_id: str,
        k: Annotated[int | None, Query(description="items to return (default 10, at most serve.max_k)")] = None,
        strategy: Annotated[str | None, Query(description="candidate strategy (default: the service's)")] = None,
        exclude: Annotated[
            list[str] | None, Query(description="item ids to leave out; comma-separated or repeated")
        ] = None,
    ) -> _Json:
        """A user's top-k candidates; an unknown user gets the cold-start list (``source: popular``)."""
        return await lookup(_recommendations, user_id, k, strategy, exclude)

    def _recommendations(user_id: str, k: int | None, strategy: str | None, exclude: list[str] | None) -> _Json:
        snap = recs.snapshot()
        strat = strategy or s.strategy
        (ul,) = user_lists(snap, [user_id], check_k(k), strat, check_exclude(_exclusions(exclude)))
        return answer(snap, _user_body(ul, strat))

    @app.post("/v1/recommendations", tags=["users"])
    def batch_recommendations(request: Annotated[BatchRequest, Body()]) -> _Json:
        """Top-k candidates of several users, all from one snapshot of the tables."""
        if len(request.user_ids) > limits.max_batch:
            raise ApiError(
                422,
                "invalid_parameter",
                f"user_ids names {len(request.user_ids)} users; at most {limits.max_batch} (serve.max_batch)",
                "user_ids",
            )
        snap = recs.snapshot()
        strat = request.strategy or s.strategy
        lists = user_lists(snap, request.user_ids, check_k(request.k), strat, check_exclude(request.exclude))
        return answer(snap, {"results": [_user_body(ul, strat) for ul in lists]})

    @app.get("/v1/items/{item_id}/similar", tags=["items"])
    async def similar(
        item_id: str,
        k: Annotated[int | None, Query(description="neighbours to return (default 10)")] = None,
        method: Annotated[str | None, Query(description="neighbour method (default: the service's)")] = None,
    ) -> _Json:
        """An item's nearest neighbours; 404 for an id not in the catalogue."""
        return await lookup(_similar, item_id, k, method)

    def _similar(item_id: str, k: int | None, method: str | None) -> _Json:
        snap = recs.snapshot()
        needs = (T.ITEM_NEIGHBORS, T.ITEMS)
        require(snap, needs)
        m = method or s.method
        try:
            found = snap.neighbors([item_id], check_k(k), m)[item_id]
        except UnknownItemError as exc:
            raise ApiError(404, "unknown_item", str(exc), "item_id") from None
        except UnknownMethodError as exc:
            raise ApiError(422, "unknown_method", str(exc), "method") from None
        except RecsysError as exc:
            raise ApiError(422, "invalid_parameter", str(exc), "item_id") from None
        items = [
            {"item_id": n.item_id, "item_idx": n.item_idx, "similarity": n.similarity, "rank": n.rank} for n in found
        ]
        return answer(snap, {"item_id": item_id, "method": m, "items": items}, needs)

    @app.get("/v1/popular", tags=["items"])
    async def popular(
        k: Annotated[int | None, Query(description="items to return (default 10)")] = None,
        segment: Annotated[str | None, Query(description="overall or recent (default: the cold-start one)")] = None,
    ) -> _Json:
        """A popularity list, as cold-start users get it."""
        return await lookup(_popular, k, segment)

    def _popular(k: int | None, segment: str | None) -> _Json:
        snap = recs.snapshot()
        needs = (T.POPULAR_ITEMS,)
        require(snap, needs)
        seg = segment or s.cold_start_segment
        try:
            found = snap.popular_list(seg)[: check_k(k)]
        except UnknownSegmentError as exc:
            raise ApiError(422, "unknown_segment", str(exc), "segment") from None
        items = [{"item_id": r.item_id, "item_idx": r.item_idx, "score": r.score, "rank": r.rank} for r in found]
        return answer(snap, {"segment": seg, "items": items}, needs)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, Any]:
        """The process is up (it may not be ready)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> _Json:
        """200 once every table user requests need is open; 503 naming the missing ones."""
        snap = recs.snapshot()
        missing = [t for t in _REQUIRED if t in snap.missing()]
        body = {"status": "not ready" if missing else "ready", "missing": missing, "versions": snap.versions()}
        return _Json(body, status_code=503 if missing else 200)

    @app.get("/metrics", tags=["operations"])
    def prometheus() -> Response:
        """Prometheus text: requests and latency per endpoint, the table versions served."""
        metrics.served(recs.versions())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def fast_recommendations(user_id: str, k: int | None, strategy: str | None) -> Response:
        try:
            return await lookup(_recommendations, user_id, k, strategy, None)
        except ApiError as exc:
            return exc.response()

    if fast_path:
        (route,) = [r for r in app.routes if getattr(r, "path", None) == _USER_PREFIX + "{user_id}" + _USER_SUFFIX]
        app.add_middleware(_UserFastPath, handler=fast_recommendations, route=route)
    app.add_middleware(_Timing, metrics=metrics)
    return app


def app_for(cfg: Config, versions: dict[str, int] | None = None, backend: str = "delta") -> FastAPI:
    """The service of ``cfg``'s tables (``backend`` delta) or of its Redis export (redis)."""
    recs: Any
    if backend == "redis":
        from recsys_spark.serving.redis_reader import RedisRecommendations

        recs = RedisRecommendations(
            cfg.export.redis_url,
            prefix=cfg.export.redis_prefix,
            strategy=cfg.candidates.strategies[0],
            neighbor_method=cfg.similarity.method,
            cold_start_segment=cfg.candidates.cold_start_segment,
            socket_timeout_s=cfg.export.socket_timeout_s,
        )
    else:
        recs = Recommendations.open(
            cfg.storage.root,
            strategy=cfg.candidates.strategies[0],
            neighbor_method=cfg.similarity.method,
            cold_start_segment=cfg.candidates.cold_start_segment,
            versions=versions,
            exclusions_table=cfg.serve.exclusions_table or None,
        )
    settings = ServiceSettings(
        strategy=cfg.candidates.strategies[0],
        method=cfg.similarity.method,
        cold_start_segment=cfg.candidates.cold_start_segment,
        serve=cfg.serve,
    )
    return create_app(recs, settings)


#: How a worker process learns what to serve: JSON of the config, pins and backend.
_WORKER_SPEC = "RECSYS_SPARK_SERVE_SPEC"


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory), from the spec its parent left in the
    environment: each worker opens its own reader, as the parent's cannot cross a process."""
    spec = json.loads(os.environ[_WORKER_SPEC])
    return app_for(Config.model_validate(spec["config"]), spec["versions"], spec["backend"])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 takes a free one, so its number is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} (serve.host, serve.port): {exc}") from None
    sock.listen(2048)
    return sock


class Service:
    """The app served by uvicorn on a bound socket, in this thread (``run``) or a background one
    (``start``/``stop``, as the demo and the tests use it)."""

    def __init__(self, app: FastAPI, sock: socket.socket, worker_spec: dict[str, Any] | None = None) -> None:
        """
        Args:
            worker_spec: {"config", "versions", "backend"} of :func:`worker_app`, to ``run`` in
                ``config.serve.workers`` processes; None (or one worker) serves ``app`` here.
        """
        import uvicorn

        self.app, self.sock = app, sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self._thread: threading.Thread | None = None
        self.worker_spec = worker_spec
        self.workers = int(worker_spec["config"]["serve"]["workers"]) if worker_spec else 1

    def run(self) -> None:
        """Serve until stopped: here, or with several workers in child processes that share the
        socket, restarted by uvicorn's supervisor when one dies."""
        if self.workers <= 1:
            self.server.run(sockets=[self.sock])
            return
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        os.environ[_WORKER_SPEC] = json.dumps(self.worker_spec)
        config = uvicorn.Config(
            f"{__name__}:worker_app",
            factory=True,
            workers=self.workers,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        Multiprocess(config, sockets=[self.sock]).run()

    def start(self, timeout: float = 30.0) -> Service:
        # uvicorn installs signal handlers only on the main thread; from another it just serves
        self._thread = threading.Thread(target=self.run, name="recsys-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StorageError(f"the lookup service did not start within {timeout:.0f}s at {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()

    def app_versions(self) -> dict[str, int | None]:
        """The table versions being served now."""
        return self.app.state.recommendations.versions()
