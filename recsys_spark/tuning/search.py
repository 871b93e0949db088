"""Hyperparameter search on a validation carve-out of the training data (never a test fold).

A search is given one training matrix (the interaction matrix in train-als / item-similarity /
candidates, a split's training part in evaluate). It carves each user's ``tuning.validation_fraction``
of items off as the validation part, fits every trial on the rest, ranks the validation users'
unseen items with the same candidate code the ``candidates`` stage serves with, and scores the lists by the
evaluation's headline metric (NDCG@10 by default) on the validation items. The winner is then
fitted on the whole training matrix by the caller.

* ALS: random search with successive halving. ``als_trials`` configurations are drawn
  log-uniformly (rank, reg_param, alpha) and from the confidence transforms; each is fitted with
  ``als_short_iter`` iterations, and the best ``als_keep`` share again with ``als.max_iter``.
  Cheap short fits rank configurations well enough (the order of the good ones rarely changes
  after a few sweeps), so the budget goes to the promising ones.
* EASE: a grid of l2 x confidence transform, each trial a full EASE fit (Gram, solve, pruning:
  about 20 s on ML-100K, most of it Spark scheduling rather than the 0.4 s solve).
* RP3beta: a grid of alpha x beta.
* Blend: a grid over the simplex of its sources' weights, the sources' validation lists computed
  once (each source fitted with its own chosen settings), then blended and scored on the driver
  (:mod:`recsys_spark.tuning.blend_search`: under a second a trial, against 8-20 s in Spark).

Every search stops starting trials after ``tuning.max_seconds``, logs each trial with the best so
far, and returns every trial so the choice can be recorded (models row, commit metadata,
evaluation.json).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.config.schema import Config, TuningConfig
from recsys_spark.evaluation.metrics import ranking_metrics
from recsys_spark.evaluation.splits import random_split, relevant_items

log = logging.getLogger(__name__)

__all__ = [
    "SearchResult",
    "Trial",
    "Validation",
    "als_space",
    "blend_grid",
    "carve_validation",
    "log_uniform",
    "run_search",
    "validation_score",
]


@dataclass(frozen=True)
class Trial:
    """One evaluated configuration."""

    params: dict[str, Any]
    """The settings tried."""
    value: float | None
    """The headline metric on the validation part (None: the trial failed or was skipped)."""
    seconds: float
    """Wall time of the fit and the scoring."""
    rung: int = 0
    """Successive halving rung (0: the short fits; 1: the survivors at full length)."""


@dataclass(frozen=True)
class SearchResult:
    """What a search chose, and everything it tried."""

    model: str
    """What was searched: als, ease, rp3beta, blend."""
    best: dict[str, Any]
    """The chosen settings."""
    best_value: float | None
    """Their validation metric."""
    metric: str
    """The metric, e.g. "ndcg@10"."""
    trials: list[Trial] = field(default_factory=list)
    """Every trial, in order."""
    skipped: int = 0
    """Trials not started because the time budget ran out."""
    seconds: float = 0.0
    """Wall time of the whole search."""

    def as_record(self) -> dict[str, Any]:
        """JSON-ready summary, for the models row, commit metadata and evaluation.json."""
        return {
            "model": self.model,
            "metric": self.metric,
            "best": self.best,
            "best_value": self.best_value,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
            "trials": [{**asdict(t), "seconds": round(t.seconds, 2)} for t in self.trials],
        }


@dataclass
class Validation:
    """A training matrix cut into a fitting part and a validation part."""

    fit: DataFrame
    """The training rows the trials are fitted on."""
    truth: DataFrame
    """(user_idx, item_idx, grade): the relevant validation items."""
    users: DataFrame
    """(user_idx, n_items): users with a relevant validation item and fitting history."""
    metric: str
    k: int
    graded: bool = False

    def release(self) -> None:
        for df in (self.fit, self.truth, self.users):
            df.unpersist()


def carve_validation(train: DataFrame, cfg: Config) -> Validation:
    """Each user's ``tuning.validation_fraction`` of items as validation, the rest to fit on."""
    tc, ec = cfg.tuning, cfg.evaluation
    fit, valid = random_split(train, tc.validation_fraction, tc.seed)
    fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
    sizes = fit.groupBy("user_idx").agg(F.count("*").alias("n_items"))
    truth = relevant_items(valid, ec.rating_threshold).join(sizes.select("user_idx"), "user_idx", "left_semi")
    truth = truth.persist()
    users = sizes.join(truth.select("user_idx").distinct(), "user_idx", "left_semi").persist()
    n_fit, n_truth, n_users = fit.count(), truth.count(), users.count()
    log.info(
        "validation carve-out: %d pairs to fit on, %d relevant validation pairs of %d users (fraction %g, seed %d)",
        n_fit,
        n_truth,
        n_users,
        tc.validation_fraction,
        tc.seed,
    )
    if n_users == 0:
        raise ValueError(
            "the validation carve-out has no user with a relevant held-out item: too little data "
            "to tune on (raise tuning.validation_fraction, or turn tuning off)"
        )
    return Validation(fit, truth, users, ec.headline_metric, ec.headline_k)


def validation_score(lists: DataFrame, validation: Validation) -> float | None:
    """The headline metric of ``lists`` (user_idx, item_idx, rank) on the validation items."""
    row = (
        ranking_metrics(lists.select("user_idx", "item_idx", "rank"), validation.truth, [validation.k])
        .where(F.col("metric") == validation.metric)
        .first()
    )
    return None if row is None or row.value is None else float(row.value)


def run_search(
    model: str,
    candidates: Iterable[dict[str, Any]],
    objective: Callable[[dict[str, Any]], float | None],
    metric: str,
    tc: TuningConfig,
    rung: int = 0,
    started: float | None = None,
) -> SearchResult:
    """Evaluate each candidate with ``objective`` (higher is better) until the time budget is spent."""
    started = time.monotonic() if started is None else started
    trials: list[Trial] = []
    todo = list(candidates)
    skipped = 0
    best: Trial | None = None
    for i, params in enumerate(todo, 1):
        if time.monotonic() - started > tc.max_seconds:
            skipped = len(todo) - i + 1
            log.warning(
                "search %s: time budget of %.0f s spent; %d trial(s) not started", model, tc.max_seconds, skipped
            )
            break
        t0 = time.monotonic()
        value = objective(params)
        trial = Trial(params, value, time.monotonic() - t0, rung)
        trials.append(trial)
        if value is not None and (best is None or best.value is None or value > best.value):
            best = trial
        log.info(
            "search %s %d/%d (rung %d): %s -> %s = %s (%.1f s; best %s)",
            model,
            i,
            len(todo),
            rung,
            _short(params),
            metric,
            _fmt(value),
            trial.seconds,
            _fmt(best.value if best else None),
        )
    if best is None:
        raise ValueError(f"search {model}: no trial produced a score")
    return SearchResult(model, dict(best.params), best.value, metric, trials, skipped, time.monotonic() - started)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _short(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


# -- search spaces -------------------------------------------------------------------------------


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw uniform in log between ``lo`` and ``hi`` (``lo`` when the range is empty)."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def als_space(tc: TuningConfig) -> list[dict[str, Any]]:
    """``als_trials`` configurations drawn from the ALS ranges, deterministically from the seed."""
    rng = np.random.default_rng([tc.seed, 1])
    out = []
    for _ in range(tc.als_trials):
        out.append(
            {
                "rank": int(rng.choice(tc.als_rank)),
                "reg_param": round(log_uniform(rng, *tc.als_reg_param), 5),
                "alpha": round(log_uniform(rng, *tc.als_alpha), 4),
                "confidence": str(rng.choice(tc.als_confidence)),
            }
        )
    return out


def survivors(result: SearchResult, keep: float) -> list[dict[str, Any]]:
    """The best ``keep`` share of a rung's scored trials (at least one), best first."""
    scored = sorted((t for t in result.trials if t.value is not None), key=lambda t: -t.value)
    return [t.params for t in scored[: max(1, math.ceil(len(scored) * keep))]]


def blend_grid(sources: Sequence[str], steps: int) -> Iterator[dict[str, float]]:
    """Weights over ``sources`` on the simplex, in steps of 1 / ``steps`` (every source may be 0 but not all)."""
    for combo in itertools.product(range(steps + 1), repeat=len(sources)):
        if sum(combo) == steps:
            yield {s: round(c / steps, 6) for s, c in zip(sources, combo)}
