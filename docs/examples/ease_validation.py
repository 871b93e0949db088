"""EASE's l2, confidence and row pruning on a validation carve-out of ML-100K's u1.base alone.

    python docs/examples/ease_validation.py ../shared/data/ml-100k [fold]

Why it exists: `conf/movielens-100k.toml` keeps each item's `similarity.top_n` largest EASE
weights and searches l2 over a grid. Both must be chosen without the test file, so this script
holds out a random 10% of each user's u1.base ratings (seed 7), fits a dense EASE on the other
90%, and scores NDCG@10 on the held-out ratings >= 4 over an a-priori log grid of l2, both value
transforms, and several row prunings. uN.test is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from ease_reference import COLUMNS, ease_weights, ndcg_at_10  # the same closed form and metric

L2_GRID = [100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]
TOP_N = [50, 100, 200, 400, 800, None]  # None: every weight kept


def carve(train: pd.DataFrame, fraction: float = 0.1, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's ``fraction`` of ratings (at least one, if the user has two) as validation."""
    rng = np.random.default_rng(seed)
    key = rng.random(len(train))
    order = train.assign(_key=key).sort_values(["user", "_key"])
    position = order.groupby("user").cumcount()
    size = order.groupby("user")["item"].transform("size")
    held = position < np.where(size >= 2, np.maximum(1, np.floor(size * fraction)), 0)
    return order[~held].drop(columns="_key"), order[held].drop(columns="_key")


def pruned(b: np.ndarray, top_n: int | None) -> np.ndarray:
    """Each row's ``top_n`` largest |weights| kept, the rest zero (what item_neighbors stores)."""
    if top_n is None or top_n >= b.shape[1]:
        return b
    keep = np.argpartition(-np.abs(b), top_n - 1, axis=1)[:, :top_n]
    out = np.zeros_like(b)
    rows = np.arange(b.shape[0])[:, None]
    out[rows, keep] = b[rows, keep]
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[1]) if len(argv) > 1 else Path("../shared/data/ml-100k")
    fold = argv[2] if len(argv) > 2 else "u1"
    fit, valid = carve(pd.read_csv(root / f"{fold}.base", sep="\t", names=COLUMNS))
    users, items = np.sort(fit.user.unique()), np.sort(fit.item.unique())
    row = pd.Series(np.arange(len(users)), index=users)
    col = pd.Series(np.arange(len(items)), index=items)
    held = valid[(valid.rating >= 4) & valid.user.isin(users) & valid.item.isin(items)]
    relevant = {int(row[u]): set(g.item) for u, g in held.groupby("user")}
    print(f"{fold}.base: {len(fit)} ratings to fit, {len(held)} relevant validation ratings of {len(relevant)} users")
    best: tuple[float, str, float] | None = None
    for transform in ("binary", "linear"):
        x = np.zeros((len(users), len(items)))
        x[row[fit.user].to_numpy(), col[fit.item].to_numpy()] = 1.0 if transform == "binary" else fit.rating
        for l2 in L2_GRID:
            b = ease_weights(x, l2)
            values = []
            for top_n in TOP_N:
                scores = x @ pruned(b, top_n)
                scores[x > 0] = -np.inf
                values.append(ndcg_at_10(scores, items, relevant))
            print(
                f"{transform:7s} l2 {l2:8.0f}: " + "  ".join(f"top {n or 'all'} {v:.4f}" for n, v in zip(TOP_N, values))
            )
            if best is None or values[-1] > best[0]:
                best = (values[-1], transform, l2)
    assert best is not None
    print(f"best unpruned: {best[1]} l2 {best[2]:g} (validation NDCG@10 {best[0]:.4f})")


if __name__ == "__main__":
    main(sys.argv)
