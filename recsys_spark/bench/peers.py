"""Single-machine peers for the quality benchmark: implicit's ALS and CosineRecommender, and a
plain numpy EASE, on a user x item matrix built from the same Spark split the pipeline evaluates.

Each peer's settings are chosen on the same validation carve-out the pipeline's search uses
(never the test part), by the same metric, so that the comparison is of methods, not of who
peeked. A peer returns each requested user's top-k unseen items as (user_idx, item_idx, rank)
arrays; the benchmark scores them with the pipeline's own metric code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_spark.models.confidence import confidence_array

log = logging.getLogger(__name__)

#: (user_idx, item_idx, rank) arrays of every scored user's top-k.
Lists = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Peer:
    """A peer method: its settings grid and how to fit and rank with one setting."""

    name: str
    grid: list[dict[str, Any]]
    rank: Callable[[sp.csr_matrix, dict[str, Any], np.ndarray, int], Lists]
    """(confidence matrix users x items, settings, users to rank, k) -> their top-k lists."""


def matrix_of(rows: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """users x items CSR of confidences, from an Arrow table of (user_idx, item_idx, confidence)."""
    u = rows.column("user_idx").to_numpy()
    i = rows.column("item_idx").to_numpy()
    c = rows.column("confidence").to_numpy().astype(np.float64)
    return sp.csr_matrix((c, (u, i)), shape=(n_users, n_items))


def top_k_unseen(scores: np.ndarray, seen: sp.csr_matrix, users: np.ndarray, k: int) -> Lists:
    """Each user's k best unseen items from a dense users x items score block (ties: lower item id)."""
    scores = scores.astype(np.float64, copy=True)
    for row, u in enumerate(users):
        scores[row, seen.indices[seen.indptr[u] : seen.indptr[u + 1]]] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out_u, out_i, out_r = [], [], []
    for row, u in enumerate(users):
        cand = part[row]
        cand = cand[np.isfinite(scores[row, cand])]
        order = np.lexsort((cand, -scores[row, cand]))
        ranked = cand[order]
        out_u.append(np.full(len(ranked), u))
        out_i.append(ranked)
        out_r.append(np.arange(1, len(ranked) + 1))
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_r)


def _in_blocks(users: np.ndarray, block: int) -> Iterable[np.ndarray]:
    for start in range(0, len(users), block):
        yield users[start : start + block]


def ease_rank(x: sp.csr_matrix, params: dict[str, Any], users: np.ndarray, k: int) -> Lists:
    """EASE (Steck 2019) in dense numpy: B = I - P / diag(P), P = (X'X + l2 I)^-1; scores x_u B."""
    values = x.copy()
    values.data = confidence_array(values.data, params["confidence"])
    gram = (values.T @ values).toarray()
    gram[np.diag_indices_from(gram)] += params["l2"]
    from recsys_spark.models.ease import solver_threads

    with solver_threads():  # every core, as our solve gets: the session leaves the driver one BLAS thread
        p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    parts = [top_k_unseen(values[block].toarray() @ b, x, block, k) for block in _in_blocks(users, 2048)]
    return tuple(np.concatenate(c) for c in zip(*parts))  # type: ignore[return-value]


def implicit_als_rank(x: sp.csr_matrix, params: dict[str, Any], users: np.ndarray, k: int) -> Lists:
    """implicit's CPU ALS (conjugate gradient) on confidence 1 + alpha x r, r the transformed value."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    values = x.copy()
    values.data = confidence_array(values.data, params.get("confidence", "binary"))
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params["factors"],
            regularization=params["regularization"],
            alpha=params["alpha"],
            iterations=params.get("iterations", 15),
            random_state=7,
            use_gpu=False,
        )
        model.fit(values.tocsr(), show_progress=False)
        ids, _ = model.recommend(users, x[users], N=k, filter_already_liked_items=True)
    return _flat(users, ids)


def implicit_cosine_rank(x: sp.csr_matrix, params: dict[str, Any], users: np.ndarray, k: int) -> Lists:
    """implicit's item-item CosineRecommender with K neighbours, on binary values."""
    from implicit.nearest_neighbours import CosineRecommender

    binary = x.copy()
    binary.data[:] = 1.0
    model = CosineRecommender(K=params["K"])
    model.fit(binary.tocsr(), show_progress=False)
    ids, _ = model.recommend(users, binary[users], N=k, filter_already_liked_items=True)
    return _flat(users, ids)


def _flat(users: np.ndarray, ids: np.ndarray) -> Lists:
    """implicit's (users x N) id matrix, -1 padded, as flat (user, item, rank) arrays."""
    ranks = np.tile(np.arange(1, ids.shape[1] + 1), (len(users), 1))
    keep = ids >= 0
    return np.repeat(users, ids.shape[1]).reshape(ids.shape)[keep], ids[keep], ranks[keep]


#: implicit ALS's random search: this many settings, drawn once from the ranges below (seeded).
IMPLICIT_ALS_TRIALS = 24
_IMPLICIT_FACTORS = (32, 64, 128)
_IMPLICIT_REGULARIZATION = (0.05, 200.0)  # implicit's penalty is not scaled by the user's count, as MLlib's is
_IMPLICIT_ALPHA = (0.5, 50.0)
_CONFIDENCES = ("binary", "linear", "log")


def implicit_als_grid(trials: int = IMPLICIT_ALS_TRIALS, seed: int = 7) -> list[dict[str, Any]]:
    """``trials`` implicit ALS settings, log-uniform in the penalty and alpha, as our ALS search draws them.

    A random draw rather than the full product grid (3 x 5 x 3 x 3 = 135 points): on ML-100K a fit
    with validation scoring takes 2-4 s, so the grid cost ~7 minutes a split, while 24 draws give
    the peer twice our own search's budget (12 short fits and 4 full ones)."""
    from recsys_spark.tuning.search import log_uniform

    rng = np.random.default_rng([seed, 2])
    return [
        {
            "factors": int(rng.choice(_IMPLICIT_FACTORS)),
            "regularization": round(log_uniform(rng, *_IMPLICIT_REGULARIZATION), 4),
            "alpha": round(log_uniform(rng, *_IMPLICIT_ALPHA), 4),
            "confidence": str(rng.choice(_CONFIDENCES)),
        }
        for _ in range(trials)
    ]


def peers(ease_l2: list[float], quick: bool, ease_confidence: Iterable[str] = ("binary", "linear")) -> list[Peer]:
    """The peers and their settings to choose from (tiny with ``quick``): numpy EASE gets exactly
    our EASE search's grid, so the two differ only in how they are computed."""
    if quick:
        return [
            Peer(
                "implicit_als",
                [{"factors": 8, "regularization": 1.0, "alpha": 1.0, "iterations": 3}],
                implicit_als_rank,
            ),
            Peer("implicit_cosine", [{"K": 20}], implicit_cosine_rank),
            Peer("numpy_ease", [{"confidence": "binary", "l2": 100.0}], ease_rank),
        ]
    return [
        Peer("implicit_als", implicit_als_grid(), implicit_als_rank),
        Peer("implicit_cosine", [{"K": k} for k in (20, 50, 100, 200, 400)], implicit_cosine_rank),
        Peer("numpy_ease", [{"confidence": c, "l2": l2} for c in ease_confidence for l2 in ease_l2], ease_rank),
    ]
