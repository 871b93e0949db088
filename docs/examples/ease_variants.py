"""Variants of EASE on ml-latest-small's random split, chosen on the validation carve-out alone.

    python docs/examples/ease_variants.py edlae ../shared/data/ml-latest-small [scratch folder]
    python docs/examples/ease_variants.py prune ../shared/data/ml-latest-small [scratch folder]

``prune``: how the served table's budget of weights is spent (``similarity.ease.prune``), "global"
(largest |B_ij|) against "score" (largest |B_ij| * sqrt(G_ii)), 500 and 2,000 weights per item on
average, at the l2 and transform the config ships; the project's own pruning code, scored on the
carve-out and on the test part. Five minutes on 2 cores. On 2026-12-07: carve-out 0.1422 / 0.1424
(500, global / score) and 0.1426 / 0.1422 (2,000); test part 0.3338 / 0.3361 and 0.3349 / 0.3349,
0.3353 unpruned.

``edlae``, why it exists: EDLAE (Steck, NeurIPS 2020, "Autoencoders that don't overfit towards the identity")
is EASE with an item-dependent penalty, P = (G + l2 I + p / (1 - p) diag(G))^-1 and
B = I - P diag(1 / diag(P)), p the dropout probability (p = 0 is EASE). It was tried as a way past
the numpy EASE peer on this split (README, "Where we fall short"). This script is that check, made
with the project's own pieces so that its figures compare with `make quality`'s: the ingest and
random 20% split of `conf/ml-latest-small.toml`, the search's carve-out (`tuning.validation_fraction`
of each user's training items, seed 7), the metric code, and EASE's in-place solve (EDLAE only scales
the Gram's diagonal by 1 / (1 - p) before it). Every (l2, p) of the grid is fitted densely on the
carve-out's fitting part and scored by NDCG@10 on its held-out items, unpruned and with the
2,000-per-item global pruning the config ships; the best plain EASE and the best EDLAE by the pruned
carve-out score (the served table is pruned) are then refitted on the whole training part and scored on
the test part. About a minute a grid point on 2 cores, 45 minutes in all. On 2026-12-07 it chose
EASE at l2 3,000 (carve-out 0.1426 pruned) and EDLAE at l2 2,000, p 0.8 (0.1440), which scored
0.3349 and 0.3248 pruned on the test part (0.3353 and 0.3263 unpruned).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]
L2_GRID = [1000.0, 2000.0, 3000.0, 5000.0]
DROPOUT_GRID = [0.0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9]
KEPT_PER_ITEM = 2000  # similarity.ease.top_n with prune = "global", as conf/ml-latest-small.toml ships


def edlae_weights(values: sp.csr_matrix, l2: float, dropout: float) -> np.ndarray:
    """EDLAE's B (EASE's at dropout 0): G_ii + p / (1 - p) G_ii = G_ii / (1 - p), then EASE's solve."""
    from recsys_spark.models.ease import ease_weights_in_place, solver_threads

    gram = np.triu((values.T @ values).toarray())
    gram.reshape(-1)[:: len(gram) + 1] /= 1.0 - dropout
    with solver_threads():
        return ease_weights_in_place(gram, l2)


def pruned(b: np.ndarray) -> sp.csr_matrix:
    """The n x KEPT_PER_ITEM entries largest in |B| anywhere (the served table's global pruning), n
    the items the fit saw (the served fit solves those alone; B's rows of the others are 0)."""
    from recsys_spark.models.ease import largest_abs_overall

    n = int(np.count_nonzero(np.abs(b).sum(axis=1)))
    rows, cols = largest_abs_overall(b, n * min(KEPT_PER_ITEM, n - 1))
    return sp.csr_matrix((b[rows, cols], (rows, cols)), shape=b.shape)


def top_lists(values: sp.csr_matrix, seen: sp.csr_matrix, b: Any, users: np.ndarray, k: int) -> tuple:
    from recsys_spark.bench.peers import top_k_unseen

    scores = values[users] @ b
    return top_k_unseen(scores.toarray() if sp.issparse(scores) else scores, seen, users, k)


PRUNE_BUDGETS = [500, 2000]


def served_pruning(b: np.ndarray, values: sp.csr_matrix, prune: str, per_item: int) -> sp.csr_matrix:
    """B pruned by the project's own code, over the items the fit saw, as the similarity job prunes
    the served table (its solve holds those items alone)."""
    from recsys_spark.models.ease import _pruned

    norms = np.sqrt(np.asarray(values.multiply(values).sum(axis=0)).ravel())
    seen = np.flatnonzero(norms > 0)
    rows, cols, kept = _pruned(b[np.ix_(seen, seen)], per_item, prune, {}, norms[seen])  # type: ignore[arg-type]
    return sp.csr_matrix((kept, (seen[rows], seen[cols])), shape=b.shape)


def main(argv: list[str]) -> None:
    mode = argv[1] if len(argv) > 1 else "edlae"
    if mode not in ("edlae", "prune"):
        raise SystemExit(f"usage: {argv[0]} edlae|prune [data folder] [scratch folder]; got {mode!r}")
    data = Path(argv[2]) if len(argv) > 2 else REPO.parent / "shared" / "data" / "ml-latest-small"
    work = Path(argv[3]) if len(argv) > 3 else Path(tempfile.mkdtemp(prefix="ease-"))
    sys.path.insert(0, str(REPO))
    from recsys_spark import tables as T
    from recsys_spark.bench.peers import matrix_of
    from recsys_spark.bench.quality import _frame
    from recsys_spark.config.loader import load_config
    from recsys_spark.evaluation.baselines import item_popularity
    from recsys_spark.evaluation.driver_metrics import ranking_metric
    from recsys_spark.evaluation.scoring import evaluated_users, headline_values, score_lists
    from recsys_spark.models.confidence import confidence_array
    from recsys_spark.pipeline.evaluate import _splits
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.session import build_session
    from recsys_spark.storage.store import TableStore
    from recsys_spark.tuning.search import carve_validation

    cfg = load_config(
        REPO / "conf" / "ml-latest-small.toml",
        [
            f"ingest.source.path={data / 'ratings.csv'}",
            f"storage.root={work / 'warehouse'}",
            f"evaluation.output_dir={work / 'reports'}",
            f"spark.checkpoint_dir={work / 'checkpoints'}",
            "spark.ui_enabled=false",
        ],
    )
    conf = cfg.similarity.ease.confidence
    spark = build_session(cfg.spark, cfg.storage, app_name=f"EASE variants: {mode}")
    run_ingest(spark, cfg, RunContext.new(f"ease-{mode}-check", cfg))
    store = TableStore(spark, cfg.storage)
    inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist()
    n_users, n_items = store.read(T.USERS).count(), store.read(T.ITEMS).count()
    [(split, _, train, test)] = _splits(spark, cfg, store, matrix, inputs)
    validation = carve_validation(train, cfg)
    truth, users = evaluated_users(train, test, cfg)
    cols = ["user_idx", "item_idx", "confidence"]
    full = matrix_of(train.select(*cols).toArrow(), n_users, n_items)
    fit = matrix_of(validation.fit.select(*cols).toArrow(), n_users, n_items)
    valid_users = np.array(sorted(r.user_idx for r in validation.users.collect()), dtype=np.int64)
    test_users = np.array(sorted(r.user_idx for r in users.collect()), dtype=np.int64)
    held = validation.truth.select("user_idx", "item_idx").toArrow()
    held_u, held_i = held.column("user_idx").to_numpy(), held.column("item_idx").to_numpy()

    def transformed(x: sp.csr_matrix) -> sp.csr_matrix:
        values = x.copy()
        values.data = confidence_array(values.data, conf)
        return values

    on_fit = transformed(fit)
    pop = item_popularity(train)
    n_train_users = train.select("user_idx").distinct().count()
    k = max(cfg.evaluation.ks)

    def on_test(values: sp.csr_matrix, weights: Any, name: str) -> float:
        lists = _frame(spark, *top_lists(values, full, weights, test_users, k))
        rows = score_lists(
            lists,
            truth,
            cfg,
            split=split,
            model=name,
            n_items=n_items,
            popularity=pop,
            n_train_users=n_train_users,
            graded=False,
        )
        return headline_values(rows, "ndcg", 10)[name]

    if mode == "prune":
        l2 = cfg.similarity.ease.l2
        print(f"{conf} values, l2 {l2:g}; carve-out: {len(valid_users)} users; test: {len(test_users)} users")
        b = edlae_weights(on_fit, l2, 0.0)
        for per_item in PRUNE_BUDGETS:
            for prune in ("global", "score"):
                lists = top_lists(on_fit, fit, served_pruning(b, on_fit, prune, per_item), valid_users, 10)
                score = ranking_metric("ndcg", 10, *lists, held_u, held_i)
                print(f"carve-out  {prune:<6} {per_item:>5} per item  NDCG@10 {score:.4f}", flush=True)
        on_full = transformed(full)
        b = edlae_weights(on_full, l2, 0.0)
        print(f"test  unpruned  NDCG@10 {on_test(on_full, b, 'EASE'):.4f}", flush=True)
        for per_item in PRUNE_BUDGETS:
            for prune in ("global", "score"):
                got = on_test(on_full, served_pruning(b, on_full, prune, per_item), "EASE")
                print(f"test  {prune:<6} {per_item:>5} per item  NDCG@10 {got:.4f}", flush=True)
        spark.stop()
        return

    carve_out: dict[tuple[float, float], tuple[float, float]] = {}
    print(f"{conf} values; carve-out: {len(valid_users)} users; test: {len(test_users)} users")
    for l2 in L2_GRID:
        for p in DROPOUT_GRID:
            b = edlae_weights(on_fit, l2, p)
            whole = ranking_metric("ndcg", 10, *top_lists(on_fit, fit, b, valid_users, 10), held_u, held_i)
            cut = ranking_metric("ndcg", 10, *top_lists(on_fit, fit, pruned(b), valid_users, 10), held_u, held_i)
            carve_out[(l2, p)] = (whole, cut)
            print(f"carve-out  l2 {l2:>6g}  p {p:<4g}  NDCG@10 {whole:.4f}  pruned {cut:.4f}", flush=True)
    del on_fit

    on_full = transformed(full)
    for name, among in (("EASE", [key for key in carve_out if key[1] == 0.0]), ("EDLAE", list(carve_out))):
        l2, p = max(among, key=lambda key: carve_out[key][1])  # chosen as the served, pruned table would be
        b = edlae_weights(on_full, l2, p)
        scored = [on_test(on_full, weights, name) for weights in (b, pruned(b))]
        print(f"test  {name} chosen l2 {l2:g} p {p:g}: NDCG@10 {scored[0]:.4f}  pruned {scored[1]:.4f}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv)
