"""Per-user top-k candidates and popularity lists (DataFrame in, DataFrame out).

Strategies, each written to its own partition of ``user_candidates``:

* ``als``: score = <user factors, item factors>, every item scored, through the blocked top-k
  kernel with the user's seen items masked.
* ``item_item``: score = sum of the similarities between the item and the user's
  ``recent_items`` most recent items (their ``item_neighbors`` rows of ``neighbor_method``).
* ``ease``, ``rp3beta``: score = the votes of the user's history (up to ``max_history_votes``
  items) through that method's ``item_neighbors``, each vote weighted by the user's confidence
  in the voting item as the method's fit transformed it: EASE scores x_u . B.
* ``blend``: each source of ``blend_weights`` min-max scaled per user to [0, 1], summed with the
  weights (a source missing an item counts 0).

Users with fewer than ``min_history`` items (cold start), and users a strategy cannot score, get
the popularity list instead, tagged ``source = "popular"``.

Every row says why it is there where a history item can say it (``because_item_idx``,
``because_share``): the item whose vote added most (neighbour strategies), the source's
explanation that added most (blend), or, with ``explain``, the history item most like it by
factors (ALS, candidates/explanations.py). Popularity rows have none.

:class:`CandidateBuilder` is the one place the lists are made: the ``candidates`` job writes what it
builds from the tables, and evaluation scores what it builds from models fitted on a split, so
that what is evaluated is exactly what is served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.candidates.blend import blend_top_k
from recsys_spark.candidates.explanations import nearest_history_items
from recsys_spark.candidates.neighbor_votes import VoteWeight, neighbor_vote_top_k
from recsys_spark.config.schema import CandidatesConfig, Strategy
from recsys_spark.kernels.blocked_topk import BlockShape, blocked_top_k
from recsys_spark.kernels.selection import first_n_per_key, rank_per_user

log = logging.getLogger(__name__)


def user_history_sizes(matrix: DataFrame) -> DataFrame:
    """(user_idx, n_items): distinct items per user."""
    return matrix.groupBy("user_idx").agg(F.count("*").alias("n_items"))


def popular_items(matrix: DataFrame, window_days: int, top: int) -> DataFrame:
    """The ``top`` most popular items overall and in the last ``window_days`` days.

    Popularity is the number of distinct users; "recent" counts users whose latest interaction with
    the item lies within ``window_days`` of the newest interaction in the matrix (so re-runs on the
    same data give the same list). Ties go to the lower item_idx.

    Returns:
        (segment, rank, item_idx, users) with segment "overall" or "recent".
    """
    overall = matrix.groupBy("item_idx").agg(F.count("*").alias("users"))
    newest = matrix.agg(F.max("last_event_time")).first()[0]
    segments = [overall.withColumn("segment", F.lit("overall"))]
    if newest is not None:
        since = F.lit(newest) - F.expr(f"INTERVAL {int(window_days)} DAYS")
        recent = matrix.where(F.col("last_event_time") > since).groupBy("item_idx").agg(F.count("*").alias("users"))
        segments.append(recent.withColumn("segment", F.lit("recent")))
    else:  # no times at all: "recent" is the same as overall
        segments.append(overall.withColumn("segment", F.lit("recent")))
    both = segments[0].unionByName(segments[1])
    ranked = first_n_per_key(both, "segment", [F.col("users").desc(), F.col("item_idx")], top)
    return ranked.select("segment", "rank", "item_idx", "users")


def cold_start_segment(matrix: DataFrame, cfg: CandidatesConfig) -> DataFrame:
    """The popularity list cold users get: (rank, item_idx, users) of ``cold_start_segment``."""
    popular = popular_items(matrix, cfg.popularity_window_days, cfg.popular_k)
    return popular.where(F.col("segment") == cfg.cold_start_segment).select("rank", "item_idx", "users")


def cold_start_candidates(
    cold_users: DataFrame, seen: DataFrame, popular: DataFrame, k: int, max_seen: int
) -> DataFrame:
    """Popular items for users with little history: the list minus what each has seen.

    ``popular`` is one segment's (rank, item_idx, users); cold users have at most ``max_seen``
    items, so the first ``k + max_seen`` popular items always leave k unseen ones when they exist.
    """
    head = popular.where(F.col("rank") <= k + max_seen).select("item_idx", F.col("users").cast("float").alias("score"))
    pairs = cold_users.select("user_idx").crossJoin(F.broadcast(head))
    unseen = pairs.join(seen.select("user_idx", "item_idx"), ["user_idx", "item_idx"], "left_anti")
    return rank_per_user(unseen, k).withColumn("source", F.lit("popular"))


def als_candidates(
    user_factors: DataFrame, item_factors: DataFrame, seen: DataFrame, k: int, shape: BlockShape
) -> DataFrame:
    """Top-k items by ALS score for every user in ``user_factors``, seen items excluded."""
    top = blocked_top_k(
        user_factors.select(F.col("user_idx").alias("query"), F.col("factors").alias("vector")),
        item_factors.select(F.col("item_idx").alias("target"), F.col("factors").alias("vector")),
        k,
        exclude=seen.select(F.col("user_idx").alias("query"), F.col("item_idx").alias("target")),
        shape=shape,
    )
    return top.select(
        F.col("query").alias("user_idx"),
        F.col("target").alias("item_idx"),
        "score",
        "rank",
        F.lit("als").alias("source"),
    )


def item_item_candidates(
    matrix: DataFrame,
    neighbors: DataFrame,
    users: DataFrame,
    k: int,
    recent_items: int,
    weight: VoteWeight = None,
    source: str = "item_item",
) -> DataFrame:
    """Top-k by the summed (weighted) similarity of each item to the user's recent items, seen items excluded.

    Args:
        matrix: (user_idx, item_idx, confidence, last_event_time), the interaction matrix.
        neighbors: (item_idx, neighbor_idx, similarity) of one method.
        users: (user_idx) of the users to score.
        weight: how a voting item's vote is weighted (see ``neighbor_votes.VoteWeight``).
    """
    history = matrix.join(users.select("user_idx"), "user_idx", "left_semi")
    return neighbor_vote_top_k(history, neighbors, k, recent_items, weight).withColumn("source", F.lit(source))


def blend_candidates(sources: Mapping[str, DataFrame], weights: Mapping[str, float], k: int) -> DataFrame:
    """Weighted sum of the per-user min-max scaled scores of the ``sources`` lists."""
    return blend_top_k([(sources[name], weights[name]) for name in sources], k).withColumn("source", F.lit("blend"))


def sources_of(strategy: Strategy, cfg: CandidatesConfig) -> list[str]:
    """The lists ``strategy`` is made from: itself, or blend's weighted sources."""
    return [s for s, w in cfg.blend_weights.items() if w > 0] if strategy == "blend" else [strategy]


def neighbor_method_of(source: str, cfg: CandidatesConfig) -> str | None:
    """The item_neighbors method a source votes through (None for als)."""
    return {"item_item": cfg.neighbor_method, "ease": "ease", "rp3beta": "rp3beta"}.get(source)


def every_blend_source(cfg: CandidatesConfig) -> CandidatesConfig:
    """``cfg`` with every source blend_weights names at a positive weight: what a blend search
    needs fitted, since it may raise a source the configuration weighs 0."""
    return cfg.model_copy(update={"blend_weights": {s: 1.0 for s in cfg.blend_weights}})


def needed_sources(cfg: CandidatesConfig) -> list[str]:
    """Every source list the configured strategies need, in a stable order."""
    return list(dict.fromkeys(s for strategy in cfg.strategies for s in sources_of(strategy, cfg)))


def needed_neighbor_methods(cfg: CandidatesConfig) -> list[str]:
    """The item_neighbors methods the configured strategies vote through."""
    methods = (neighbor_method_of(s, cfg) for s in needed_sources(cfg))
    return list(dict.fromkeys(m for m in methods if m))


@dataclass(frozen=True)
class ModelInputs:
    """What the strategies score with, read from the tables (candidates) or fitted on a split (evaluate)."""

    matrix: DataFrame
    """(user_idx, item_idx, confidence, last_event_time): the users' histories, the seen items."""
    user_factors: DataFrame | None = None
    """(user_idx, factors) of ALS, when a strategy needs it."""
    item_factors: DataFrame | None = None
    """(item_idx, factors) of ALS."""
    neighbors: Mapping[str, DataFrame] = field(default_factory=dict)
    """method -> (item_idx, neighbor_idx, similarity)."""
    vote_weights: Mapping[str, VoteWeight] = field(default_factory=dict)
    """method -> how its votes are weighted: the confidence transform its fit used, or None."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """source (als, or a neighbour method) -> model version, for the rows' model_version."""


class CandidateBuilder:
    """Builds each strategy's lists once, source by source (blend reuses its sources' lists).

    Use as a context manager: every list it persisted is released on exit.
    """

    def __init__(
        self, inputs: ModelInputs, users: DataFrame, popular: DataFrame, cfg: CandidatesConfig, explain: bool = False
    ) -> None:
        """
        Args:
            users: (user_idx, n_items) of the users to give lists to (``user_history_sizes``).
            popular: (rank, item_idx, users) of the cold-start popularity segment.
            explain: also name each ALS row's most similar history item (a shuffle of the lists
                and the histories by user); the neighbour strategies always carry their strongest
                vote, which costs no extra stage. Ranks and scores are the same either way.
        """
        self.inputs, self.users, self.popular, self.cfg = inputs, users, popular, cfg
        self.explain = explain
        self.shape = BlockShape(cfg.user_block, cfg.item_block)
        self._lists: dict[str, DataFrame] = {}
        self._held: list[DataFrame] = []  # intermediate caches, released with the lists
        self._warm = users.where(F.col("n_items") >= cfg.min_history).select("user_idx")

    def __enter__(self) -> CandidateBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        for df in (*self._lists.values(), *self._held):
            df.unpersist()
        self._lists.clear()
        self._held.clear()

    def model_version(self, strategy: Strategy) -> str:
        """The version string the strategy's rows carry (sources joined by '+' for blend)."""
        return "+".join(self._version_of(s) for s in sources_of(strategy, self.cfg))

    def _version_of(self, source: str) -> str:
        method = neighbor_method_of(source, self.cfg)
        return self.inputs.versions.get(method or "als", source)

    def source(self, name: str) -> DataFrame:
        """The scored list of one source for the warm users (no cold-start rows), persisted once."""
        if name not in self._lists:
            self._lists[name] = self._score(name).persist(StorageLevel.MEMORY_AND_DISK)
        return self._lists[name]

    def _score(self, name: str) -> DataFrame:
        cc, inputs = self.cfg, self.inputs
        if name == "als":
            if inputs.user_factors is None or inputs.item_factors is None:
                raise ValueError("strategy als needs ALS factors")
            users = inputs.user_factors.join(self._warm, "user_idx", "left_semi")
            top = als_candidates(users, inputs.item_factors, inputs.matrix, cc.k, self.shape)
            if not self.explain:
                return top
            # the explanation sizes its tasks by a count of these rows: cached, the top-k runs once
            top = top.persist(StorageLevel.MEMORY_AND_DISK)
            self._held.append(top)
            explained = nearest_history_items(top, inputs.matrix, inputs.item_factors, cc.max_history_votes)
            return explained.withColumn("source", F.lit("als"))
        if name == "blend":
            return blend_candidates({s: self.source(s) for s in sources_of("blend", cc)}, cc.blend_weights, cc.k)
        method = neighbor_method_of(name, cc)
        if method is None or method not in inputs.neighbors:
            raise ValueError(f"strategy {name} needs the {method!r} item neighbours")
        voters = cc.recent_items if name == "item_item" else cc.max_history_votes
        return item_item_candidates(
            inputs.matrix,
            inputs.neighbors[method],
            self._warm,
            cc.k,
            voters,
            inputs.vote_weights.get(method),
            source=name,
        )

    def strategy(self, strategy: Strategy) -> DataFrame:
        """The strategy's list for every user: its scored rows, and the popularity list (minus seen
        items) for cold users and users it could not score. (user_idx, item_idx, score, rank, source,
        because_item_idx, because_share)."""
        return self._with_cold_start(self.source(strategy))

    def blend(self, weights: Mapping[str, float]) -> DataFrame:
        """A blend of the (cached) source lists with other ``weights``, cold start included: the
        blend search weighs the same lists many ways."""
        used = {s: w for s, w in weights.items() if w > 0}
        scored = blend_candidates({s: self.source(s) for s in used}, used, self.cfg.k)
        return self._with_cold_start(scored)

    def cold_start_lists(self, k: int) -> DataFrame:
        """Every user's first ``k`` cold-start rows: what a user no source covers is given. The
        same rows as ``_with_cold_start``'s for any such user (its popular head is as long or longer)."""
        return self._cold_start_for(self.users, k)

    def _cold_start_for(self, users: DataFrame, k: int) -> DataFrame:
        max_seen = users.agg(F.max("n_items")).first()[0] or 0
        return cold_start_candidates(users, self.inputs.matrix, self.popular, k, min(max_seen, self.cfg.popular_k))

    def _with_cold_start(self, scored: DataFrame) -> DataFrame:
        covered = scored.select("user_idx").distinct()
        cold = self.users.join(covered, "user_idx", "left_anti")
        fallback = self._cold_start_for(cold, self.cfg.k)
        columns = ["user_idx", "item_idx", "score", "rank", "source", *_BECAUSE]
        return _with_because(scored).select(columns).unionByName(_with_because(fallback).select(columns))

    def strategies(self) -> Iterator[tuple[Strategy, DataFrame]]:
        """(strategy, list) for every configured strategy, in order."""
        for strategy in self.cfg.strategies:
            yield strategy, self.strategy(strategy)


_BECAUSE = ("because_item_idx", "because_share")


def _with_because(df: DataFrame) -> DataFrame:
    """``df`` with null explanation columns where it has none (popularity, unexplained ALS)."""
    for name, kind in zip(_BECAUSE, ("int", "float")):
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast(kind))
    return df


def log_config(cfg: CandidatesConfig) -> None:
    log.info(
        "candidates: strategies %s, k %d, cold start below %d items (%s popularity), blocks %d x %d",
        list(cfg.strategies),
        cfg.k,
        cfg.min_history,
        cfg.cold_start_segment,
        cfg.user_block,
        cfg.item_block,
    )
