"""EASE's fixed costs on the synthetic demo catalogue, against a plain numpy/scipy EASE on the same
matrix, and RP3beta's time against the cosine job on the same matrix.

Ours is ``recsys_spark.models.ease.fit_ease``: the Gram X'X in Spark on the block-sparse cell kernel, an
in-place Cholesky inverse on the driver, |weight| pruning, and the neighbour frame. The baseline
is the textbook single-machine EASE (Steck 2019) in a fresh interpreter: the scipy sparse Gram
made dense, ``scipy.linalg.inv`` (LU) and B = -P / diag(P), with as many BLAS threads as ours; it
also checks ours' kept weights against its B. Memory is the resident size of the Python process
(ours: the driver, sampled while it fits; the JVM is not counted, the matrix lives outside it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, faster, summary, timed

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import Config

TITLE = "EASE and RP3beta"
#: Size options: name -> (full default, --quick value, help).
SIZES = {
    "ease_events": (1_000_000, 20_000, "synthetic events for the EASE / RP3beta benchmark (1M: the demo's 20k items)")
}

#: The issue's target: EASE on the demo catalogue takes minutes, not hours.
_TARGET_EASE_S = 3600.0
#: A contender is timed again only while all its repetitions fit this (an EASE fit takes minutes).
_REPEAT_BUDGET_S = 240.0
#: Items of the dense matrix on which np.linalg.inv's peak memory is measured (72 MB a matrix).
_NUMPY_INV_ITEMS = 3000
#: The baseline runs only when the machine has this many times its two matrices available.
_MEMORY_HEADROOM = 1.5
_CHECK_ROWS = 300
_TIE = 1e-12


def run(ctx: BenchContext) -> dict[str, Any]:
    # --quick skips the warm-up runs of cosine and RP3beta: it only proves the benchmark works
    return bench_ease(
        ctx.spark, ctx.sizes["ease_events"], ctx.repeats, ctx.synthetic_warehouse, ctx.work, warm_up=not ctx.quick
    )


# -- memory --------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ProcessRss:
    """Samples this process's resident memory (not its children's) in a thread: ``peak_mb``, ``added_mb``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = self.added_mb = 0.0
        self._stop = False

    def __enter__(self) -> ProcessRss:
        self.start_mb = self.peak_mb = _rss_bytes() / 2**20
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop:
            self.peak_mb = max(self.peak_mb, _rss_bytes() / 2**20)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_bytes() / 2**20)
        self.added_mb = self.peak_mb - self.start_mb


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=None)


# -- the baseline, in a fresh interpreter --------------------------------------------------------


def baseline_ease(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain EASE on the capped matrix in ``spec["matrix"]``, and ours' kept weights checked against it."""
    import numpy as np
    import scipy.linalg
    import scipy.sparse as sp

    out: dict[str, Any] = {"blas_threads": _blas_threads()}
    small = spec["numpy_inv_items"]
    if small:  # Steck's published recipe inverts with np.linalg.inv: how many matrices it holds at its peak
        rng = np.random.default_rng(0)
        a = rng.random((small, small))
        g = a @ a.T + small * np.eye(small)
        del a
        with ProcessRss() as rss:
            p = np.linalg.inv(g)
        out["numpy_inv"] = {"items": small, "peak_matrices_with_input": 1 + rss.added_mb * 2**20 / (8 * small**2)}
        del g, p
    data = np.load(spec["matrix"])
    users, items, values = data["users"], data["items"], data["r"]
    ids, col = np.unique(items, return_inverse=True)
    n = len(ids)
    x = sp.csr_matrix((values, (users, col)), shape=(int(users.max()) + 1, n))
    with ProcessRss() as rss:
        start = time.perf_counter()
        gram = (x.T @ x).toarray()
        gram_s = time.perf_counter() - start
        start = time.perf_counter()
        gram[np.diag_indices(n)] += spec["l2"]
        p = scipy.linalg.inv(gram)
        del gram
        inv_s = time.perf_counter() - start
        start = time.perf_counter()
        b = p / -np.diag(p)
        del p
        b[np.diag_indices(n)] = 0.0
        weights_s = time.perf_counter() - start
    out.update(
        {
            "items": n,
            "gram_s": gram_s,
            "inverse_s": inv_s,
            "weights_s": weights_s,
            "total_s": gram_s + inv_s + weights_s,
            "peak_mb": rss.peak_mb,
            "added_mb": rss.added_mb,
            "matrix_mb": 8 * n * n / 2**20,
        }
    )
    ours = np.load(spec["ours"])
    src, dst, w = (np.searchsorted(ids, ours["src"]), np.searchsorted(ids, ours["dst"]), ours["w"])
    out["max_abs_weight_diff"] = float(np.abs(b[src, dst] - w).max()) if len(w) else 0.0
    # a sample of rows: is ours' kept set each row's top_n by |weight| (ties at the cut either way)?
    rng = np.random.default_rng(7)
    sample = rng.choice(n, size=min(_CHECK_ROWS, n), replace=False)
    bad = 0
    for row in sample.tolist():
        mine = dst[src == row]
        a = np.abs(b[row])
        k = len(mine)
        cut = np.sort(a)[::-1][k - 1] if k else np.inf
        bad += not (
            k == min(spec["top_n"], int((a > 0).sum()))
            and np.all(a[mine] >= cut - _TIE)
            and set(np.flatnonzero(a > cut + _TIE).tolist()) <= set(mine.tolist())
        )
    out["rows_checked"], out["rows_not_top_n"] = len(sample), bad
    return out


def _run_baseline(spec: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    path = work / "ease-baseline.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_spark.bench.ease", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the EASE baseline failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the benchmark -------------------------------------------------------------------------------


def _repeats_within(first_s: float, repeats: int) -> int:
    return repeats if first_s * repeats <= _REPEAT_BUDGET_S else 1


def bench_ease(
    spark: SparkSession,
    events: int,
    repeats: int,
    warehouse: Callable[[int], tuple[Config, int, float]],
    work: Path,
    warm_up: bool = True,
) -> dict[str, Any]:
    import numpy as np
    from pyspark import StorageLevel

    from recsys_spark.models.cosine import item_cosine
    from recsys_spark.models.ease import ease_memory, fit_ease, solver_threads
    from recsys_spark.models.ratings import cap_user_history, positive_ratings
    from recsys_spark.models.rp3beta import item_rp3beta
    from recsys_spark.storage.store import TableStore

    cfg, written, prepare_s = warehouse(events)
    params = cfg.similarity.model_copy(update={"method": "ease"})
    own, top_n = params.ease, params.top_n_of("ease")
    matrix = (
        TableStore(spark, cfg.storage)
        .read("interaction_matrix")
        .select("user_idx", "item_idx", "confidence")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        nonzeros = matrix.count()  # every contender starts from the cached matrix

        def noop(df: DataFrame) -> None:
            df.write.format("noop").mode("overwrite").save()

        runs: list[dict[str, Any]] = []

        def ours_once() -> None:
            with ProcessRss() as rss:
                start = time.perf_counter()
                fit = fit_ease(matrix, params)
                noop(fit.neighbors)
                total = time.perf_counter() - start
            runs.append(
                {
                    "total_s": total,
                    **{f"{k}_s": v for k, v in fit.seconds.items()},
                    "peak_mb": rss.peak_mb,
                    "added_mb": rss.added_mb,
                }
            )
            runs[-1]["setup_s"] = total - sum(fit.seconds.values())
            runs[-1]["fit"] = fit

        ours_once()
        for _ in range(_repeats_within(runs[0]["total_s"], repeats) - 1):
            ours_once()
        fit = runs[-1].pop("fit")
        for r in runs:
            r.pop("fit", None)
        with solver_threads():
            solve_threads = _blas_threads()

        # the baseline gets the very matrix ours factored: the capped values, and ours' kept weights
        capped = cap_user_history(positive_ratings(matrix, own.confidence, own.epsilon), params.max_user_items, "r")
        t = capped.toArrow()
        np.savez(
            work / "ease-matrix.npz",
            users=t["user_idx"].to_numpy(),
            items=t["item_idx"].to_numpy(),
            r=t["r"].to_numpy(),
        )
        kept = fit.neighbors.select("item_idx", "neighbor_idx", "similarity").toArrow()
        np.savez(
            work / "ease-ours.npz",
            src=kept["item_idx"].to_numpy(),
            dst=kept["neighbor_idx"].to_numpy(),
            w=kept["similarity"].to_numpy(),
        )
        need = 2 * 8 * fit.items**2
        available = _available_bytes()
        threads = solve_threads or spark.sparkContext.defaultParallelism
        if available is not None and available < _MEMORY_HEADROOM * need:
            baseline: dict[str, Any] = {
                "skipped": f"it needs {need / 1e9:.1f} GB (two {fit.items:,}² float64 "
                f"matrices) and the machine had {available / 1e9:.1f} GB available"
            }
        else:
            spec = {
                "matrix": str(work / "ease-matrix.npz"),
                "ours": str(work / "ease-ours.npz"),
                "l2": own.l2,
                "top_n": top_n,
                "numpy_inv_items": min(_NUMPY_INV_ITEMS, fit.items),
            }
            baseline = _run_baseline(spec, work, threads)

        # RP3beta against the cosine job, both on the configured cap and top_n; one untimed run each first
        rp3 = params.model_copy(update={"method": "rp3beta"})
        if warm_up:
            noop(item_cosine(matrix, params))
            noop(item_rp3beta(matrix, rp3))
        t_cos = timed(lambda: noop(item_cosine(matrix, params)), repeats)
        t_rp3 = timed(lambda: noop(item_rp3beta(matrix, rp3)), repeats)
    finally:
        matrix.unpersist()

    med = {
        key: statistics.median(r[key] for r in runs)
        for key in (
            "total_s",
            "gram_s",
            "collect_s",
            "solve_s",
            "prune_s",
            "cooccurrence_s",
            "setup_s",
            "peak_mb",
            "added_mb",
        )
    }
    result: dict[str, Any] = {
        "events": written,
        "nonzeros": nonzeros,
        "items": fit.items,
        "gram_entries": fit.gram_entries,
        "gram_density": fit.gram_entries / (fit.items * (fit.items + 1) / 2),
        "prepare_s": prepare_s,
        "confidence": own.confidence,
        "l2": own.l2,
        "top_n": top_n,
        "max_user_items": params.max_user_items,
        "estimate_mb": ease_memory(fit.items, top_n).total_bytes / 2**20,
        "matrix_mb": 8 * fit.items**2 / 2**20,
        "solve_threads": threads,
        "ours": {**med, "runs": len(runs), "all": runs},
        "baseline": baseline,
        "target": {"ease_within_s": _TARGET_EASE_S, "met": med["total_s"] <= _TARGET_EASE_S},
        "rp3beta": {"what": f"item_rp3beta (alpha {rp3.rp3beta.alpha:g}, beta {rp3.rp3beta.beta:g})", **summary(t_rp3)},
        "cosine": {"what": "item_cosine (configured)", **summary(t_cos)},
        "rp3beta_over_cosine": statistics.median(t_rp3) / statistics.median(t_cos),
    }
    if "total_s" in baseline:
        result["speedup"] = {
            "total": baseline["total_s"] / med["total_s"],
            "gram": baseline["gram_s"] / med["gram_s"],
            "solve": (baseline["inverse_s"] + baseline["weights_s"]) / med["solve_s"],
            "memory": baseline["added_mb"] / med["added_mb"] if med["added_mb"] > 0 else None,
        }
    return result


# -- report --------------------------------------------------------------------------------------


def _s(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def markdown(s: dict[str, Any]) -> list[str]:
    o, b = s["ours"], s["baseline"]
    lines = [
        f"## EASE and RP3beta ({s['events']:,} synthetic events: {s['items']:,} items, {s['nonzeros']:,} "
        f"non-zeros; EASE {s['confidence']}, l2 {s['l2']:g}, top {s['top_n']} by |weight|)",
        "",
        f"The Gram's upper triangle has {s['gram_entries']:,} non-zero entries ({100 * s['gram_density']:.1f}% "
        f"of it). Ours: the Gram in Spark, the in-place Cholesky inverse on the driver with "
        f"{s['solve_threads']} BLAS thread(s), then pruning and the neighbour frame (materialised with the "
        f"`noop` writer); {o['runs']} run(s), median shown. Memory is the resident size of the Python process "
        "(the driver for ours, without the JVM) above its size before the fit.",
        "",
        "| phase | ours s | baseline s | what the baseline does |",
        "|---|---:|---:|---|",
    ]
    has_base = "total_s" in b

    def base(key: str) -> str:
        return _s(b[key]) if has_base else "–"

    base_mb = f"{b['added_mb']:,.0f}" if has_base else "–"
    base_solve = _s(b["inverse_s"] + b["weights_s"]) if has_base else "–"
    lines += [
        f"| Gram X'X | {_s(o['gram_s'])} | {base('gram_s')} | scipy sparse X.T @ X, made dense |",
        f"| collect to the driver | {_s(o['collect_s'])} | – | |",
        f"| solve (B from G) | {_s(o['solve_s'])} | {base_solve} | scipy.linalg.inv (LU), B = -P / diag(P) |",
        f"| prune to top {s['top_n']} by abs(weight) | {_s(o['prune_s'])} | – | (keeps the dense B) |",
        f"| co-occurrence counts, frame | {_s(o['cooccurrence_s'])} | – | |",
        f"| distinct items, job set-up, write | {_s(o['setup_s'])} | – | |",
        f"| **total** | **{_s(o['total_s'])}** | **{base('total_s')}** | |",
        "",
        "| memory (MB) | ours | baseline |",
        "|---|---:|---:|",
        f"| peak RSS added | {o['added_mb']:,.0f} | {base_mb} |",
        f"| estimate logged before the fit | {s['estimate_mb']:,.0f} | |",
        f"| one {s['items']:,}² float64 matrix | {s['matrix_mb']:,.0f} | |",
        "",
    ]
    met = "met" if s["target"]["met"] else "**missed**"
    lines.append(
        f"EASE on this catalogue takes {o['total_s'] / 60:.1f} min (target: minutes, not hours, i.e. under "
        f"{s['target']['ease_within_s'] / 60:.0f} min: {met})."
    )
    if has_base:
        sp = s["speedup"]
        lines[-1] += (
            f" Against the plain EASE ours is {faster(sp['total'])} overall, {faster(sp['gram'])} on the "
            f"Gram and {faster(sp['solve'])} on the solve (Cholesky: half the LU inverse's flops), and "
            f"adds {o['added_mb'] / b['added_mb']:.2f}× its memory."
        )
        inv = b.get("numpy_inv")
        if inv:
            lines[-1] += (
                f" Steck's published recipe inverts with np.linalg.inv, which peaks at "
                f"{inv['peak_matrices_with_input']:.1f} matrices of the catalogue's size with its input "
                f"(measured at {inv['items']:,} items), where the LU baseline holds 2 and ours 1."
            )
        lines += [
            "",
            f"Ours' kept weights differ from the baseline's B by at most {b['max_abs_weight_diff']:.1e}; "
            f"{b['rows_not_top_n']} of {b['rows_checked']} sampled rows are not exactly the baseline's top "
            f"{s['top_n']} by |weight|.",
        ]
    else:
        lines[-1] += f" The plain baseline did not run: {b['skipped']}."
    r, c = s["rp3beta"], s["cosine"]
    lines += [
        "",
        "| same matrix, configured cap and top-N | median s | min–max s | runs |",
        "|---|---:|---:|---:|",
        f"| {r['what']} | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} | {r['runs']} |",
        f"| {c['what']} | {c['median_s']:.2f} | {c['min_s']:.2f}–{c['max_s']:.2f} | {c['runs']} |",
        "",
        f"RP3beta takes {s['rp3beta_over_cosine']:.2f}× the cosine job's time: the same cell kernel, plus two "
        "degree windows before it.",
        "",
    ]
    return lines


if __name__ == "__main__":  # the baseline's fresh interpreter (see _run_baseline)
    print(json.dumps(baseline_ease(json.loads(Path(sys.argv[1]).read_text()))))
