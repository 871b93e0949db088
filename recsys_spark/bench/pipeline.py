"""End-to-end pipeline and its scaling: every stage of the demo pipeline (generate, ingest, train-als,
item-similarity, candidates, evaluate) run as its own ``recsys-spark`` process on synthetic logs of growing size.

Each stage runs in a fresh interpreter and JVM, so its wall time includes Spark startup and no stage
inherits JIT, caches or heap from another; the CLI's own "<job> finished in" log line gives the time
without startup. A bare session (start and stop) is timed too. Per stage it records the peak RSS of the
process tree (sampled from /proc: the Python driver, the JVM and its Python workers), and, from Spark's
JSON event log, bytes spilled by tasks and the JVM heap peak. In local mode the driver is the only
executor, so any spill is driver spill. Growth exponents are least-squares slopes of log(time) against
log(events) across the scale points.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

from recsys_spark.bench._common import BUSY_MACHINE_PERCENT, BenchContext, cpu_seconds
from recsys_spark.config.schema import Config

TITLE = "End-to-end pipeline and scaling"
#: Size options: name -> (full default, --quick value, help).
SIZES = {
    "scale_min_events": (100_000, 10_000, "smallest synthetic event count of the pipeline scaling benchmark"),
    "scale_max_events": (
        1_000_000,
        10_000,
        "largest synthetic event count of the pipeline scaling benchmark; points run on the "
        "1-3-10 ladder between min and max (e.g. 10000000 adds 3M and 10M)",
    ),
    "scale_rungs": (
        3,
        3,
        "pipeline scaling ladder: 3 runs the 1-3-10 rungs between min and max, 10 only the "
        "powers of ten (0.1M, 1M, 10M)",
    ),
    "scale_budget_s": (
        480,
        0,
        "pipeline scaling: skip a larger point when the time spent plus its predicted "
        "time would exceed this many seconds (0: no limit)",
    ),
}

#: Stages in pipeline order: (name in the report, recsys-spark subcommand).
STAGES = [
    ("generate", "generate"),
    ("ingest", "ingest"),
    ("train-als", "train-als"),
    ("item-similarity (cosine)", "item-similarity"),
    ("candidates", "candidates"),
    ("evaluate", "evaluate"),
]

#: Synthetic events per user at every scale point.
USER_EVENTS = 20
#: Slope of log(time) vs log(events) up to which a stage counts as near-linear.
NEAR_LINEAR = 1.15
#: The memory target: the whole pipeline at this many events without driver spill.
MEMORY_TARGET_EVENTS = 10_000_000
#: Evaluation samples this many users when the config does not cap them, so that its metric part
#: stays a fixed cost and the stage's growth reflects the model fits on the training split.
DEFAULT_EVAL_USERS = 5_000
_POLL_S = 0.2


def run(ctx: BenchContext) -> dict[str, Any]:
    s = ctx.sizes
    return bench_pipeline(
        ctx.cfg,
        ctx.work / "pipeline",
        s["scale_min_events"],
        s["scale_max_events"],
        s["scale_budget_s"],
        s["scale_rungs"],
    )


# -- scale points --------------------------------------------------------------------------------


def scale_points(lo: int, hi: int, rungs: int = 3) -> list[int]:
    """``lo``, ``hi`` and the ladder values strictly between them, ascending: 1-3-10 rungs
    (``rungs=3``) or powers of ten only (``rungs=10``)."""
    if rungs not in (3, 10):
        raise ValueError(f"--scale-rungs must be 3 (1-3-10 ladder) or 10 (powers of ten), not {rungs}")
    if lo >= hi:
        return [hi]
    ladder = {m * 10**e for e in range(1, 12) for m in ((1, 3) if rungs == 3 else (1,))}
    return sorted({lo, hi} | {v for v in ladder if lo < v < hi})


def growth_exponent(events: list[int], times: list[float]) -> float | None:
    """Least-squares slope of log(time) against log(events); None with fewer than two usable points."""
    pts = [(math.log(e), math.log(t)) for e, t in zip(events, times) if e > 0 and t > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


# -- config handed to the stage processes ----------------------------------------------------------


def _toml_value(v: Any) -> str:
    """A TOML literal for a value parsed from TOML (the config's raw input); dicts become inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON escapes are valid TOML basic-string escapes
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _write_config(raw: dict[str, Any], path: Path, event_dir: Path) -> None:
    """The run's config (its ``--config`` and ``--set`` input) plus a plain-JSON Spark event log in
    ``event_dir``, so the stage processes run exactly what the benchmark run was configured with.

    Spark 4 compresses and rolls event logs by default; both are turned off so the log is one JSON
    file per application that the standard library can read.
    """
    data = dict(raw)
    spark = dict(data.get("spark") or {})
    spark["conf"] = {
        **dict(spark.get("conf") or {}),
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": event_dir.resolve().as_uri(),
        "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false",
    }
    data["spark"] = spark
    path.write_text("".join(f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in data.items()), encoding="utf-8")


# -- measuring one process -----------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds the process itself used: utime + stime, without its children)."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return table


def _descendants(table: dict[int, tuple[int, float]], root: int) -> list[int]:
    """``root`` and every process below it."""
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += [c for c, (p, _) in table.items() if p == pid]
    return tree


def _tree_cpu(root: int) -> float:
    """CPU seconds used so far by the live processes of the tree under ``root``, each counted once."""
    table = _proc_table()
    return sum(table[p][1] for p in _descendants(table, root) if p in table)


class _TreeMonitor:
    """Samples a process tree: summed RSS, the JVM's own peak (VmHWM) and each process's CPU time.

    getrusage(RUSAGE_CHILDREN) cannot do this: the Python driver never reaps the JVM it launched (the
    JVM outlives it briefly and is re-parented), so neither the JVM's memory nor its CPU time reach
    the benchmark's rusage or /proc cutime. Sampling misses RSS spikes and the CPU of the last moments
    shorter than the interval; the JVM's VmHWM is the kernel's exact high-water mark.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_rss = 0
        self.peak_jvm_hwm = 0
        self.cpu: dict[int, float] = {}
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        table = _proc_table()
        total = 0
        for pid in _descendants(table, self.root):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
                if pid in table:
                    self.cpu[pid] = max(self.cpu.get(pid, 0.0), table[pid][1])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_jvm_hwm = max(self.peak_jvm_hwm, int(line.split()[1]) * 1024)
            except (OSError, ValueError, IndexError):
                continue
        self.peak_rss = max(self.peak_rss, total)

    def _loop(self) -> None:
        while not self._stop.wait(_POLL_S):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _event_log_metrics(event_dir: Path) -> dict[str, Any]:
    """Spill, JVM heap peak and GC time from the task-end events of the JSON event logs in ``event_dir``."""
    out: dict[str, Any] = {
        "tasks": 0,
        "memory_spilled_bytes": 0,
        "disk_spilled_bytes": 0,
        "peak_heap_bytes": 0,
        "gc_s": 0.0,
        "failed_tasks": 0,
        "driver_memory": None,
        "event_log_found": False,
    }
    for f in sorted(p for p in event_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        out["event_log_found"] = True
        with f.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # the logs hold much more than task ends (evaluate's runs to 100+ MB); skip cheaply
                if '"SparkListenerTaskEnd"' in line:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue  # a truncated last line of a log still in progress
                    m = e.get("Task Metrics") or {}
                    out["tasks"] += 1
                    out["memory_spilled_bytes"] += int(m.get("Memory Bytes Spilled", 0))
                    out["disk_spilled_bytes"] += int(m.get("Disk Bytes Spilled", 0))
                    out["gc_s"] += int(m.get("JVM GC Time", 0)) / 1000
                    if (e.get("Task End Reason") or {}).get("Reason") != "Success":
                        out["failed_tasks"] += 1
                    em = e.get("Task Executor Metrics") or {}
                    out["peak_heap_bytes"] = max(out["peak_heap_bytes"], int(em.get("JVMHeapMemory", 0)))
                elif '"SparkListenerEnvironmentUpdate"' in line:
                    try:
                        props = json.loads(line).get("Spark Properties") or {}
                    except ValueError:
                        continue
                    out["driver_memory"] = props.get("spark.driver.memory", out["driver_memory"])
    return out


_FINISHED = re.compile(r"recsys_spark: (\S+) finished in ([0-9.]+)s")
_GENERATED = re.compile(r"synthetic log: ([0-9,]+) events")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # never let a stage attach to the benchmark's own JVM
    for key in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(key, None)
    return env


def _run_process(cmd: list[str], folder: Path, event_dir: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion in ``folder``: wall time, exit code, memory, and the event log's metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    event_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=folder, env=_child_env())
        mem = _TreeMonitor(proc.pid)
        try:
            code = proc.wait()
        finally:
            mem.stop()
        wall = time.perf_counter() - start
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    finished = _FINISHED.findall(stderr)
    res: dict[str, Any] = {
        "wall_s": wall,
        "exit_code": code,
        "job_s": float(finished[-1][1]) if finished else None,
        "cpu_s": sum(mem.cpu.values()),
        "peak_rss_bytes": mem.peak_rss,
        "peak_jvm_rss_bytes": mem.peak_jvm_hwm,
        **_event_log_metrics(event_dir),
        "stdout": stdout,
    }
    if code != 0:
        tail = [ln for ln in (stderr + stdout).splitlines() if ln.strip()][-6:]
        res["error"] = "\n".join(tail)
    return res


_STARTUP_CODE = """
import sys, time
t0 = time.perf_counter()
from recsys_spark.config import load_config
from recsys_spark.session import build_session
cfg = load_config(sys.argv[1], sys.argv[2:])
t1 = time.perf_counter()
spark = build_session(cfg.spark, cfg.storage, app_name="recsys-spark bench startup")
t2 = time.perf_counter()
spark.stop()
print(f"session_s={t2 - t1:.3f} stop_s={time.perf_counter() - t2:.3f}")
"""


def _other_cpu_percent(
    before: tuple[float, float] | None, after: tuple[float, float] | None, own_before: float, point: dict[str, Any]
) -> float | None:
    """Share of the machine's CPU used by processes other than this benchmark during a scale point.

    _common.other_cpu_percent counts descendants through /proc cutime, which misses the stage JVMs
    (never reaped by their Python driver), so here the stage processes' CPU comes from sampling.
    """
    if before is None or after is None or point["wall_s"] <= 0:
        return None
    own = _tree_cpu(os.getpid()) - own_before + point["cpu_s"]
    other = (after[0] - before[0]) - own
    return max(0.0, 100 * other / (point["wall_s"] * (os.cpu_count() or 1)))


# -- the benchmark -------------------------------------------------------------------------------


def _point(raw: dict[str, Any], folder: Path, events: int, eval_users: int, items: int) -> dict[str, Any]:
    """One scale point: a bare session start, then every stage in order, each in a fresh process.

    Users grow with events (20 each, as in conf/local.toml) and the catalogue stays at ``items``: more
    traffic brings more users, not more products. Were items to grow too, the all-users x all-items
    top-k would grow with the square of the log, which measures catalogue size, not log size.
    """
    users = max(100, events // USER_EVENTS)
    overrides = [
        f"storage.root={folder / 'warehouse'}",
        f"generate.output={folder / 'raw'}",
        f"ingest.source.path={folder / 'raw'}",
        "ingest.source.preset=synthetic",
        f"generate.num_events={events}",
        f"generate.num_users={users}",
        f"generate.num_items={items}",
        "spark.ui_enabled=false",
        f"spark.checkpoint_dir={folder / 'checkpoints'}",
        f"evaluation.output_dir={folder / 'reports'}",
        f"evaluation.max_users={eval_users}",
        "similarity.method=cosine",
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    point: dict[str, Any] = {"events": events, "users": users, "items": items, "stages": {}, "ok": True}
    before, own_before, started = cpu_seconds(), _tree_cpu(os.getpid()), time.perf_counter()

    def configured(name: str) -> tuple[Path, Path]:
        run_dir, event_dir = folder / "runs" / name, folder / "events" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(raw, run_dir / "config.toml", event_dir)
        return run_dir, event_dir

    run_dir, event_dir = configured("startup")
    probe = _run_process(
        [sys.executable, "-c", _STARTUP_CODE, str(run_dir / "config.toml"), *overrides], run_dir, event_dir
    )
    if probe["exit_code"] != 0:
        raise RuntimeError(f"a bare Spark session failed to start:\n{probe.get('error')}")
    point["startup_s"] = probe["wall_s"]
    point["startup_peak_rss_bytes"] = probe["peak_rss_bytes"]
    point["driver_memory"] = probe["driver_memory"]
    session = re.search(r"session_s=([0-9.]+)", probe["stdout"])
    point["session_build_s"] = float(session.group(1)) if session else None

    for label, command in STAGES:
        run_dir, event_dir = configured(command)
        print(f"  pipeline {events:,} events: {label} ...", file=sys.stderr, flush=True)
        res = _run_process(
            [sys.executable, "-m", "recsys_spark.cli", "--config", str(run_dir / "config.toml"), *sets, command],
            run_dir,
            event_dir,
        )
        stdout = res.pop("stdout")
        if command == "generate" and (m := _GENERATED.search(stdout)):
            point["events_written"] = int(m.group(1).replace(",", ""))
        if res["job_s"] is None:
            # no "finished in" line (a failed stage): the best estimate is wall minus bare startup
            res["job_s"] = max(0.0, res["wall_s"] - point["startup_s"])
        point["stages"][label] = res
        if res["exit_code"] != 0:
            point["ok"] = False
            point["failed_stage"] = label
            break
    point["wall_s"] = time.perf_counter() - started
    point["cpu_s"] = probe["cpu_s"] + _total(point, "cpu_s")
    point["other_cpu_percent"] = _other_cpu_percent(before, cpu_seconds(), own_before, point)
    return point


def bench_pipeline(cfg: Config, work: Path, lo: int, hi: int, budget_s: int, rungs: int = 3) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    raw = getattr(cfg, "_raw", None) or {}
    eval_users = cfg.evaluation.max_users or DEFAULT_EVAL_USERS
    points: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()
    planned = scale_points(lo, hi, rungs)
    for i, events in enumerate(planned):
        if points and budget_s > 0:
            # Predict from the last point: process startups are a fixed cost, the rest grows as the
            # job totals measured so far do (linearly until two points exist; a slope under 0.5 is
            # taken for noise, not for economies of scale).
            last = points[-1]
            fixed = min(last["wall_s"], last["startup_s"] * (len(STAGES) + 1))
            done = [p for p in points if p["ok"]]
            slope = growth_exponent([p["events"] for p in done], [_total(p, "job_s") for p in done])
            slope = 1.0 if slope is None else max(0.5, slope)
            predicted = fixed + (last["wall_s"] - fixed) * (events / last["events"]) ** slope
            spent = time.perf_counter() - started
            if spent + predicted > budget_s:
                skipped += [
                    {
                        "events": e,
                        "reason": f"time budget: {spent:.0f} s spent, next point predicted "
                        f"{predicted:.0f} s, budget {budget_s} s",
                    }
                    for e in planned[i:]
                ]
                break
        print(f"pipeline: scale point {events:,} events", file=sys.stderr, flush=True)
        folder = work / f"events-{events}"
        try:
            point = _point(raw, folder, events, eval_users, cfg.generate.num_items)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # 10M events take GBs; keep only one point on disk
        if not point["ok"] and not points:
            failed = point["stages"][point["failed_stage"]]
            raise RuntimeError(
                f"pipeline stage {point['failed_stage']} failed at {events:,} events:\n{failed.get('error')}"
            )
        points.append(point)
        if not point["ok"]:
            # a larger log will not fit better; the failure itself is the finding
            skipped += [
                {"events": e, "reason": f"stage {point['failed_stage']} failed at {events:,} events"}
                for e in planned[i + 1 :]
            ]
            break

    ok = [p for p in points if p["ok"]]
    xs = [p["events"] for p in ok]
    exponents: dict[str, dict[str, float | None]] = {}
    for label, _ in STAGES:
        exponents[label] = {
            "job": growth_exponent(xs, [p["stages"][label]["job_s"] for p in ok]),
            "wall": growth_exponent(xs, [p["stages"][label]["wall_s"] for p in ok]),
        }
    exponents["total"] = {
        "job": growth_exponent(xs, [_total(p, "job_s") for p in ok]),
        "wall": growth_exponent(xs, [_total(p, "wall_s") for p in ok]),
    }
    startups = [p["startup_s"] for p in points]
    largest = points[-1] if points else None
    at_target = next((p for p in points if p["events"] >= MEMORY_TARGET_EVENTS), None)
    busy = [p["other_cpu_percent"] for p in points if p.get("other_cpu_percent") is not None]
    return {
        # from sampling the stage processes: the generic /proc accounting misses their unreaped JVMs
        "other_cpu_percent": max(busy) if busy else None,
        "stages": [label for label, _ in STAGES],
        "planned_events": planned,
        "budget_s": budget_s,
        "points": points,
        "skipped": skipped,
        "evaluation_max_users": eval_users,
        "driver_memory": (largest or {}).get("driver_memory") or cfg.spark.driver_memory,
        "master": cfg.spark.master,
        "startup": {"median_s": statistics.median(startups) if startups else None, "runs": len(startups)},
        "exponents": exponents,
        "near_linear_max": NEAR_LINEAR,
        "memory_target": _memory_target(at_target),
    }


def _total(point: dict[str, Any], key: str) -> float:
    return sum(s[key] for s in point["stages"].values())


def _memory_target(point: dict[str, Any] | None) -> dict[str, Any]:
    target: dict[str, Any] = {"events": MEMORY_TARGET_EVENTS, "measured": point is not None}
    if point is None:
        return target
    stages = point["stages"].values()
    spilled = sum(s["memory_spilled_bytes"] + s["disk_spilled_bytes"] for s in stages)
    logs = all(s["event_log_found"] for s in stages)
    target.update(
        {
            "completed": point["ok"],
            "spilled_bytes": spilled,
            "event_logs_complete": logs,
            "met": point["ok"] and logs and spilled == 0,
        }
    )
    return target


# -- report --------------------------------------------------------------------------------------


def _events(n: int) -> str:
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return f"{n:,}"


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _exp(x: float | None) -> str:
    if x is None:
        return "–"
    return f"**{x:.2f}** ⚠" if x > NEAR_LINEAR else f"{x:.2f}"


def markdown(r: dict[str, Any]) -> list[str]:
    points, skipped = r["points"], r["skipped"]
    ok = [p for p in points if p["ok"]]
    start = r["startup"]
    lines: list[str] = []
    if not points:
        return [
            "## End-to-end pipeline",
            "",
            "No scale point ran: " + "; ".join(f"{_events(s['events'])}: {s['reason']}" for s in skipped) + ".",
            "",
        ]

    # -- end to end at the largest point
    p = points[-1]
    lines += [
        f"## End-to-end pipeline ({p['events']:,} synthetic events, {p['users']:,} users, {p['items']:,} items)",
        "",
        f"Each stage runs as its own `recsys-spark` process ({r['master']}, driver memory "
        f"{r['driver_memory']}), so its wall time includes starting Python and the JVM; “job” is the "
        "CLI's own timing of the stage without startup. CPU s and peak RSS are summed over the stage's "
        "process tree (Python driver, JVM, Python workers), sampled every "
        f"{_POLL_S:g} s; heap is the JVM heap peak Spark reports with task ends; spill is Spark's "
        "memory/disk bytes spilled by tasks (in local mode all tasks run in the driver). Evaluation "
        f"scores a seeded sample of at most {r['evaluation_max_users']:,} users (models still train on "
        "the whole training split). The demo's second similarity step (cosine of ALS item factors) is "
        "not included.",
        "",
        "| stage | wall s (with startup) | job s | CPU s | peak RSS GB | JVM heap peak GB | "
        "spilled MB (memory / disk) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in p["stages"].items():
        failed = " (**failed**)" if s["exit_code"] != 0 else ""
        lines.append(
            f"| {label}{failed} | {s['wall_s']:.1f} | {s['job_s']:.1f} | {s['cpu_s']:.0f} | "
            f"{_gb(s['peak_rss_bytes'])} | "
            f"{_gb(s['peak_heap_bytes'])} | {s['memory_spilled_bytes'] / 1e6:.0f} / "
            f"{s['disk_spilled_bytes'] / 1e6:.0f} |"
        )
    st = p["stages"].values()
    spilled = sum(s["memory_spilled_bytes"] + s["disk_spilled_bytes"] for s in st)
    lines.append(
        f"| **total** | {_total(p, 'wall_s'):.1f} | {_total(p, 'job_s'):.1f} | {_total(p, 'cpu_s'):.0f} | "
        f"{_gb(max(s['peak_rss_bytes'] for s in st))} (max) | {_gb(max(s['peak_heap_bytes'] for s in st))} "
        f"(max) | {sum(s['memory_spilled_bytes'] for s in st) / 1e6:.0f} / "
        f"{sum(s['disk_spilled_bytes'] for s in st) / 1e6:.0f} |"
    )
    session = f" ({p['session_build_s']:.1f} s of it building the session)" if p.get("session_build_s") else ""
    lines += [
        "",
        f"Starting and stopping a bare Spark session in a fresh process takes **{start['median_s']:.1f} s** "
        f"(median of {start['runs']}, one per scale point; {p['startup_s']:.1f} s at this point{session}). "
        f"The {len(p['stages'])} stage processes pay it {len(p['stages'])} times; `recsys-spark demo` runs "
        f"every stage in one process and would take about {_total(p, 'job_s') + p['startup_s']:.0f} s here "
        "(the job times plus one startup).",
    ]
    if not p["ok"]:
        lines += [
            "",
            f"Stage {p['failed_stage']} **failed** at this size:",
            "",
            "```",
            p["stages"][p["failed_stage"]].get("error", ""),
            "```",
        ]
    lines += ["", _memory_sentence(r, spilled, p), ""]

    # -- scaling
    lines += [
        f"## Scaling ({', '.join(_events(q['events']) for q in points)} events)",
        "",
        f"Every point has {USER_EVENTS} events per user and the same {p['items']:,}-item catalogue: traffic "
        "grows, the catalogue does not (catalogue size is the top-k benchmark's axis). "
        "Job time (without startup) per stage and point, with the growth exponent: the least-squares slope "
        "of log(time) against log(events), from job times and from wall times. 1 is linear; above "
        f"{NEAR_LINEAR:g} is flagged ⚠. Fixed costs (Spark job scheduling, table commits) weigh most at "
        "the small points, so exponents over a short range understate the growth at larger sizes.",
        "",
        "| stage | " + " | ".join(f"{_events(q['events'])} s" for q in points) + " | exponent (job) | "
        "exponent (wall) |",
        "|---|" + "---:|" * (len(points) + 2),
    ]
    ex = r["exponents"]
    for label in r["stages"]:
        cells = [f"{q['stages'][label]['job_s']:.1f}" if label in q["stages"] else "–" for q in points]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_exp(ex[label]['job'])} | {_exp(ex[label]['wall'])} |")
    lines.append(
        "| **total (job)** | "
        + " | ".join(f"{_total(q, 'job_s'):.1f}" for q in points)
        + f" | {_exp(ex['total']['job'])} | {_exp(ex['total']['wall'])} |"
    )
    lines.append("| total wall with startups | " + " | ".join(f"{_total(q, 'wall_s'):.1f}" for q in points) + " | | |")
    lines.append(
        "| peak RSS GB (max over stages) | "
        + " | ".join(_gb(max(s["peak_rss_bytes"] for s in q["stages"].values())) for q in points)
        + " | | |"
    )
    lines.append(
        "| other processes' CPU % | "
        + " | ".join(f"{q['other_cpu_percent']:.0f}" if q.get("other_cpu_percent") is not None else "–" for q in points)
        + " | | |"
    )
    lines.append("")
    if len(ok) < 2:
        lines.append("**Growth exponents not measured**: fewer than two scale points completed.")
    else:
        steep = [label for label in r["stages"] if (ex[label]["job"] or 0) > NEAR_LINEAR]
        lines.append(
            f"Stages should be near-linear in events (exponent ≤ {NEAR_LINEAR:g}): "
            + (
                "**not met** for " + ", ".join(f"{s} ({ex[s]['job']:.2f})" for s in steep)
                if steep
                else f"met for all {len(r['stages'])} stages"
            )
            + f" between {_events(ok[0]['events'])} and {_events(ok[-1]['events'])} events."
        )
        if ok[-1]["events"] >= 100_000 and all((ex[label]["job"] or 0) < 0.8 for label in r["stages"]):
            lines.append(
                "Every exponent is well below 1: fixed costs still dominate at these sizes, so this range "
                "cannot show whether a stage turns super-linear at larger logs."
            )
    busy = [q["other_cpu_percent"] for q in points if q.get("other_cpu_percent") is not None]
    if busy and max(busy) > BUSY_MACHINE_PERCENT:
        lines.append(
            f"Other processes used up to {max(busy):.0f}% of the machine's CPU during these points (counted "
            "here with the stage JVMs as this benchmark's own), so single stage times, and the exponents "
            "fitted to them, are noisy; one run per point."
        )
    if ok and ok[-1]["events"] < 100_000:
        lines.append(
            "At these tiny sizes fixed costs (startup, scheduling, commits) dominate every stage, so the "
            "exponents above say nothing about scaling; they show the measurement runs."
        )
    if skipped:
        lines.append("Skipped: " + "; ".join(f"{_events(s['events'])} ({s['reason']})" for s in skipped) + ".")
    if not any(q["events"] >= MEMORY_TARGET_EVENTS for q in points):
        lines.append(
            f"The {_events(MEMORY_TARGET_EVENTS)}-event point was **not part of this run** (largest: "
            f"{_events(points[-1]['events'])}); it runs with `--scale-max-events {MEMORY_TARGET_EVENTS}` "
            "and does not fit the 20-minute suite on this machine."
        )
    lines.append("")
    return lines


def _memory_sentence(r: dict[str, Any], spilled: int, p: dict[str, Any]) -> str:
    t = r["memory_target"]
    goal = f"Target: the pipeline at {_events(t['events'])} events runs on this machine without spilling the driver"
    if not t["measured"]:
        state = "no spill" if spilled == 0 else f"{spilled / 1e6:,.0f} MB spilled"
        return (
            f"{goal}: **not measured** ({_events(t['events'])} was not part of this run; at "
            f"{_events(p['events'])} events: {state})."
        )
    if t["met"]:
        return f"{goal}: **met** (all stages completed, 0 bytes spilled)."
    why = []
    if not t["completed"]:
        why.append("a stage failed")
    if t["spilled_bytes"]:
        why.append(f"{t['spilled_bytes'] / 1e6:,.0f} MB spilled")
    if not t["event_logs_complete"]:
        why.append("some event logs were missing, so spill is unknown")
    return f"{goal}: **missed** ({', '.join(why)})."
