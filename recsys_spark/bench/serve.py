"""The HTTP service under load: ``recsys-spark serve`` over a ``user_candidates`` table of N users x
100 candidates, driven by a bounded load generator on 127.0.0.1, against the in-process
``Recommendations.for_user`` call as the baseline in the same run.

Three processes, none of them Spark: the service as users start it (``recsys-spark serve``), the
load generator (asyncio, keep-alive connections, one request in flight per connection), and the
baseline reader. The load is bounded by a request count and a time limit per level. The service
and the generator share the machine's two cores, so the figures are what one small box serves
while also producing its own load; a separate client machine would only flatter them.

A reload under load: while 16 clients send requests, a new version of ``user_candidates`` is
committed by Spark; every response is checked for its status and for the version it names, and
the run reports failures (target 0) and the versions seen.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, percentile

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config

TITLE = "HTTP service under load"
SIZES = {
    "serve_users": (1_000_000, 2_000, "users (x 100 candidates) in the HTTP service benchmark's table"),
    "serve_requests": (20_000, 200, "requests per concurrency level in the HTTP service benchmark"),
}
#: Concurrent clients per level.
LEVELS = (1, 16, 64)
#: The service again with this many worker processes (serve.workers), at the levels above 1.
_WORKERS = 2
#: Targets at 16 clients on these 2 cores.
_TARGET_P99_MS, _TARGET_RPS = 15.0, 1000.0
_TARGET_CLIENTS = 16
_K = 10
_TIME_LIMIT_S = 120.0
_WARMUP = 50


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_serve(ctx.spark, ctx.cfg, ctx.work, ctx.sizes["serve_users"], ctx.sizes["serve_requests"])


# -- the load generator (a process of its own: python -m recsys_spark.bench --load-client SPEC) --


async def _client(host: str, port: int, paths: list[str], until: float, parse: bool, out: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for path in paths:
            if time.monotonic() > until:
                return
            started = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            out["ms"].append((time.perf_counter() - started) * 1000)
            if status != 200:
                out["errors"] += 1
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
            elif parse:
                got = json.loads(body)
                out["versions"][got["versions"]["user_candidates"]] = (
                    out["versions"].get(got["versions"]["user_candidates"], 0) + 1
                )
                if len(got["items"]) != _K:
                    out["short"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        out["errors"] += 1
        out["failures"].append(repr(exc))
    finally:
        writer.close()


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    paths = [f"/v1/users/{key}/recommendations?k={_K}" for key in spec["keys"]]
    clients = spec["clients"]
    out: dict[str, Any] = {"ms": [], "errors": 0, "statuses": {}, "failures": [], "versions": {}, "short": 0}
    until = time.monotonic() + spec["time_limit_s"]
    # warm the service's caches (datasets, footers) outside the measurement
    warm: dict[str, Any] = {**out, "ms": [], "failures": [], "statuses": {}, "versions": {}}
    await _client(spec["host"], spec["port"], paths[:_WARMUP], until, False, warm)
    stop_file = Path(spec["stop_file"]) if spec.get("stop_file") else None
    started = time.perf_counter()
    if stop_file is None:
        shares = [paths[i::clients] for i in range(clients)]
        await asyncio.gather(*(_client(spec["host"], spec["port"], s, until, spec["parse"], out) for s in shares))
    else:  # until told to stop (the reload has landed), cycling over the keys

        async def cycle(offset: int) -> None:
            n = offset
            while not stop_file.exists() and time.monotonic() < until:
                batch = [paths[(n + j) % len(paths)] for j in range(20)]
                n += 20 * clients
                await _client(spec["host"], spec["port"], batch, until, True, out)

        await asyncio.gather(*(cycle(i * 20) for i in range(clients)))
    wall = time.perf_counter() - started
    ms = sorted(out["ms"])
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": out["errors"],
        "statuses": {str(k): v for k, v in out["statuses"].items()},
        "failures": out["failures"][:5],
        "short_lists": out["short"],
        "versions_seen": {str(k): v for k, v in sorted(out["versions"].items())},
        "wall_s": wall,
        "rps": len(ms) / wall if wall > 0 else 0.0,
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p99_ms": percentile(ms, 99) if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
    }


def load_client(spec: dict[str, Any]) -> dict[str, Any]:
    """Send the spec's requests with ``clients`` keep-alive connections; latencies and errors."""
    return asyncio.run(_load(spec))


def _run_json(args: list[str], what: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "recsys_spark.bench", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the run --------------------------------------------------------------------------------------


class _ServiceProcess:
    """``recsys-spark serve --port 0`` in a process of its own; its URL from the first line it prints."""

    def __init__(self, root: Path, refresh_seconds: float, workers: int = 1) -> None:
        cmd = [
            sys.executable,
            "-m",
            "recsys_spark.cli",
            "--set",
            f"storage.root={root}",
            "--set",
            f"serve.refresh_seconds={refresh_seconds}",
            "serve",
            "--port",
            "0",
            "--workers",
            str(workers),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"recsys-spark serve did not start: {line}{self.proc.stderr.read()[-3000:]}")
        self.url = line.split(" at ", 1)[1].split(" ", 1)[0]
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self._wait_ready(workers)

    def _wait_ready(self, workers: int, timeout: float = 60.0) -> None:
        """Until every worker answers: the parent prints its URL before the workers have started,
        and a load level must not time their start-up."""
        import urllib.request

        deadline, answered = time.monotonic() + timeout, 0
        while answered < 8 * workers:  # a new connection each, so every worker takes some
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=10) as r:
                    answered += r.status == 200
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def versions(self) -> dict[str, int]:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/readyz", timeout=10) as r:
            return json.load(r)["versions"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _load_level(work: Path, service: _ServiceProcess, clients: int, keys: list[str], tag: str) -> dict[str, Any]:
    spec = {
        "host": service.host,
        "port": service.port,
        "clients": clients,
        "keys": keys,
        "parse": False,
        "time_limit_s": _TIME_LIMIT_S,
    }
    path = work / f"serve-load-{tag}-{clients}.json"
    path.write_text(json.dumps(spec))
    return _run_json(["--load-client", str(path)], f"the load client ({clients} clients, {tag})")


def bench_serve(
    spark: SparkSession,
    cfg: Config,
    work: Path,
    n_users: int,
    requests: int,
    n_items: int = 20_000,
    seed: int = 7,
) -> dict[str, Any]:
    from recsys_spark import tables as T
    from recsys_spark.bench.lookup import _candidate_rows, _write_lookup_tables
    from recsys_spark.pipeline.common import LOOKUP_ROW_GROUP_BYTES
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import TableStore

    root = work / "serve-warehouse"
    cfg = cfg.with_overrides([f"storage.root={root}"])
    k = 100
    started = time.perf_counter()
    users_written, _ = _write_lookup_tables(spark, cfg, n_users, k, n_items, 1000)
    store = TableStore(spark, cfg.storage)
    write_s = time.perf_counter() - started
    rng = random.Random(seed)
    keys = [f"u{i:08d}" for i in rng.choices(range(n_users), k=requests + _WARMUP)]
    result: dict[str, Any] = {"users": n_users, "candidates_per_user": k, "k": _K, "write_s": write_s}
    spec_file = work / "serve-baseline.json"
    spec_file.write_text(
        json.dumps(
            {"root": str(root), "k": _K, "warmup": _WARMUP, "key": "user", "keys": keys, "mode": "recommendations"}
        )
    )
    result["baseline"] = _run_json(["--lookup-reader", str(spec_file)], "the in-process baseline")
    service = _ServiceProcess(root, refresh_seconds=0.5)
    try:
        levels = []
        for clients in LEVELS:
            levels.append(_load_level(work, service, clients, keys, "1w"))
        result["levels"] = levels
    finally:
        service.stop()
    # the same levels with one server process per core
    many = _ServiceProcess(root, refresh_seconds=0.5, workers=_WORKERS)
    try:
        result["workers"] = _WORKERS
        result["worker_levels"] = [
            _load_level(work, many, clients, keys, f"{_WORKERS}w") for clients in LEVELS if clients > 1
        ]
    finally:
        many.stop()
    service = _ServiceProcess(root, refresh_seconds=0.5)
    try:
        # a reload under load: a new user_candidates version committed while 16 clients ask
        before = service.versions()[T.USER_CANDIDATES]
        stop_file = work / "serve-stop"
        spec = {
            "host": service.host,
            "port": service.port,
            "clients": _TARGET_CLIENTS,
            "keys": keys,
            "parse": True,
            "time_limit_s": 600.0,
            "stop_file": str(stop_file),
        }
        path = work / "serve-reload.json"
        path.write_text(json.dumps(spec))
        reload_out: dict[str, Any] = {}
        client = threading.Thread(
            target=lambda: reload_out.update(_run_json(["--load-client", str(path)], "the load client (reload)"))
        )
        client.start()
        time.sleep(2.0)
        files = max(1, -(-n_users * k // cfg.candidates.rows_per_file))
        rewritten = store.write(
            _candidate_rows(spark, n_users, k, n_items, files),
            T.USER_CANDIDATES,
            "overwrite",
            RunContext.new("bench-serve", cfg).commit(model_version="bench", strategy="als"),
            ["strategy"],
            replace={"strategy": "als"},
            row_group_bytes=LOOKUP_ROW_GROUP_BYTES,
        )
        deadline = time.monotonic() + 60
        while service.versions()[T.USER_CANDIDATES] != rewritten.version and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # requests on the new version too
        stop_file.touch()
        client.join(timeout=700)
        result["reload"] = {**reload_out, "from_version": before, "to_version": rewritten.version}
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
    result["table"] = {"rows": users_written.rows, "files": users_written.files, "mb": users_written.bytes / 1e6}

    def meets(lv: dict[str, Any]) -> bool:
        return lv["p99_ms"] <= _TARGET_P99_MS and lv["rps"] >= _TARGET_RPS and lv["errors"] == 0

    at = next(lv for lv in result["levels"] if lv["clients"] == _TARGET_CLIENTS)
    at_many = next(lv for lv in result["worker_levels"] if lv["clients"] == _TARGET_CLIENTS)
    result["target"] = {
        "p99_ms_below": _TARGET_P99_MS,
        "rps_at_least": _TARGET_RPS,
        "clients": _TARGET_CLIENTS,
        "met_one_worker": meets(at),
        "met_workers": meets(at_many),
        "met": meets(at) or meets(at_many),
        "measured_at_target_size": n_users >= 1_000_000,
    }
    return result


def markdown(sv: dict[str, Any]) -> list[str]:
    base = sv["baseline"]
    t = sv["table"]
    lines = [
        f"## HTTP service under load ({sv['users']:,} users × {sv['candidates_per_user']} candidates, k = {sv['k']})",
        "",
        f"`recsys-spark serve` in a process of its own over `user_candidates` ({t['rows']:,} rows, {t['files']} "
        f"file(s), {t['mb']:,.0f} MB); a load generator process on 127.0.0.1 sends "
        "`GET /v1/users/{id}/recommendations` for random existing users over keep-alive connections, one "
        "request in flight per connection, bounded by a count and a time limit. Both share the 2 cores. "
        "The baseline is `Recommendations.for_user` called in a fresh process, one call at a time.",
        "",
        "| clients | requests | errors | requests/s | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| in-process `for_user` | {base['lookups']:,} | 0 | {1000 / base['mean_ms']:,.0f} | "
        f"{base['median_ms']:.2f} | {base['p99_ms']:.2f} | {base['max_ms']:.1f} |",
    ]
    for lv in sv["levels"]:
        lines.append(
            f"| {lv['clients']} | {lv['requests']:,} | {lv['errors']} | {lv['rps']:,.0f} | {lv['p50_ms']:.2f} | "
            f"{lv['p99_ms']:.2f} | {lv['max_ms']:.1f} |"
        )
    for lv in sv.get("worker_levels", []):
        lines.append(
            f"| {lv['clients']}, `--workers {sv['workers']}` | {lv['requests']:,} | {lv['errors']} | "
            f"{lv['rps']:,.0f} | {lv['p50_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['max_ms']:.1f} |"
        )
    target = sv["target"]
    at = next(lv for lv in sv["levels"] if lv["clients"] == target["clients"])
    if target.get("met_one_worker"):
        met = "met with one worker"
    elif target.get("met_workers"):
        met = f"met with `--workers {sv['workers']}` and missed with one"
    else:
        met = "**missed**"
    size = "" if target["measured_at_target_size"] else " (the target is for 1,000,000 users; this run had fewer)"
    rl = sv["reload"]
    lines += [
        "",
        f"At {target['clients']} clients the service answers {at['rps'] / (1000 / base['mean_ms']):.2f}× the "
        f"in-process call's rate, with p99 {at['p99_ms'] / base['p99_ms']:.1f}× its p99. The target "
        f"(p99 ≤ {target['p99_ms_below']:.0f} ms and ≥ {target['rps_at_least']:,.0f} requests/s at "
        f"{target['clients']} clients, 0 errors) is {met}{size}.",
        "",
        f"**Reload under load:** user_candidates v{rl['from_version']} → v{rl['to_version']} committed by Spark "
        f"while {rl['clients']} clients sent {rl['requests']:,} requests: {rl['errors']} failed, "
        f"{rl['short_lists']} came back short, versions served {rl['versions_seen']}.",
        "",
    ]
    return lines
