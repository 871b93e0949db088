"""Churn between two versions of the served lists: how much each user's top of the list moved.

Per strategy, over the users either version lists:

* ``changed_users``: the share whose top ``depth`` differs (another item, or the same items in
  another order);
* ``mean_jaccard``: mean Jaccard similarity of the two top-``depth`` item sets;
* ``mean_rbo``: mean rank-biased overlap (Webber et al. 2010) with persistence ``p``, truncated
  at ``depth`` and divided by its largest value, so identical lists score 1 and disjoint 0;
* ``items_entering`` / ``items_leaving``: catalogue items shown in some top ``depth`` now and in
  none before, and the reverse: the change in what the catalogue exposes.

Why RBO besides Jaccard: a list whose first item changed matters more to a user than one whose
tenth did; RBO weighs agreement at rank d by p^(d-1), Jaccard not at all.

The RBO sum runs over items rather than depths: an item at ranks r and s in the two lists is in
both tops from depth max(r, s) on, so it adds sum_{d >= max(r, s)} p^(d-1)/d, a per-rank weight
computed once on the driver. Everything else is one join and one aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from recsys_spark.storage.published import Publication

__all__ = ["churn_history", "list_churn", "rbo_weights"]


def rbo_weights(depth: int, p: float) -> list[float]:
    """w[m - 1] = sum over d = m..depth of p^(d-1)/d, divided by the largest truncated RBO sum."""
    largest = sum(p ** (d - 1) for d in range(1, depth + 1))
    return [sum(p ** (d - 1) / d for d in range(m, depth + 1)) / largest for m in range(1, depth + 1)]


def list_churn(new: DataFrame, old: DataFrame, depth: int = 10, p: float = 0.9) -> dict[str, dict[str, float]]:
    """strategy -> churn figures (module docstring) of ``new`` against ``old``, both
    (strategy, user_idx, item_idx, rank); strategies missing from ``old`` are left out."""
    from pyspark.sql import functions as F

    cols = ["strategy", "user_idx", "item_idx"]
    a = new.where(F.col("rank") <= depth).select(*cols, F.col("rank").alias("rank_new"))
    b = old.where(F.col("rank") <= depth).select(*cols, F.col("rank").alias("rank_old"))
    weights = F.array(*[F.lit(w) for w in rbo_weights(depth, p)])
    both = a.join(b, cols, "full_outer")
    common = F.col("rank_new").isNotNull() & F.col("rank_old").isNotNull()
    deepest = F.greatest("rank_new", "rank_old")
    per_user = both.groupBy("strategy", "user_idx").agg(
        F.sum(common.cast("long")).alias("common"),
        F.count("rank_new").alias("n_new"),
        F.count("rank_old").alias("n_old"),
        F.sum(F.when(common & (F.col("rank_new") == F.col("rank_old")), 1).otherwise(0)).alias("same_rank"),
        F.sum(F.when(common, F.element_at(weights, deepest.cast("int"))).otherwise(0.0)).alias("rbo"),
    )
    union = F.col("n_new") + F.col("n_old") - F.col("common")
    unchanged = (F.col("same_rank") == F.col("n_new")) & (F.col("n_new") == F.col("n_old"))
    users = per_user.groupBy("strategy").agg(
        F.count(F.lit(1)).alias("users"),
        F.avg((~unchanged).cast("double")).alias("changed_users"),
        F.avg(F.when(union > 0, F.col("common") / union).otherwise(1.0)).alias("mean_jaccard"),
        F.avg("rbo").alias("mean_rbo"),
    )
    shown_new = a.select("strategy", "item_idx").distinct()
    shown_old = b.select("strategy", "item_idx").distinct()
    entering = shown_new.join(shown_old, ["strategy", "item_idx"], "left_anti").groupBy("strategy").count()
    leaving = shown_old.join(shown_new, ["strategy", "item_idx"], "left_anti").groupBy("strategy").count()
    rows = (
        users.join(entering.withColumnRenamed("count", "entering"), "strategy", "left")
        .join(leaving.withColumnRenamed("count", "leaving"), "strategy", "left")
        .join(b.select("strategy").distinct(), "strategy")
        .collect()
    )
    return {
        r["strategy"]: {
            "users": int(r["users"]),
            "changed_users": float(r["changed_users"]),
            "mean_jaccard": float(r["mean_jaccard"]),
            "mean_rbo": float(r["mean_rbo"]),
            "items_entering": int(r["entering"] or 0),
            "items_leaving": int(r["leaving"] or 0),
        }
        for r in rows
    }


def churn_history(published: Sequence[Publication], last: int = 30) -> list[dict[str, Any]]:
    """One row per strategy of each of the ``last`` publications that measured churn (every one
    after the first): seq, time, strategy and the figures, oldest first (the report's plot)."""
    rows = []
    for p in published:
        for strategy, s in sorted(p.stats.items()):
            churn = s.get("churn") if isinstance(s, dict) else None
            if churn:
                rows.append({"seq": p.seq, "published_at": str(p.published_at), "strategy": strategy, **churn})
    seqs = sorted({r["seq"] for r in rows})[-last:]
    return [r for r in rows if r["seq"] in seqs]
