"""The blend search's trials on the driver: every weight vector blended and scored in numpy.

Why: a blend trial in Spark (``blend_top_k``, the cold-start union, ``ranking_metrics``) took
8-20 s on 2 cores, nearly all of it scheduling, and a search over four sources in steps of 1/4 has
35 weight vectors. Each source's validation list is built once in Spark anyway. Collected (the
validation users' top-k rows per source, a few MB), they are blended here by the very
``blend_partition`` the served blend runs in its tasks. The result is scored by
:func:`recsys_spark.evaluation.driver_metrics.ranking_metric`, the numpy twin of
:func:`recsys_spark.evaluation.metrics.ranking_metrics` that ``tests/test_metrics.py`` holds equal to
the Spark metric. A trial then costs well under a second.

The lists and the scores are those of the Spark path, not an approximation of them:

* a user no weighted source covers gets the cold-start list, as ``CandidateBuilder.blend`` gives;
* each source list is collected whole, since min-max scaling sees every row of a user's list;
  only the blend is cut to the metric's k, and the top k of a blend is the head of its top
  ``candidates.k``, both being ordered by (score desc, item asc).

Above :data:`MAX_DRIVER_ROWS` source rows the search keeps the Spark path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from recsys_spark.candidates.blend import blend_partition
from recsys_spark.evaluation.driver_metrics import ranking_metric

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

__all__ = ["CollectedBlend"]


def _arrays(df: DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    table = df.select(*columns).toArrow()
    return {c: table.column(c).to_numpy() for c in columns}


@dataclass
class CollectedBlend:
    """The blend search's inputs on the driver: source lists, cold-start lists and the truth."""

    lists: pa.Table
    """(user_idx, item_idx, score, src) of every source, ``src`` indexing ``sources``."""
    sources: list[str]
    fallback: dict[str, np.ndarray]
    """user_idx, item_idx, rank: each validation user's cold-start list (first k)."""
    truth: dict[str, np.ndarray]
    """user_idx, item_idx: the relevant validation pairs."""
    metric: str
    k: int

    @classmethod
    def collect(
        cls, source_lists: Mapping[str, DataFrame], fallback: DataFrame, truth: DataFrame, metric: str, k: int
    ) -> CollectedBlend:
        """Collect the Spark lists once: ``source_lists`` (user_idx, item_idx, score, rank) by
        source, ``fallback`` (user_idx, item_idx, rank), ``truth`` (user_idx, item_idx, ...)."""
        parts = []
        for i, df in enumerate(source_lists.values()):
            # whole lists, not their first k: min-max scaling sees every row of a user's list
            table = df.select("user_idx", "item_idx", "score").toArrow()
            parts.append(table.append_column("src", pa.array(np.full(table.num_rows, i, dtype=np.int8))))
        lists = pa.concat_tables(parts)
        cold = fallback.where(fallback["rank"] <= k)
        out = cls(
            lists,
            list(source_lists),
            _arrays(cold, ["user_idx", "item_idx", "rank"]),
            _arrays(truth, ["user_idx", "item_idx"]),
            metric,
            k,
        )
        log.info(
            "blend search on the driver: %d source rows of %d sources, %d cold-start rows, %d truth pairs",
            lists.num_rows,
            len(parts),
            len(out.fallback["user_idx"]),
            len(out.truth["user_idx"]),
        )
        return out

    def lists_for(self, weights: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user_idx, item_idx, rank) of the blend with ``weights``, cold start included, ranks <= k."""
        used = [s for s in self.sources if weights.get(s, 0.0) > 0]
        if not used:
            raise ValueError(f"blend weights must include a positive one, got {dict(weights)}")
        total = float(sum(weights[s] for s in used))
        remap = np.full(len(self.sources), -1, dtype=np.int8)
        for j, s in enumerate(used):
            remap[self.sources.index(s)] = j
        src = remap[self.lists.column("src").to_numpy()]
        table = self.lists.filter(pa.array(src >= 0)).set_column(3, "src", pa.array(src[src >= 0]))
        blended = blend_partition(table, [float(weights[s]) / total for s in used], self.k)
        u = blended.column(0).to_numpy().astype(np.int64)
        i = blended.column(1).to_numpy().astype(np.int64)
        r = blended.column(3).to_numpy().astype(np.int64)
        cold = ~np.isin(self.fallback["user_idx"], np.unique(u))
        return (
            np.r_[u, self.fallback["user_idx"][cold]],
            np.r_[i, self.fallback["item_idx"][cold]],
            np.r_[r, self.fallback["rank"][cold]],
        )

    def score(self, weights: Mapping[str, float]) -> float:
        """The metric of the blend with ``weights`` on the validation truth."""
        u, i, r = self.lists_for(weights)
        return ranking_metric(self.metric, self.k, u, i, r, self.truth["user_idx"], self.truth["item_idx"])
