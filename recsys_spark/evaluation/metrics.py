"""Offline evaluation metrics at several cut-offs k, computed in Spark SQL (DataFrame in, DataFrame out).

Inputs:

* ``recs``: (user_idx, item_idx, rank), rank 1 = best; a list may hold fewer than k items.
* ``truth``: (user_idx, item_idx, grade), the user's relevant held-out items ``rel_u``. A pair listed
  twice counts once, with its highest grade; a null grade counts as 0.

Ranking metrics, per user u with ``|rel_u| >= 1`` and cut-off k:

* hits@k = #{recommended items with rank <= k that are in rel_u}. Missing positions of a short list
  are non-relevant, and an item listed twice in one list counts once, at its best rank.
* precision@k = hits@k / k; recall@k = hits@k / |rel_u|; hit_rate@k = 1 if hits@k > 0 else 0.
* ndcg@k = DCG@k / IDCG@k with DCG@k = sum_{hits, rank <= k} 1 / log2(rank + 1) and
  IDCG@k = sum_{i=1}^{min(|rel_u|, k)} 1 / log2(i + 1).
* ndcg_graded@k: the same with gain g = 2^grade - 1, i.e. DCG@k = sum_{hits, rank <= k} g / log2(rank + 1),
  IDCG@k = sum_{i=1}^{min(|rel_u|, k)} g_(i) / log2(i + 1) over the user's gains sorted descending. A user
  whose IDCG is not positive (all grades 0) scores 0.
* map@k: AP@k = (sum_{hits, rank <= k} precision@rank) / min(|rel_u|, k), where precision@rank = (hits
  with rank <= that rank) / rank; MAP@k = mean AP@k.
* mrr@k = 1 / (rank of the first hit) if that rank <= k, else 0.

Each is averaged over the users of ``truth``; users without recommendations score 0 everywhere.
Users that got recommendations but have no truth rows are not counted.

Catalogue metrics, over the top-k lists of all users that got recommendations (n = n_items):

* coverage@k = #{distinct items in any top-k list} / n.
* gini@k: with c_i = number of top-k lists containing item i, over all n catalogue items (never
  recommended ones have c_i = 0), sorted ascending, G = sum_{i=1}^{n} (2i - n - 1) c_i / (n sum_i c_i):
  0 = equal exposure, towards 1 = all exposure on one item.
* novelty@k = mean over the recommended (user, item) pairs with rank <= k of
  -log2(max(pop_i, 1) / n_users), pop_i = distinct training users of item i (0 when unknown).
* ild@k (intra-list diversity) = mean over users with at least 2 items in their top-k of the mean
  pairwise cosine distance (1 - cos) of those items' factors. Items with missing or zero factors are
  left out of the list (and a user left with fewer than 2 is not counted). For unit vectors x_1..x_m
  with sum s, the mean pairwise cosine is (||s||^2 - m) / (m (m - 1)), so each list costs O(m) not O(m^2).

Rating errors: rmse = sqrt(mean((prediction - rating)^2)), mae = mean(|prediction - rating|).

Every metric frame is (metric, k, value, users), ``users`` being the number of users averaged. A row
whose value is undefined (a mean over no users or pairs, a Gini of zero exposure) is left out rather
than reported as null, NaN or 0: with no truth users there are no ranking rows; with no
recommendations there are coverage rows (0.0, users 0) and no gini, novelty or ild rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
GRADED_METRICS: tuple[str, ...] = ("ndcg_graded",)
CATALOG_METRICS: tuple[str, ...] = ("coverage", "gini", "novelty", "ild")

METRIC_SCHEMA = "metric STRING, k INT, value DOUBLE, users LONG"


def cutoffs(ks: Sequence[int]) -> list[int]:
    """The distinct cut-offs, ascending; each must be a positive int."""
    if isinstance(ks, int):  # a lone int is an easy mistake and would fail obscurely later
        raise ValueError(f"ks must be a sequence of cut-offs, got the int {ks}")
    out = sorted(set(ks))
    if not out or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {list(ks)!r}")
    return out


def cutoff_frame(spark: SparkSession, ks: list[int]) -> DataFrame:
    """(k INT): one row per cut-off, to cross join against."""
    return spark.createDataFrame([(k,) for k in ks], "k INT")


def discount(rank: Column) -> Column:
    """1 / log2(rank + 1), the DCG position discount."""
    return F.lit(1.0) / F.log2(rank.cast("double") + 1.0)


def gain(grade: Column) -> Column:
    """2^grade - 1, the graded-relevance gain."""
    return F.pow(F.lit(2.0), grade) - 1.0


def distinct_truth(truth: DataFrame) -> DataFrame:
    """(user_idx, item_idx, grade): one row per relevant pair, at its highest grade (null grade = 0)."""
    return truth.groupBy("user_idx", "item_idx").agg(
        F.max(F.coalesce(F.col("grade").cast("double"), F.lit(0.0))).alias("grade")
    )


def best_ranks(recs: DataFrame, max_k: int) -> DataFrame:
    """(user_idx, item_idx, rank): each listed item once, at its best rank, ranks beyond ``max_k`` dropped."""
    return (
        recs.where(F.col("rank") <= max_k)
        .groupBy("user_idx", "item_idx")
        .agg(F.min(F.col("rank")).cast("int").alias("rank"))
    )


def ideal_dcg(truth: DataFrame, ks: DataFrame, max_k: int) -> DataFrame:
    """(user_idx, k, n_rel, idcg, idcg_graded) for every truth user and cut-off.

    The ideal list is the user's truth sorted by grade (descending); binary IDCG only needs its length.
    """
    by_grade = Window.partitionBy("user_idx").orderBy(F.col("grade").desc(), F.col("item_idx"))
    ranked = (
        truth.withColumn("pos", F.row_number().over(by_grade))
        .withColumn("n_rel", F.count("*").over(Window.partitionBy("user_idx")))
        .where(F.col("pos") <= max_k)
    )
    return (
        ranked.crossJoin(F.broadcast(ks))
        .where(F.col("pos") <= F.col("k"))
        .groupBy("user_idx", "k")
        .agg(
            F.max("n_rel").alias("n_rel"),
            F.sum(discount(F.col("pos"))).alias("idcg"),
            F.sum(gain(F.col("grade")) * discount(F.col("pos"))).alias("idcg_graded"),
        )
    )


def hit_sums(recs: DataFrame, truth: DataFrame, ks: DataFrame, max_k: int) -> DataFrame:
    """(user_idx, k, hits, dcg, dcg_graded, ap_sum, first_hit) over each user's hits with rank <= k.

    Only hits are carried past the join, so the per-user work is bounded by the truth set, not the lists.
    ``hit_no`` (hits up to and including this rank) is the same for every k >= rank, so one window over
    all of a user's hits gives precision@rank for every cut-off.
    """
    recs = recs.where(F.col("rank") <= max_k).select("user_idx", "item_idx", "rank")
    hits = (
        recs.join(truth, ["user_idx", "item_idx"])
        .groupBy("user_idx", "item_idx")
        .agg(F.min("rank").alias("rank"), F.max("grade").alias("grade"))
    )
    by_rank = Window.partitionBy("user_idx").orderBy("rank", "item_idx")
    hits = hits.withColumn("hit_no", F.row_number().over(by_rank))
    return (
        hits.crossJoin(F.broadcast(ks))
        .where(F.col("rank") <= F.col("k"))
        .groupBy("user_idx", "k")
        .agg(
            F.count("*").alias("hits"),
            F.sum(discount(F.col("rank"))).alias("dcg"),
            F.sum(gain(F.col("grade")) * discount(F.col("rank"))).alias("dcg_graded"),
            F.sum(F.col("hit_no") / F.col("rank")).alias("ap_sum"),
            F.min("rank").alias("first_hit"),
        )
    )


def per_user_ranking(ideal: DataFrame, sums: DataFrame) -> DataFrame:
    """(user_idx, k, <one column per metric>): every truth user, zeros where nothing was hit."""
    joined = ideal.join(sums, ["user_idx", "k"], "left")
    hits = F.coalesce(F.col("hits"), F.lit(0)).cast("double")
    k = F.col("k").cast("double")
    n_rel = F.col("n_rel").cast("double")
    zero = F.lit(0.0)
    return joined.select(
        "user_idx",
        "k",
        (hits / k).alias("precision"),
        (hits / n_rel).alias("recall"),
        (F.coalesce(F.col("dcg"), zero) / F.col("idcg")).alias("ndcg"),
        (F.coalesce(F.col("ap_sum"), zero) / F.least(n_rel, k)).alias("map"),
        F.coalesce(F.lit(1.0) / F.col("first_hit"), zero).alias("mrr"),
        F.when(hits > 0, 1.0).otherwise(zero).alias("hit_rate"),
        # all-zero grades give IDCG 0: there is nothing to rank well, so such a user scores 0, not NaN
        F.when(F.col("idcg_graded") > 0, F.coalesce(F.col("dcg_graded"), zero) / F.col("idcg_graded"))
        .otherwise(zero)
        .alias("ndcg_graded"),
    )


def metric_order(names: Sequence[str]) -> Column:
    """Sort key placing metrics in the order of ``names``."""
    return F.array_position(F.array(*[F.lit(n) for n in names]), F.col("metric"))


def averaged(per_user: DataFrame, names: Sequence[str]) -> DataFrame:
    """(metric, k, value, users): the mean of each named column over users, per k."""
    means = per_user.groupBy("k").agg(F.count("*").alias("users"), *[F.avg(n).alias(n) for n in names])
    long = means.unpivot(["k", "users"], list(names), "metric", "value")
    return long.select(
        "metric", F.col("k").cast("int"), F.col("value").cast("double"), F.col("users").cast("long")
    ).orderBy(metric_order(names), "k")


def ranking_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int], *, graded: bool = False) -> DataFrame:
    """Ranking metrics of the recommendations against held-out relevant items, at every k in ``ks``.

    Args:
        recs: (user_idx INT, item_idx INT, rank INT), rank 1 = best, ranks 1..n per user.
        truth: (user_idx INT, item_idx INT, grade DOUBLE), the relevant held-out items; ``grade`` only
            feeds ``ndcg_graded``.
        ks: the cut-offs.
        graded: also report ``ndcg_graded``.

    Returns:
        (metric STRING, k INT, value DOUBLE, users LONG): each metric of ``RANKING_METRICS`` (then
        ``ndcg_graded`` when graded) averaged over the users of ``truth``, ordered by metric then k.
    """
    ks_list = cutoffs(ks)
    max_k = ks_list[-1]
    ks_df = cutoff_frame(recs.sparkSession, ks_list)
    rel = distinct_truth(truth)
    per_user = per_user_ranking(ideal_dcg(rel, ks_df, max_k), hit_sums(recs, rel, ks_df, max_k))
    names = RANKING_METRICS + (GRADED_METRICS if graded else ())
    log.info("ranking metrics %s at k = %s", list(names), ks_list)
    return averaged(per_user, names)


def unit_factors(item_factors: DataFrame) -> DataFrame:
    """(item_idx, vec ARRAY<DOUBLE>): factors scaled to unit norm; zero vectors have no direction and are dropped.

    Kept in double: the closed form of ILD subtracts m from ||s||^2, so float rounding of the unit
    vectors would show up in the result.
    """
    vec = F.col("factors").cast("array<double>")
    norm = F.sqrt(F.aggregate(vec, F.lit(0.0), lambda acc, x: acc + x * x))
    return (
        item_factors.select("item_idx", vec.alias("vec"), norm.alias("norm"))
        .where(F.col("norm") > 0)
        .select("item_idx", F.transform("vec", lambda x: x / F.col("norm")).alias("vec"))
    )


def exposure(lists: DataFrame) -> DataFrame:
    """(k, item_idx, c): the number of top-k lists containing each recommended item."""
    return lists.groupBy("k", "item_idx").agg(F.count("*").alias("c"))


def self_information(item_popularity: DataFrame, n_users: int) -> DataFrame:
    """(item_idx, info): -log2(max(pop, 1) / n_users); unknown items get the default in the caller."""
    pop = F.greatest(F.col("users").cast("double"), F.lit(1.0))
    return item_popularity.select("item_idx", (-F.log2(pop / float(n_users))).alias("info"))


def exposure_stats(exposed: DataFrame, info: DataFrame, n_items: int, n_users: int) -> DataFrame:
    """(k, items, gini, novelty): distinct items, Gini of exposure and mean self-information per k.

    The n - m never-recommended items have c = 0 and so take the first n - m places of the ascending
    order: the j-th smallest non-zero count sits at i = n - m + j, and contributes nothing otherwise.
    """
    n = float(n_items)
    default_info = -F.log2(F.lit(1.0 / n_users))  # unknown item: popularity 0, treated as 1
    ranked = (
        exposed.join(info, "item_idx", "left")
        .withColumn("j", F.row_number().over(Window.partitionBy("k").orderBy("c", "item_idx")))
        .withColumn("m", F.count("*").over(Window.partitionBy("k")))
    )
    i = F.lit(n) - F.col("m") + F.col("j")
    c = F.col("c").cast("double")
    return ranked.groupBy("k").agg(
        F.count("*").alias("items"),
        (F.sum((2.0 * i - n - 1.0) * c) / (n * F.sum(c))).alias("gini"),
        (F.sum(c * F.coalesce(F.col("info"), default_info)) / F.sum(c)).alias("novelty"),
    )


def listed_users(lists: DataFrame) -> DataFrame:
    """(k, users): users with at least one item in their top-k (``pos`` 1 marks one row per user)."""
    return lists.where(F.col("pos") == 1).groupBy("k").agg(F.count("*").alias("users"))


def intra_list_diversity(best: DataFrame, unit: DataFrame, ks: DataFrame) -> DataFrame:
    """(k, value, users): mean ILD over users with at least 2 items with factors in their top-k.

    Each user's vectors are gathered once (up to max k) and every cut-off filters that one array, so no
    vector is shuffled once per k.
    """
    lists = best.join(unit, "item_idx").groupBy("user_idx").agg(F.collect_list(F.struct("rank", "vec")).alias("items"))
    top = F.filter("items", lambda x: x["rank"] <= F.col("k"))
    per_k = (
        lists.crossJoin(F.broadcast(ks))
        .select("user_idx", "k", top.alias("top"))
        .withColumn("m", F.size("top"))
        .where(F.col("m") >= 2)
    )
    zeros = F.array_repeat(F.lit(0.0), F.size(F.col("top")[0]["vec"]))
    s = F.aggregate("top", zeros, lambda acc, x: F.zip_with(acc, x["vec"], lambda a, b: a + b))
    s2 = F.aggregate(s, F.lit(0.0), lambda acc, x: acc + x * x)
    m = F.col("m").cast("double")
    ild = F.lit(1.0) - (s2 - m) / (m * (m - 1.0))
    return per_k.groupBy("k").agg(F.avg(ild).alias("value"), F.count("*").alias("users"))


def catalog_metrics(
    recs: DataFrame,
    ks: Sequence[int],
    *,
    n_items: int,
    item_popularity: DataFrame,
    n_users: int,
    item_factors: DataFrame | None = None,
) -> DataFrame:
    """Coverage, Gini, novelty and (with ``item_factors``) intra-list diversity of the top-k lists.

    Args:
        recs: (user_idx INT, item_idx INT, rank INT) for every user that got recommendations.
        ks: the cut-offs.
        n_items: catalogue size (at least the number of distinct recommended items).
        item_popularity: (item_idx INT, users LONG), distinct training users per item.
        n_users: number of training users, the base of novelty's probabilities.
        item_factors: (item_idx INT, factors ARRAY<FLOAT>), for ILD.

    Returns:
        (metric STRING, k INT, value DOUBLE, users LONG), ordered by metric then k; ``users`` counts the
        users with a top-k list (for ild: those with at least 2 items with factors in it).
    """
    ks_list = cutoffs(ks)
    if n_items < 1 or n_users < 1:
        raise ValueError(f"n_items and n_users must be positive, got {n_items} and {n_users}")
    max_k = ks_list[-1]
    ks_df = cutoff_frame(recs.sparkSession, ks_list)
    best = best_ranks(recs, max_k)
    pos = F.row_number().over(Window.partitionBy("user_idx").orderBy("rank", "item_idx"))
    lists = best.withColumn("pos", pos).crossJoin(F.broadcast(ks_df)).where(F.col("rank") <= F.col("k"))
    stats = (
        ks_df.join(
            exposure_stats(exposure(lists), self_information(item_popularity, n_users), n_items, n_users), "k", "left"
        )
        .join(listed_users(lists), "k", "left")
        .select(
            "k",
            F.coalesce(F.col("users"), F.lit(0)).cast("long").alias("users"),
            (F.coalesce(F.col("items"), F.lit(0)) / float(n_items)).alias("coverage"),
            "gini",
            "novelty",
        )
    )
    out = stats.unpivot(["k", "users"], ["coverage", "gini", "novelty"], "metric", "value")
    if item_factors is not None:
        ild = intra_list_diversity(best, unit_factors(item_factors), ks_df)
        out = out.unionByName(ild.select(F.lit("ild").alias("metric"), "k", "value", "users"))
    log.info(
        "catalogue metrics at k = %s over %d items, %d training users%s",
        ks_list,
        n_items,
        n_users,
        ", with ILD" if item_factors is not None else "",
    )
    return (
        out.where(F.col("value").isNotNull())
        .select("metric", F.col("k").cast("int"), F.col("value").cast("double"), F.col("users").cast("long"))
        .orderBy(metric_order(CATALOG_METRICS), "k")
    )


def rating_errors(predictions: DataFrame) -> dict[str, float | None]:
    """{"rmse", "mae", "n"} of predicted against actual ratings.

    Rows with a null or NaN rating or prediction (ALS predicts NaN for users or items it never saw)
    are skipped and logged; ``n`` counts the rows used, and rmse/mae are None when there are none.
    """
    r, p = F.col("rating").cast("double"), F.col("prediction").cast("double")
    valid = r.isNotNull() & p.isNotNull() & ~F.isnan(r) & ~F.isnan(p)
    err = F.when(valid, p - r)
    row = predictions.agg(
        F.count("*").alias("rows"),
        F.count(err).alias("n"),
        F.sqrt(F.avg(err * err)).alias("rmse"),
        F.avg(F.abs(err)).alias("mae"),
    ).first()
    if row["rows"] > row["n"]:
        log.warning(
            "rating errors: skipped %d of %d rows with a null or NaN rating or prediction",
            row["rows"] - row["n"],
            row["rows"],
        )
    return {"rmse": row["rmse"], "mae": row["mae"], "n": int(row["n"])}
