"""Top-k for all users: ``blocked_top_k`` against MLlib's ``ALSModel.recommendForAllUsers`` (plus the
same seen-item filter) on the same factors, as a speed ratio; a sample of users is checked for equal
results, and the blocked path's GFLOP/s are compared with a one-thread numpy GEMM."""

from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_spark.bench._common import BenchContext, PeakRss, faster, summary, timed

if TYPE_CHECKING:
    import numpy as np
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import Config

TITLE = "Top-k for all users"
#: Size options: name -> (full default, --quick value, help).
SIZES = {
    "topk_users": (50_000, 2_000, "users of the top-k benchmark"),
    "topk_items": (20_000, 1_000, "items of the top-k benchmark"),
}


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_topk(
        ctx.spark, ctx.cfg, ctx.work, ctx.sizes["topk_users"], ctx.sizes["topk_items"], rank=32, repeats=ctx.repeats
    )


# -- blocked top-k vs MLlib ----------------------------------------------------------------------

_TOPK_TARGET_SPEEDUP = 4.0
_TOPK_SEEN_PER_USER = 12
_TOPK_CHECK_USERS = 200
_NEAR_TIE = 1e-4


def _seen_pairs(rng: np.random.Generator, n_users: int, n_items: int, per_user: int) -> tuple[np.ndarray, np.ndarray]:
    """About ``per_user`` random distinct items per user: (users, items) int32 arrays, sorted."""
    import numpy as np

    users = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    items = rng.integers(0, n_items, size=len(users))
    pairs = np.unique(users * n_items + items)
    return (pairs // n_items).astype(np.int32), (pairs % n_items).astype(np.int32)


def _write_factors(path: Path, factors: np.ndarray) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(factors.ravel())
    vectors = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, factors.shape[1], dtype=np.int32)), flat)
    pq.write_table(pa.table({"id": pa.array(np.arange(len(factors), dtype=np.int32)), "features": vectors}), path)


def _als_model(spark: SparkSession, user_factors: DataFrame, item_factors: DataFrame, rank: int) -> ALSModel:
    """An MLlib ALSModel holding exactly these factors, keyed by the bench's ``user``/``item`` columns."""
    from recsys_spark.models.als import als_model_from_factors

    return als_model_from_factors(user_factors, item_factors, rank, "user", "item")


def _mllib_top_k(recommendations: DataFrame, seen: DataFrame, k: int) -> DataFrame:
    """recommendForAllUsers output minus each user's seen items, best k kept, as (query, target, score, rank).

    MLlib returns each list best first, so dropping seen items from the array and slicing keeps the
    order (no second sort).
    """
    from pyspark.sql import functions as F

    lists = seen.groupBy(F.col("query").alias("user")).agg(F.collect_list("target").alias("seen"))
    kept = recommendations.join(lists, "user", "left").select(
        "user",
        F.slice(
            F.filter("recommendations", lambda r: ~F.coalesce(F.array_contains("seen", r["item"]), F.lit(False))), 1, k
        ).alias("recs"),
    )
    return kept.select(F.col("user").alias("query"), F.posexplode("recs").alias("pos", "r")).select(
        "query",
        F.col("r.item").alias("target"),
        F.col("r.rating").alias("score"),
        (F.col("pos") + 1).cast("int").alias("rank"),
    )


def _near_ties(differing: set[int], scores: np.ndarray, kth: float) -> bool:
    """Whether every item in which two top-k lists differ scores within _NEAR_TIE of the k-th score."""
    return all(abs(scores[i] - kth) < _NEAR_TIE for i in differing)


def _compare_top_k(
    ours: dict[int, dict[int, float]],
    theirs: dict[int, dict[int, float]],
    users: np.ndarray,
    items: np.ndarray,
    seen: dict[int, set[int]],
    sample: list[int],
    k: int,
) -> dict[str, Any]:
    """Same top-k item sets per user, except where the differing items are near-ties at the k-th score."""
    import numpy as np

    exact = users[sample].astype(np.float64) @ items.T.astype(np.float64)
    counts = {"identical": 0, "near_tie_only": 0, "mismatched": 0, "blocked_vs_exact_mismatched": 0}
    max_diff = 0.0
    for row, u in enumerate(sample):
        s = exact[row].copy()
        s[list(seen.get(u, ()))] = -np.inf
        kth = -np.partition(-s, k - 1)[k - 1]
        reference = set(np.flatnonzero(s >= kth).tolist())
        a, b = set(ours.get(u, {})), set(theirs.get(u, {}))
        if len(a) != k or len(b) != k:
            counts["mismatched"] += 1
        elif a == b:
            counts["identical"] += 1
        elif _near_ties(a ^ b, s, kth):
            counts["near_tie_only"] += 1
        else:
            counts["mismatched"] += 1
        if len(a) != k or not (a <= reference or _near_ties(a ^ reference, s, kth)):
            counts["blocked_vs_exact_mismatched"] += 1
        max_diff = max([max_diff, *(abs(ours[u][i] - theirs[u][i]) for i in a & b)])
    return {"users_checked": len(sample), **counts, "max_abs_score_diff": max_diff, "near_tie": _NEAR_TIE}


def gemm_rate(rank: int, rows: int = 4096, cols: int = 16384, repeats: int = 5) -> dict[str, Any]:
    """numpy float32 GEMM (rows x rank @ rank x cols) in the driver, the ceiling of one scoring task."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, rank), dtype=np.float32)
    b = rng.standard_normal((rank, cols), dtype=np.float32)
    out = np.empty((rows, cols), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = timed(lambda: np.matmul(a, b, out=out), repeats)
    return {
        "shape": f"{rows}x{rank} @ {rank}x{cols}",
        **summary(times),
        "gflops": 2 * rows * cols * rank / statistics.median(times) / 1e9,
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
    }


def bench_topk(
    spark: SparkSession,
    cfg: Config,
    work: Path,
    n_users: int,
    n_items: int,
    rank: int,
    repeats: int,
    k: int = 100,
    seed: int = 42,
) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from recsys_spark.kernels.blocked_topk import BlockShape, blocked_top_k
    from recsys_spark.models.als import blas_in_use

    rng = np.random.default_rng(seed)
    scale = rank**-0.25  # scores have unit variance
    users = rng.standard_normal((n_users, rank), dtype=np.float32) * np.float32(scale)
    items = rng.standard_normal((n_items, rank), dtype=np.float32) * np.float32(scale)
    seen_u, seen_i = _seen_pairs(rng, n_users, n_items, _TOPK_SEEN_PER_USER)
    max_seen = int(np.bincount(seen_u, minlength=n_users).max())
    folder = work / "topk"
    folder.mkdir(parents=True, exist_ok=True)
    _write_factors(folder / "users.parquet", users)
    _write_factors(folder / "items.parquet", items)
    pq.write_table(pa.table({"query": seen_u, "target": seen_i}), folder / "seen.parquet")

    # both contenders read the same cached frames, partitioned like the factors of a model this
    # project's ALS fits (als.num_*_blocks, else Spark's default parallelism)
    blocks = max(1, spark.sparkContext.defaultParallelism)
    uf = (
        spark.read.parquet(f"file://{folder / 'users.parquet'}")
        .repartition(cfg.als.num_user_blocks or blocks)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    itf = (
        spark.read.parquet(f"file://{folder / 'items.parquet'}")
        .repartition(cfg.als.num_item_blocks or blocks)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    seen = spark.read.parquet(f"file://{folder / 'seen.parquet'}").persist(StorageLevel.MEMORY_AND_DISK)
    uf.count(), itf.count(), seen.count()
    model = _als_model(spark, uf, itf, rank)
    shape = BlockShape(cfg.candidates.user_block, cfg.candidates.item_block)
    targets = itf.select(F.col("id").alias("target"), F.col("features").alias("vector"))

    def blocked_df(queries: DataFrame) -> DataFrame:
        return blocked_top_k(
            queries.select(F.col("id").alias("query"), F.col("features").alias("vector")),
            targets,
            k,
            exclude=seen,
            shape=shape,
        )

    def blocked() -> None:
        blocked_df(uf).write.format("noop").mode("overwrite").save()

    def mllib() -> None:
        _mllib_top_k(model.recommendForAllUsers(k + max_seen), seen, k).write.format("noop").mode("overwrite").save()

    peer, seen_csr = _implicit_model(users, items, seen_u, seen_i, blocks)
    all_users = np.arange(n_users)

    def implicit_top_k() -> None:
        peer.recommend(all_users, seen_csr, N=k, filter_already_liked_items=True)

    try:
        # the check runs first and doubles as the warm-up of both code paths (JIT, Python workers)
        sample = sorted(rng.choice(n_users, size=min(_TOPK_CHECK_USERS, n_users), replace=False).tolist())
        subset = spark.createDataFrame([(u,) for u in sample], "id INT")

        def collected(df: DataFrame) -> dict[int, dict[int, float]]:
            out: dict[int, dict[int, float]] = {}
            for r in df.collect():
                out.setdefault(r["query"], {})[r["target"]] = r["score"]
            return out

        ours = collected(blocked_df(uf.join(subset, "id", "left_semi")))
        theirs = collected(
            _mllib_top_k(model.recommendForUserSubset(subset.select(F.col("id").alias("user")), k + max_seen), seen, k)
        )
        seen_sets: dict[int, set[int]] = {}
        for u, i in zip(seen_u.tolist(), seen_i.tolist()):
            seen_sets.setdefault(u, set()).add(i)
        check = _compare_top_k(ours, theirs, users, items, seen_sets, sample, k)
        ids, scores = peer.recommend(np.asarray(sample), seen_csr[sample], N=k, filter_already_liked_items=True)
        peer_lists = {
            u: {int(i): float(v) for i, v in zip(ids[row], scores[row]) if i >= 0} for row, u in enumerate(sample)
        }
        check_implicit = _compare_top_k(ours, peer_lists, users, items, seen_sets, sample, k)

        gemm = gemm_rate(rank)
        kernel = _kernel_rate(users, items, seen_u, seen_i, k, shape.query_block)
        memory: dict[str, float] = {}
        times: dict[str, list[float]] = {}
        # no separate warm-up run: the checks above ran every contender's code path on a user subset
        # (Python workers, JIT), and a full extra run of MLlib would cost the suite ~a minute
        for name, fn in (("blocked", blocked), ("mllib", mllib), ("implicit", implicit_top_k)):
            with PeakRss() as rss:
                times[name] = timed(fn, repeats)
            memory[name] = rss.added_mb
        t_blocked, t_mllib, t_implicit = times["blocked"], times["mllib"], times["implicit"]
    finally:
        for df in (uf, itf, seen):
            df.unpersist()
        shutil.rmtree(folder, ignore_errors=True)
    b, m, p = statistics.median(t_blocked), statistics.median(t_mllib), statistics.median(t_implicit)
    flops = 2 * n_users * n_items * rank
    gflops = flops / b / 1e9
    return {
        "users": n_users,
        "items": n_items,
        "rank": rank,
        "k": k,
        "seen_pairs": len(seen_u),
        "max_seen": max_seen,
        "parallelism": blocks,
        "blocked": {
            "what": f"blocked_top_k(k={k}, exclude=seen), blocks {shape.query_block} x {shape.target_block}",
            **summary(t_blocked),
            "gflops": gflops,
        },
        "mllib": {
            "what": f"ALSModel.recommendForAllUsers({k + max_seen}) minus seen items, top {k}",
            **summary(t_mllib),
            "jvm_blas": blas_in_use(spark),
        },
        "implicit": {
            "what": f"implicit {_implicit_version()} AlternatingLeastSquares.recommend(all users, N={k}, "
            f"filter_already_liked_items=True), num_threads={blocks}",
            **summary(t_implicit),
            "gflops": flops / p / 1e9,
        },
        "peak_rss_added_mb": memory,
        "speedup": m / b,
        "vs_implicit": p / b,
        "check_implicit": check_implicit,
        "target": {
            "speedup_at_least": _TOPK_TARGET_SPEEDUP,
            "met": m / b >= _TOPK_TARGET_SPEEDUP,
            "at_users": 50_000,
            "at_items": 20_000,
            "measured_at_target_size": n_users >= 50_000 and n_items >= 20_000,
        },
        "check": check,
        "kernel": {
            **kernel,
            "percent_of_blocked_wall": 100 * kernel["seconds_per_score"] * n_users * n_items / blocks / b,
        },
        "gemm": {
            **gemm,
            "percent_one_thread": 100 * gflops / gemm["gflops"],
            "percent_all_cores": 100 * gflops / (gemm["gflops"] * blocks),
        },
    }


def _kernel_rate(
    users: np.ndarray, items: np.ndarray, seen_u: np.ndarray, seen_i: np.ndarray, k: int, query_block: int
) -> dict[str, Any]:
    """The numpy kernel alone (GEMM, masking, selection) on one user block against all items, in the driver.

    Splits the blocked job's time into kernel work and everything Spark adds (shuffles, Arrow
    transfer, Python workers): the profile behind the GFLOP/s figure.
    """
    import numpy as np

    from recsys_spark.kernels.blocked_topk import score_block

    n = min(query_block, len(users))
    mask = seen_u < n
    ids = np.arange(len(items))
    score_block(users[:n], items, ids, k, seen_u[mask], seen_i[mask])  # warm-up
    times = timed(lambda: score_block(users[:n], items, ids, k, seen_u[mask], seen_i[mask]), 3)
    t = statistics.median(times)
    gemm_times = timed(lambda: users[:n] @ items.T, 3)
    return {
        "users": n,
        "items": len(items),
        "median_s": t,
        "seconds_per_score": t / (n * len(items)),
        "gflops": 2 * n * len(items) * users.shape[1] / t / 1e9,
        "gemm_share_percent": 100 * statistics.median(gemm_times) / t,
    }


def _implicit_version() -> str:
    import implicit

    return implicit.__version__


def _implicit_model(
    users: np.ndarray, items: np.ndarray, seen_u: np.ndarray, seen_i: np.ndarray, threads: int
) -> tuple[Any, Any]:
    """implicit's CPU ALS model holding exactly these factors, and the seen pairs as its user x item CSR."""
    import numpy as np
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=users.shape[1], num_threads=threads, random_state=0)
    model.user_factors, model.item_factors = users, items
    seen = sp.csr_matrix(
        (np.ones(len(seen_u), dtype=np.float32), (seen_u, seen_i)), shape=(users.shape[0], items.shape[0])
    )
    return model, seen


def markdown(tk: dict[str, Any]) -> list[str]:
    c, ci, g, kn, target = tk["check"], tk["check_implicit"], tk["gemm"], tk["kernel"], tk["target"]
    mem = tk["peak_rss_added_mb"]
    lines = [
        f"## Top-k for all users ({tk['users']:,} users × {tk['items']:,} items, rank {tk['rank']}, k = {tk['k']})",
        "",
        f"Same random factors and the same {tk['seen_pairs']:,} seen (user, item) pairs (at most "
        f"{tk['max_seen']} per user) for every contender; Spark results are materialised with the `noop` "
        f"writer. MLlib asks for k + {tk['max_seen']} items and drops seen ones, so all return the unseen top "
        f"{tk['k']}. Spark runs {tk['parallelism']} task threads, implicit as many threads. MLlib's JVM BLAS: "
        f"{tk['mllib']['jvm_blas']}. Peak RSS added: the process tree's (driver, JVM, Python workers) peak "
        "resident memory during the timed runs, above what it held before them.",
        "",
        "| job | median s | min–max s | runs | GFLOP/s | peak RSS added MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    flops = 2 * tk["users"] * tk["items"] * tk["rank"]
    for key in ("mllib", "blocked", "implicit"):
        r = tk[key]
        lines.append(
            f"| {r['what']} | {r['median_s']:.1f} | {r['min_s']:.1f}–{r['max_s']:.1f} | {r['runs']} | "
            f"{flops / r['median_s'] / 1e9:.2f} | {mem[key]:,.0f} |"
        )
    met = "met" if target["met"] else "**missed**"
    size = (
        ""
        if target["measured_at_target_size"]
        else f"; the target is for {target['at_users']:,} users × {target['at_items']:,} items"
    )

    def agreement(chk: dict[str, Any], other: str) -> str:
        return (
            f"against {other} the top-k item sets of {chk['users_checked']} sampled users agree for "
            f"{chk['identical'] + chk['near_tie_only']} ({chk['identical']} identical, {chk['near_tie_only']} "
            f"differing only at near-ties, |Δscore| < {chk['near_tie']:g}) and disagree for {chk['mismatched']}; "
            f"the largest score difference on shared items is {chk['max_abs_score_diff']:.1e}"
        )

    lines += [
        "",
        f"The blocked top-k is {faster(tk['speedup'])} than recommendForAllUsers "
        f"(target ≥ {target['speedup_at_least']:.0f}× faster: {met}{size}) and {faster(tk['vs_implicit'])} "
        f"than implicit. Results: {agreement(c, 'MLlib')}; {agreement(ci, 'implicit')}. "
        f"{c['blocked_vs_exact_mismatched']} blocked lists differ from an exact float64 top-k beyond near-ties.",
        "",
        f"Throughput: the blocked path computes {flops / 1e9:,.1f} GFLOP of scores at "
        f"**{tk['blocked']['gflops']:.3g} GFLOP/s**, {g['percent_all_cores']:.2g}% of {tk['parallelism']} "
        f"threads of the machine's measured numpy float32 GEMM ({g['shape']}: {g['gflops']:.1f} GFLOP/s per "
        f"thread, OPENBLAS_NUM_THREADS={g['openblas_num_threads']}); target ≥ 30%: "
        f"{'met' if g['percent_all_cores'] >= 30 else '**missed**'}.",
        "",
        f"Profile: the numpy kernel alone (one block of {kn['users']:,} users against all {kn['items']:,} items, "
        f"one thread, in the driver) runs at {kn['gflops']:.2f} GFLOP/s, {kn['gemm_share_percent']:.0f}% of "
        f"it in the GEMM and the rest in masking seen items and selecting the k best. Spread over "
        f"{tk['parallelism']} threads it would account for {kn['percent_of_blocked_wall']:.0f}% of the blocked "
        "job's wall time; the remainder is what Spark adds (grouping factors into blocks, shuffles, Arrow "
        f"transfer to Python workers, writing the {tk['users'] * tk['k']:,} result rows). At rank "
        f"{tk['rank']} a score costs only {2 * tk['rank']} flops: reaching 30% of GEMM throughput would leave "
        f"{2 * tk['rank'] / (0.3 * g['gflops']) - 2 * tk['rank'] / g['gflops']:.1f} ns per score for "
        "everything else, less than one pass of numpy over the scores costs, so selection, not "
        "arithmetic, bounds this kernel at low rank.",
        "",
    ]
    return lines
