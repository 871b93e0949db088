"""Item-item candidate scores without a shuffle of the expanded votes (DataFrame in, DataFrame out).

score(u, j) = sum of w_ui x similarity(i, j) over the user's ``recent`` most recent items i, for
items j the user has not seen; each user keeps the k best by (score desc, item asc). The vote
weight w_ui is 1, or the pair's confidence after a transform (recsys_spark/models/confidence.py): EASE
scores a user as x_u . B, so its votes must carry the same x_ui its weights were fitted on (on
ML-100K, unweighted votes lose a tenth of its NDCG@10).

Written as Spark SQL this is a join of every recent item with its neighbours, a group-by on
(user, candidate), an anti-join with the seen items and a window rank: the join expands each
user's ~20 recent items into ~1,000 votes, and three shuffles and sorts of those votes are what
spilled 26 GB at 10M events. Here the neighbour lists are broadcast once as a CSR matrix, the
interaction matrix is hash-partitioned by user once, and each task expands, sums, masks and ranks
its own users' votes in numpy, one block of users at a time, so memory is bounded by the block.
The neighbour matrix must fit in every task's memory: catalogues whose neighbour table exceeds
``MAX_BROADCAST_NEIGHBORS`` rows are scored the SQL way instead (:func:`votes_by_join`).

**Explanations.** Every kept row names the history item whose vote added most to its score
(``because_item_idx``: the largest weighted vote, ties to the lower item) and that vote's share of
the score (``because_share`` = vote / score; above 1 when other votes are negative, as EASE's can
be). The kernel finds them after the top-k cut, among the votes of the kept rows only, so the
scores and ranks are those of a kernel that explains nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.config.schema import ConfidenceTransform
from recsys_spark.kernels.selection import first_n_per_key, rank_per_user, ranks_in_runs, run_starts, top_n_per_key
from recsys_spark.models.confidence import confidence_array, confidence_value
from recsys_spark.session import whole_waves

log = logging.getLogger(__name__)

RESULT_SCHEMA = "user_idx INT, item_idx INT, score FLOAT, rank INT, because_item_idx INT, because_share FLOAT"

#: Votes expanded at once inside a task (float64 + int64 each): 4M votes ~ 64 MiB of buffers.
_VOTE_BUFFER = 1 << 22

#: Above this many neighbour rows the CSR broadcast (12 bytes a row) is no longer cheap.
MAX_BROADCAST_NEIGHBORS = 50_000_000

#: Matrix rows per task: a task holds its partition's history in memory while it scores.
_ROWS_PER_TASK = 1_000_000


#: How votes are weighted: None (each vote counts 1), or a confidence transform and its epsilon.
VoteWeight = tuple[ConfidenceTransform, float] | None


def recent_history(matrix: DataFrame, n: int) -> DataFrame:
    """Each user's ``n`` most recent items (ties: stronger first, then lower item_idx), with confidence."""
    order = [F.col("last_event_time").desc_nulls_last(), F.col("confidence").desc(), F.col("item_idx")]
    return first_n_per_key(matrix, "user_idx", order, n, rank="_r").select("user_idx", "item_idx", "confidence")


def neighbor_vote_top_k(
    history: DataFrame, neighbors: DataFrame, k: int, recent: int, weight: VoteWeight = None
) -> DataFrame:
    """Each user's k best unseen items by summed neighbour similarity of their recent items.

    Args:
        history: (user_idx, item_idx, confidence, last_event_time) rows of the users to score;
            all of a user's rows (they are the seen items), not only the recent ones.
        neighbours: (item_idx, neighbor_idx, similarity), one row per pair.
        k: items kept per user.
        recent: how many of each user's most recent items vote.
        weight: how each vote is weighted (see :data:`VoteWeight`).

    Returns:
        (user_idx, item_idx, score, rank, because_item_idx, because_share), rank 1..k by score desc
        then item_idx asc; scores are summed in float64 and rounded to float32 once, as the SQL
        formulation does. because_*: the voting item with the largest vote and vote / score.
    """
    spark = history.sparkSession
    nb = neighbors.select("item_idx", "neighbor_idx", "similarity")
    n_rows = nb.count()
    if n_rows > MAX_BROADCAST_NEIGHBORS:
        log.info(
            "item_item: %d neighbour rows exceed the broadcast limit (%d): scoring by shuffle join",
            n_rows,
            MAX_BROADCAST_NEIGHBORS,
        )
        return votes_by_join(history, neighbors, k, recent, weight)
    csr = neighbor_matrix(nb.toArrow())
    if len(csr[0]) == 1:  # no neighbours at all: nothing can be scored
        return spark.createDataFrame([], RESULT_SCHEMA)
    shared = spark.sparkContext.broadcast(csr)
    hist = history.select("user_idx", "item_idx", "confidence", "last_event_time")
    n_hist = hist.count()
    parts = whole_waves(spark, n_hist, _ROWS_PER_TASK)
    log.info(
        "item_item: %d history rows in %d tasks, %d neighbour rows broadcast (%d items)",
        n_hist,
        parts,
        n_rows,
        len(csr[0]) - 1,
    )

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # a user's rows may straddle Arrow batches, so the task takes its whole partition
        received = list(batches)
        if received:
            yield from score_partition(pa.Table.from_batches(received), shared.value, k, recent, weight)

    return hist.repartition(parts, "user_idx").mapInArrow(score, RESULT_SCHEMA)


def neighbor_matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, neighbour ids, similarities) of the item x item neighbour lists, rows = items."""
    src = table.column("item_idx").to_numpy().astype(np.int64)
    dst = table.column("neighbor_idx").to_numpy().astype(np.int32)
    sim = table.column("similarity").to_numpy().astype(np.float64)
    n = int(max(src.max(initial=-1), dst.max(initial=-1))) + 1
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst[order], sim[order]


def score_partition(
    table: pa.Table, csr: tuple[np.ndarray, np.ndarray, np.ndarray], k: int, recent: int, weight: VoteWeight = None
) -> Iterator[pa.RecordBatch]:
    """Score every user of one partition, a block of users at a time."""
    users = table.column("user_idx").to_numpy().astype(np.int64)
    items = table.column("item_idx").to_numpy().astype(np.int64)
    conf = table.column("confidence").to_numpy(zero_copy_only=False)
    when = table.column("last_event_time")
    # most recent first with missing times last: ascending keys -time, and +inf for no time
    age = np.where(
        when.is_valid().to_numpy(zero_copy_only=False),
        -when.cast(pa.int64()).fill_null(0).to_numpy(),
        np.iinfo(np.int64).max,
    )
    order = np.lexsort((items, -conf, age, users))
    users, items = users[order], items[order]
    weights = None if weight is None else confidence_array(conf[order], *weight)
    is_recent = ranks_in_runs(users) <= recent
    indptr = csr[0]
    votes = np.where(is_recent & (items < len(indptr) - 1), np.diff(indptr)[np.minimum(items, len(indptr) - 2)], 0)
    starts = run_starts(users)
    bounds = np.r_[starts, len(users)]
    before = np.r_[0, np.cumsum(np.add.reduceat(votes, starts))]  # votes of the users before each
    block_start = 0
    while block_start < len(starts):
        # as many whole users as fit the vote buffer (at least one)
        reach = np.searchsorted(before, before[block_start] + _VOTE_BUFFER, side="right") - 1
        block_stop = max(block_start + 1, min(int(reach), len(starts)))
        lo, hi = bounds[block_start], bounds[block_stop]
        batch = _score_block(
            users[lo:hi], items[lo:hi], is_recent[lo:hi], csr, k, None if weights is None else weights[lo:hi]
        )
        if batch.num_rows:
            yield batch
        block_start = block_stop


def _score_block(
    users: np.ndarray,
    items: np.ndarray,
    is_recent: np.ndarray,
    csr: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: int,
    weights: np.ndarray | None = None,
) -> pa.RecordBatch:
    """Votes of a few users expanded, summed per (user, item), seen items dropped, top-k kept."""
    indptr, nb_ids, nb_sims = csr
    n_items = len(indptr) - 1
    voters = is_recent & (items < n_items)
    v_users, v_items = users[voters], items[voters]
    counts = indptr[v_items + 1] - indptr[v_items]
    total = int(counts.sum())
    if total == 0:
        none = np.empty(0, np.int64)
        return _batch(none, none, np.empty(0, np.float32), none, none, np.empty(0, np.float64))
    # position of every vote in the neighbour arrays: each voter's row, entry by entry
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    at = np.repeat(indptr[v_items], counts) + offsets
    keys = np.repeat(v_users, counts) * n_items + nb_ids[at]
    uniq, inverse = np.unique(keys, return_inverse=True)
    votes = nb_sims[at] if weights is None else np.repeat(weights[voters], counts) * nb_sims[at]
    sums = np.bincount(inverse, weights=votes, minlength=len(uniq))
    all_keys = len(uniq)
    seen = users[items < n_items] * n_items + items[items < n_items]
    pos = np.searchsorted(uniq, seen)
    hit = pos[(pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == seen)]
    keep = np.ones(len(uniq), dtype=bool)
    keep[hit] = False
    positions = np.flatnonzero(keep)
    uniq, score = uniq[keep], sums[keep].astype(np.float32)
    rows, cols = uniq // n_items, uniq % n_items
    # keys are sorted by (user, item), so ties already sit by item
    kept, rank = top_n_per_key(rows, score, cols, k, ids_ascending=True)
    voter_items = np.repeat(v_items, counts)
    because, vote = strongest_votes(inverse, votes, voter_items, positions[kept], all_keys)
    return _batch(rows[kept], cols[kept], score[kept], rank, because, vote / sums[positions[kept]])


def strongest_votes(
    inverse: np.ndarray, votes: np.ndarray, voters: np.ndarray, wanted: np.ndarray, n_keys: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each key position in ``wanted``: the voter with the largest vote (ties: the lower voter)
    and that vote, among the votes whose key position (``inverse``) it is."""
    slot = np.full(n_keys, -1, dtype=np.int64)
    slot[wanted] = np.arange(len(wanted))
    mine = slot[inverse]
    of_kept = np.flatnonzero(mine >= 0)
    g, v, who = mine[of_kept], votes[of_kept], voters[of_kept]
    order = np.lexsort((who, -v, g))
    first = order[np.r_[True, g[order][1:] != g[order][:-1]]] if len(order) else order
    because = np.empty(len(wanted), dtype=np.int64)
    vote = np.empty(len(wanted), dtype=np.float64)
    because[g[first]], vote[g[first]] = who[first], v[first]
    return because, vote


def _batch(
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    ranks: np.ndarray,
    because: np.ndarray,
    share: np.ndarray,
) -> pa.RecordBatch:
    with np.errstate(invalid="ignore", divide="ignore"):
        share32 = share.astype(np.float32)
    finite = np.isfinite(share32)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(users.astype(np.int32)),
            pa.array(items.astype(np.int32)),
            pa.array(scores.astype(np.float32)),
            pa.array(ranks.astype(np.int32)),
            pa.array(because.astype(np.int32)),
            # a zero score (votes cancelling out) has no share
            pa.array(share32, mask=~finite),
        ],
        names=["user_idx", "item_idx", "score", "rank", "because_item_idx", "because_share"],
    )


def votes_by_join(
    history: DataFrame, neighbors: DataFrame, k: int, recent: int, weight: VoteWeight = None
) -> DataFrame:
    """The same result through Spark SQL joins and windows: for neighbour tables too large to broadcast."""
    hist = recent_history(history, recent)
    vote = (
        F.col("similarity") if weight is None else confidence_value(F.col("confidence"), *weight) * F.col("similarity")
    )
    # the strongest vote first, then the lower voter: max of (vote, -voter)
    strongest = F.max(F.struct(vote.alias("v"), (-F.col("item_idx")).alias("neg")))
    scored = (
        hist.join(neighbors.select("item_idx", "neighbor_idx", "similarity"), "item_idx")
        .groupBy("user_idx", F.col("neighbor_idx").alias("item_idx"))
        .agg(F.sum(vote).alias("_sum"), strongest.alias("_top"))
        .select(
            "user_idx",
            "item_idx",
            F.col("_sum").cast("float").alias("score"),
            (-F.col("_top.neg")).cast("int").alias("because_item_idx"),
            # a zero score (votes cancelling out) has no share
            F.when(F.col("_sum") != 0, F.col("_top.v") / F.col("_sum")).cast("float").alias("because_share"),
        )
    )
    unseen = scored.join(history.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")
    return rank_per_user(unseen, k, keep=("because_item_idx", "because_share"))
