"""A compiled loop of conjugate-gradient steps on a batch of ALS rows (numba).

Why a compiled loop rather than numpy: vectorised over a whole block, each CG step makes three
passes over a (pairs, rank) array (the repeated search direction, the per-pair dot products, the
weighted sums back to rows), each a fresh 40 MB temporary at 300k pairs and rank 32. Row by row,
a row's pairs and vectors stay in cache and the two products fuse into one pass; on one block of
300k pairs, 25k rows, rank 32 the loop takes 0.04 s against numpy's 0.17-0.36 s (the same
machine, back to back), which is what makes a half-iteration cost less than Spark's scheduling
of it. The arithmetic is :func:`recsys_spark.models.least_squares.cg_factors`'s.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit

__all__ = ["cg_rows"]

#: numba caches compiled code beside the source file; shipped in a --py-files zip there is no
#: such file, and asking for a cache would fail the first call, so each worker process compiles
#: once instead (about a second).
_CACHE = os.path.isfile(__file__)


@njit(cache=_CACHE, fastmath=True, nogil=True)
def cg_rows(
    offsets: np.ndarray,
    cols: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    fixed: np.ndarray,
    lam: np.ndarray,
    gram: np.ndarray,
    use_gram: bool,
    x: np.ndarray,
    steps: int,
) -> np.ndarray:  # pragma: no cover - compiled; checked against the exact solve in the tests
    """``steps`` CG steps on each row u's system (G + Σ_j weight_j y_j y_jᵀ + lam_u I) x_u = Σ_j
    target_j y_j, j over ``offsets[u]:offsets[u + 1]`` and y_j = ``fixed[cols[j]]``, G = ``gram``
    when ``use_gram``; ``x`` (rows, rank) is the start and is updated in place."""
    rows, rank = x.shape
    r = np.empty(rank)
    p = np.empty(rank)
    ap = np.empty(rank)
    for u in range(rows):
        lo, hi = offsets[u], offsets[u + 1]
        xu = x[u]
        for a in range(rank):
            s = lam[u] * xu[a]
            if use_gram:
                for b in range(rank):
                    s += gram[a, b] * xu[b]
            r[a] = -s
        for j in range(lo, hi):
            y = fixed[cols[j]]
            d = 0.0
            for a in range(rank):
                d += y[a] * xu[a]
            c = target[j] - weight[j] * d
            for a in range(rank):
                r[a] += c * y[a]
        rs = 0.0
        for a in range(rank):
            p[a] = r[a]
            rs += r[a] * r[a]
        for _ in range(steps):
            if rs <= 0.0:
                break
            for a in range(rank):
                s = lam[u] * p[a]
                if use_gram:
                    for b in range(rank):
                        s += gram[a, b] * p[b]
                ap[a] = s
            for j in range(lo, hi):
                y = fixed[cols[j]]
                d = 0.0
                for a in range(rank):
                    d += y[a] * p[a]
                d *= weight[j]
                for a in range(rank):
                    ap[a] += d * y[a]
            curvature = 0.0
            for a in range(rank):
                curvature += p[a] * ap[a]
            if curvature <= 0.0:
                break
            step = rs / curvature
            rs_next = 0.0
            for a in range(rank):
                xu[a] += step * p[a]
                r[a] -= step * ap[a]
                rs_next += r[a] * r[a]
            beta = rs_next / rs
            for a in range(rank):
                p[a] = r[a] + beta * p[a]
            rs = rs_next
    return x
