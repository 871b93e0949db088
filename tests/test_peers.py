"""The quality benchmark's single-machine peers: their lists are what they claim, against our own kernels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_spark.bench import peers
from recsys_spark.models.ease import ease_weights_in_place

if TYPE_CHECKING:
    from collections.abc import Callable


def _random_matrix(seed: int, users: int = 40, items: int = 25, density: float = 0.2) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density) * rng.integers(1, 6, (users, items))
    return sp.csr_matrix(dense.astype(np.float64))


def test_top_k_unseen_skips_seen_items_and_breaks_ties_to_the_lower_id() -> None:
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=float))
    scores = np.array([[9.0, 2.0, 2.0, 1.0, 8.0], [0.5, 0.5, 3.0, 0.5, 0.0]])
    users, items, ranks = peers.top_k_unseen(scores, seen, np.array([0, 1]), 3)
    got = {(int(u), int(r)): int(i) for u, i, r in zip(users, items, ranks)}
    assert got == {(0, 1): 1, (0, 2): 2, (0, 3): 3, (1, 1): 2, (1, 2): 0, (1, 3): 1}


@pytest.mark.parametrize("confidence", ["binary", "linear"])
def test_the_numpy_ease_peer_ranks_by_the_scores_of_our_in_place_solve(confidence: str) -> None:
    x = _random_matrix(3)
    users, k, l2 = np.arange(x.shape[0]), 5, 7.0
    values = x.toarray() if confidence == "linear" else (x.toarray() > 0).astype(float)
    weights = ease_weights_in_place(np.triu(values.T @ values).copy(), l2)
    want = peers.top_k_unseen(values @ weights, x, users, k)
    got = peers.ease_rank(x, {"confidence": confidence, "l2": l2}, users, k)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rank", [peers.implicit_als_rank, peers.implicit_cosine_rank])
def test_the_implicit_peers_return_k_ranked_unseen_items_per_user(rank: Callable[..., Any]) -> None:
    pytest.importorskip("implicit")
    x = _random_matrix(5, users=60, items=40)
    users, k = np.arange(0, 60, 3), 6
    params = (
        {"factors": 4, "regularization": 0.1, "alpha": 1.0, "iterations": 3}
        if (rank is peers.implicit_als_rank)
        else {"K": 10}
    )
    u, i, r = rank(x, params, users, k)
    assert set(u.tolist()) <= set(users.tolist())
    for user in users:
        mine = r[u == user]
        assert mine.tolist() == list(range(1, len(mine) + 1)) and len(mine) <= k
        assert not set(i[u == user].tolist()) & set(x[user].indices.tolist())
    assert len(u) > len(users)  # most users get a list


def test_the_implicit_als_grid_is_seeded_and_inside_its_ranges() -> None:
    grid = peers.implicit_als_grid(trials=30, seed=3)
    assert grid == peers.implicit_als_grid(trials=30, seed=3) != peers.implicit_als_grid(trials=30, seed=4)
    assert all(0.05 <= g["regularization"] <= 200.0 and 0.5 <= g["alpha"] <= 50.0 for g in grid)
    assert {g["factors"] for g in grid} <= {32, 64, 128} and {g["confidence"] for g in grid} <= {
        "binary",
        "linear",
        "log",
    }
