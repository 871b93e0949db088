"""Shared helpers of the benchmarks: timing, summaries, machine description, CPU contention."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.config.schema import Config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass
class BenchContext:
    """What every benchmark gets: the session, a config, a scratch folder and the run's sizes."""

    spark: Any
    """The SparkSession (shared by all benchmarks of a run)."""

    cfg: Config
    """Config with the run's overrides; benchmarks derive private table roots from it."""

    work: Path
    """Scratch folder, deleted at the end of the run."""

    quick: bool
    """Tiny sizes and one repetition: proves the benchmark still works (CI)."""

    repeats: int
    """Repetitions per timed contender (median and spread are reported)."""

    sizes: dict[str, int] = field(default_factory=dict)
    """Problem sizes by name (events, lookup_users, topk_users, ...), already scaled for --quick."""

    _warehouses: dict[int, tuple[Config, int, float]] = field(default_factory=dict)

    def synthetic_warehouse(self, events: int) -> tuple[Config, int, float]:
        """A config whose table root holds ``events`` synthetic events, generated and ingested once per
        run and size (benchmarks of the same size share it); (config, events written, seconds it took)."""
        if events not in self._warehouses:
            from recsys_spark.pipeline.generate import run_generate
            from recsys_spark.pipeline.ingest import run_ingest
            from recsys_spark.pipeline.runs import RunContext

            folder = self.work / f"synthetic-{events}"
            # same users/items per event as the CLI's synthetic data; a small log in fewer files
            # spares ingest per-file overhead (the seed still fixes the data)
            partitions = max(2, min(self.cfg.generate.partitions, events // 100_000))
            cfg = self.cfg.with_overrides(
                [
                    f"generate.num_events={events}",
                    f"generate.num_users={max(100, events // 20)}",
                    f"generate.num_items={max(100, events // 50)}",
                    f"generate.partitions={partitions}",
                    f"generate.output={folder / 'raw'}",
                    f"ingest.source.path={folder / 'raw'}",
                    "ingest.source.preset=synthetic",
                    f"storage.root={folder / 'warehouse'}",
                ]
            )
            start = time.perf_counter()
            _, written = run_generate(self.spark, cfg)
            run_ingest(self.spark, cfg, RunContext.new("bench-data", cfg))
            self._warehouses[events] = (cfg, written, time.perf_counter() - start)
        return self._warehouses[events]


def timed(fn: Callable[[], Any], repeats: int, setup: Callable[[], None] | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def percentile(sorted_values: list[float], pct: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(pct) - 1]


#: Above this share of the machine's CPU used by other processes, a section says its figures may be skewed.
BUSY_MACHINE_PERCENT = 10.0


def _process_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, the /proc/<pid>/stat fields after the command name), for every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), fields)
    return table


def _tree_sum(table: dict[int, tuple[int, list[str]]], root: int, value: Callable[[list[str]], float]) -> float:
    """Sum of ``value(fields)`` over ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        if pid in table:
            total += value(table[pid][1])
        frontier += children.get(pid, [])
    return total


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process and its descendants) so far; None off Linux.

    Descendants are the JVM, its Python workers and the lookup readers; exited ones are counted in
    their parent's cutime/cstime.
    """
    try:
        tick = os.sysconf("SC_CLK_TCK")
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(cpu) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
        # utime, stime, cutime, cstime
        ours = _tree_sum(_process_table(), os.getpid(), lambda f: sum(int(v) for v in f[11:15]) / tick)
    except (OSError, ValueError, IndexError):
        return None
    return busy, ours


def other_cpu_percent(
    before: tuple[float, float] | None, after: tuple[float, float] | None, wall_s: float
) -> float | None:
    """Share of the machine's CPU that processes other than this benchmark used in ``wall_s``."""
    if before is None or after is None or wall_s <= 0:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, 100 * other / (wall_s * (os.cpu_count() or 1)))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(spark: SparkSession) -> dict[str, Any]:
    import numpy
    import pyspark

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "spark": pyspark.__version__,
        "numpy": numpy.__version__,
        "java": spark.sparkContext._jvm.System.getProperty("java.version"),  # type: ignore[attr-defined]
        "master": spark.sparkContext.master,
    }


def faster(ratio: float) -> str:
    """ "**3.1×** faster" or "**1.3×** slower" for a time ratio (baseline / ours)."""
    return f"**{ratio:.1f}×** faster" if ratio >= 1 else f"**{1 / ratio:.1f}×** slower"


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (the JVM, Python workers), from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    return int(_tree_sum(_process_table(), root, lambda f: int(f[21]) * page))


class PeakRss:
    """Samples the resident memory of this process tree in a thread; ``peak_mb`` and ``added_mb`` after exit.

    ``added_mb`` is the peak minus the tree's memory on entry: what the measured work needed on top
    of an already running JVM and interpreter (a JVM rarely returns heap, so later runs start higher).
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = self.added_mb = 0.0
        self._stop = False

    def __enter__(self) -> PeakRss:
        import threading

        self.start_mb = self.peak_mb = _tree_rss_bytes(os.getpid()) / 2**20
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self.peak_mb = max(self.peak_mb, _tree_rss_bytes(os.getpid()) / 2**20)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _tree_rss_bytes(os.getpid()) / 2**20)
        self.added_mb = self.peak_mb - self.start_mb
