"""Item neighbours by ``similarity.method``: one entry point over cosine, EASE, RP3beta and ALS factors.

Every method returns the same rows, (item_idx, neighbor_idx, similarity, rank, cooccurrence), so
``item_neighbors`` holds them side by side and the candidates stage votes through any of them.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame

from recsys_spark.config.schema import SimilarityConfig
from recsys_spark.models.cosine import item_cosine, item_factor_cosine

log = logging.getLogger(__name__)


def vote_weight(params: SimilarityConfig, method: str | None = None) -> tuple[str, float] | None:
    """How votes through ``method``'s neighbours are weighted in candidates: by the confidence
    transform its fit used (None: each vote counts 1, for binary values and latent neighbours)."""
    own = params.params(method)
    confidence = getattr(own, "confidence", "binary")
    return None if confidence == "binary" else (confidence, own.epsilon)


def fit_item_neighbors(
    params: SimilarityConfig, matrix: DataFrame | None = None, item_factors: DataFrame | None = None
) -> DataFrame:
    """The ``params.method`` neighbours: (item_idx, neighbor_idx, similarity, rank, cooccurrence).

    Args:
        matrix: (user_idx, item_idx, confidence) rows, for the behavioural methods (cosine, ease,
            rp3beta).
        item_factors: (item_idx, factors), for method als.
    """
    if params.method == "als":
        if item_factors is None:
            raise ValueError("similarity.method = 'als' needs item factors")
        return item_factor_cosine(item_factors, params)
    if matrix is None:
        raise ValueError(f"similarity.method = {params.method!r} needs the interaction matrix")
    if params.method == "cosine":
        return item_cosine(matrix, params)
    # both build on this module's cell kernel, so they import it: importing them here avoids the cycle
    if params.method == "ease":
        from recsys_spark.models.ease import item_ease

        return item_ease(matrix, params)
    if params.method == "rp3beta":
        from recsys_spark.models.rp3beta import item_rp3beta

        return item_rp3beta(matrix, params)
    raise ValueError(f"similarity.method {params.method!r} is not implemented")
