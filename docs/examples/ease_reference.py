"""A plain dense-numpy EASE on ML-100K's official folds: the yardstick for the served `ease` lists.

    python docs/examples/ease_reference.py ../shared/data/ml-100k [l2] [binary|linear]

Same protocol as `make ml100k`: train on uN.base (the rating as the value, or 1 with `binary`),
relevant = uN.test ratings >= 4 of users seen in training, the user's training items excluded,
NDCG@10 with binary gains (IDCG over min(|relevant|, 10) hits). No pruning of B, no Spark: it shows
what the closed form gives on the same split, so the pipeline's number can be read as a ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["user", "item", "rating", "ts"]


def ease_weights(x: np.ndarray, l2: float) -> np.ndarray:
    """B = I - P / diag(P) with P = (X'X + l2 I)^-1, diagonal zero (Steck 2019)."""
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


def ndcg_at_10(scores: np.ndarray, items: np.ndarray, relevant: dict[int, set[int]]) -> float:
    """Mean NDCG@10 over ``relevant``'s users (row index -> relevant item ids); ties to the lower item."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    values = []
    for row, rel in relevant.items():
        top = np.lexsort((np.arange(scores.shape[1]), -scores[row]))[:10]
        hits = np.array([items[j] in rel for j in top])
        values.append(discounts[hits].sum() / discounts[: min(len(rel), 10)].sum())
    return float(np.mean(values))


def fold_ndcg(root: Path, fold: str, l2: float, binary: bool) -> float:
    train = pd.read_csv(root / f"{fold}.base", sep="\t", names=COLUMNS)
    test = pd.read_csv(root / f"{fold}.test", sep="\t", names=COLUMNS)
    users, items = np.sort(train.user.unique()), np.sort(train.item.unique())
    row = pd.Series(np.arange(len(users)), index=users)
    col = pd.Series(np.arange(len(items)), index=items)
    x = np.zeros((len(users), len(items)))
    x[row[train.user].to_numpy(), col[train.item].to_numpy()] = 1.0 if binary else train.rating.to_numpy()
    scores = x @ ease_weights(x, l2)
    scores[x > 0] = -np.inf
    held = test[(test.rating >= 4) & test.user.isin(users)]
    relevant = {int(row[u]): set(g.item) for u, g in held.groupby("user")}
    return ndcg_at_10(scores, items, relevant)


def main(argv: list[str]) -> None:
    root = Path(argv[1]) if len(argv) > 1 else Path("../shared/data/ml-100k")
    l2 = float(argv[2]) if len(argv) > 2 else 5000.0
    binary = len(argv) > 3 and argv[3] == "binary"
    folds = ["u1", "u2", "u3", "u4", "u5"]
    values = [fold_ndcg(root, f, l2, binary) for f in folds]
    print(" ".join(f"{f} {v:.4f}" for f, v in zip(folds, values)), f"mean {np.mean(values):.4f}")


if __name__ == "__main__":
    main(sys.argv)
