"""The ``refresh-users`` job: fresh factors and candidate rows for the users whose interactions
changed since the lists were built, against the fixed item side of the model in force.

A full night retrains ALS, rebuilds the neighbours and re-scores every user; on a day when a tenth
of the users did something, nine tenths of that work reproduces rows that were already right. The
refresh solves the changed users' ALS normal equations against the base model's item factors
(:mod:`recsys_spark.models.fold_in`, with the base model's own confidence, α and λ from its
``models`` row), new users included, and re-scores those users alone with every configured
strategy, through the same :class:`~recsys_spark.candidates.builder.CandidateBuilder` the
candidates job uses and the neighbours in force. Every other user's rows are carried over as they
were, and popular_items is recomputed on today's matrix (the cold-start lists of the refreshed
users come from it).

Which users changed is read from the tables, not from the newest event time: the users whose
interaction_matrix rows differ between the version the lists were built from (the oldest one their
commits record) and the latest, so late events, deletions and a killed earlier refresh are all
caught; a re-run on unchanged data commits nothing.

Every commit records the base model (``refresh.base_model``) and carries the base training's
settings hash, so the staleness rules still tell a fold-in from a retrain, and a refresh refuses,
naming what to run instead, when the settings or the neighbours moved since the lists were built.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pyspark import StorageLevel
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.errors import StorageError
from recsys_spark.pipeline.common import writable_store
from recsys_spark.pipeline.staleness import last_stage_commit, settings_hash

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import TableStore, WriteResult

log = logging.getLogger(__name__)

__all__ = [
    "BaseModel",
    "RefreshDecision",
    "RefreshResult",
    "base_model",
    "choose_refresh",
    "fold_in_floors",
    "refresh_blockers",
    "run_refresh_users",
]

#: The tables a refresh brings forward: a list built from older versions of these alone is one
#: a refresh can make current.
REFRESHED_INPUTS = (T.INTERACTION_MATRIX, T.USERS, T.ITEMS, T.USER_FACTORS)


@dataclass(frozen=True)
class BaseModel:
    """The full training whose item factors are in force."""

    model_version: str
    """Its ``models`` row (``als-<run id>``)."""
    item_factors_version: int
    """The item_factors version it wrote."""
    input_versions: dict[str, int]
    """interaction_matrix, users and items as it trained on them."""
    settings_hash: str | None
    """The hash of the ALS settings it was trained with."""
    trained_at: datetime
    """When it committed its item factors."""

    def age_days(self, now: datetime | None = None) -> float:
        """Days since it was trained."""
        return ((now or datetime.now(timezone.utc)) - self.trained_at).total_seconds() / 86_400


def base_model(store: TableStore) -> BaseModel | None:
    """The training behind the latest item_factors, or None when there are none."""
    entry = last_stage_commit(store, T.ITEM_FACTORS)
    if entry is None:
        return None
    meta = entry.metadata
    at = entry.timestamp if entry.timestamp.tzinfo else entry.timestamp.replace(tzinfo=timezone.utc)
    return BaseModel(
        str(meta.get("model_version")), entry.version, dict(meta["input_versions"]), meta.get("settings_hash"), at
    )


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did."""

    base: BaseModel
    from_version: int
    """The interaction_matrix version the lists were built from (the oldest their commits name)."""
    to_version: int
    """The interaction_matrix version they are refreshed to."""
    users: int = 0
    """Users whose interactions changed, each given fresh factors and rows."""
    new_users: int = 0
    """Of them, users the factors did not hold before."""
    without_factor: int = 0
    """Of them, users left without a factor (every item of theirs arrived after training), who get
    the popularity list."""
    seconds: float = 0.0
    writes: list[WriteResult] = field(default_factory=list)

    def render(self) -> str:
        if not self.writes:
            return (
                f"refresh-users: nothing to refresh, the lists are built from interaction_matrix "
                f"v{self.to_version} (base model {self.base.model_version})"
            )
        tables = ", ".join(f"{w.table} v{w.version}" for w in self.writes)
        return (
            f"refresh-users: {self.users:,} users folded in against {self.base.model_version} "
            f"({self.new_users:,} new, {self.without_factor:,} without a factored item), interaction_matrix "
            f"v{self.from_version} -> v{self.to_version}, in {self.seconds:.1f}s: {tables}"
        )


def _built_from(store: TableStore, cfg: Config) -> dict[str, Any]:
    """Each refreshed table's latest stage commit: user_factors, popular_items and every configured
    strategy's partition (``user_candidates/<strategy>``)."""
    out: dict[str, Any] = {T.USER_FACTORS: last_stage_commit(store, T.USER_FACTORS)}
    out[T.POPULAR_ITEMS] = last_stage_commit(store, T.POPULAR_ITEMS)
    for strategy in cfg.candidates.strategies:
        out[f"{T.USER_CANDIDATES}/{strategy}"] = last_stage_commit(store, T.USER_CANDIDATES, {"strategy": strategy})
    return out


def refresh_blockers(store: TableStore, cfg: Config) -> list[str]:
    """Why a refresh cannot bring the lists forward (empty: it can), each naming what to run."""
    base = base_model(store)
    if base is None or not store.exists(T.USER_FACTORS):
        return ["there is no trained model to fold in against: run `recsys-spark train-als`"]
    out = []
    if base.settings_hash != settings_hash(cfg, "train-als"):
        out.append(f"the ALS settings changed since {base.model_version} (als.*, tuning.*): run train-als")
    expected = settings_hash(cfg, "candidates")
    for name, entry in _built_from(store, cfg).items():
        if name == T.USER_FACTORS:
            continue
        if entry is None:
            out.append(f"{name} is not written yet: run `recsys-spark candidates`")
            continue
        if entry.metadata.get("settings_hash") != expected:
            out.append(f"the candidates settings changed since {name} v{entry.version}: run candidates")
        for table, version in sorted((entry.metadata.get("input_versions") or {}).items()):
            now = store.version(table)
            if table not in REFRESHED_INPUTS and now != version:
                out.append(
                    f"{table} is at v{now}, {name} v{entry.version} was built from v{version}: "
                    "run candidates (a refresh only rewrites the changed users' rows)"
                )
    if cfg.candidates.exclude_items:
        from recsys_spark.pipeline.rules import read_item_rules

        rules = read_item_rules(cfg.candidates.exclude_items).sha256
        entry = last_stage_commit(store, T.POPULAR_ITEMS)
        recorded = ((entry.metadata.get("rules") or {}) if entry else {}).get("sha256")
        if recorded != rules:
            out.append("the item rules changed (candidates.exclude_items): run candidates")
    return out


@dataclass(frozen=True)
class RefreshDecision:
    """The nightly job's choice, once the interaction data moved: fold in, or retrain."""

    fold_in: bool
    why: str


def choose_refresh(store: TableStore, cfg: Config) -> RefreshDecision:
    """Fold in when every bound of ``refresh.*`` holds, else a full retrain; ``why`` names the
    figures. The rule, in order: fold-in is enabled; a base model exists and a refresh can bring
    its lists forward (:func:`refresh_blockers`); it is younger than ``refresh.retrain_every_days``;
    at most ``refresh.max_new_items`` of the catalogue arrived since it trained; and at most
    ``refresh.max_changed_users`` of the users changed since it trained."""
    from recsys_spark.models.fold_in import changed_users

    rc = cfg.refresh
    if not rc.fold_in:
        return RefreshDecision(False, "retrain: refresh.fold_in = false")
    blockers = refresh_blockers(store, cfg)
    if blockers:
        return RefreshDecision(False, f"retrain: {blockers[0]}")
    base = base_model(store)
    assert base is not None
    age = base.age_days()
    if age >= rc.retrain_every_days:
        return RefreshDecision(
            False,
            f"retrain: {base.model_version} is {age:.1f} days old "
            f"(refresh.retrain_every_days = {rc.retrain_every_days:g})",
        )
    n_items = store.read(T.ITEMS).count()
    factored = store.read(T.ITEM_FACTORS, version=base.item_factors_version).count()
    new_items = (n_items - factored) / max(n_items, 1)
    if new_items > rc.max_new_items:
        return RefreshDecision(
            False,
            f"retrain: {new_items:.1%} of the items arrived since {base.model_version} "
            f"(refresh.max_new_items = {rc.max_new_items:.1%})",
        )
    trained_on = store.read(T.INTERACTION_MATRIX, version=base.input_versions[T.INTERACTION_MATRIX])
    changed = changed_users(trained_on, store.read(T.INTERACTION_MATRIX)).count()
    share = changed / max(store.read(T.USERS).count(), 1)
    figures = f"{share:.1%} of the users changed since {base.model_version}"
    if share > rc.max_changed_users:
        return RefreshDecision(False, f"retrain: {figures} (refresh.max_changed_users = {rc.max_changed_users:.1%})")
    return RefreshDecision(
        True, f"fold-in: {figures}, {new_items:.1%} new items, the base model {age:.1f} days old (refresh.*)"
    )


def fold_in_floors(store: TableStore) -> dict[str, int] | None:
    """While the user factors in force are a refresh of a base model, the versions its training
    read: the item-side stages are current when built from these or newer (None after a retrain)."""
    entry = last_stage_commit(store, T.USER_FACTORS)
    if entry is None or "refresh" not in entry.metadata:
        return None
    base = base_model(store)
    return dict(base.input_versions) if base else None


def run_refresh_users(spark: SparkSession, cfg: Config, ctx: RunContext) -> RefreshResult:
    """Fold in every user whose interactions changed since the lists were built; rewrite
    user_factors, popular_items and each configured strategy's partition of user_candidates with
    their new rows, every other user's carried over. Commits nothing when no user changed."""
    from recsys_spark.candidates.builder import CandidateBuilder, user_history_sizes
    from recsys_spark.models.fold_in import changed_users, fold_in_users
    from recsys_spark.pipeline.candidates import (
        candidate_inputs,
        eligible_popular_items,
        excluded_items,
        file_bounds,
        lookup_rows,
        model_inputs,
        served_als,
        write_popular_items,
        write_strategy,
    )

    started = time.perf_counter()
    store = writable_store(spark, cfg)
    blockers = refresh_blockers(store, cfg)
    if blockers:
        raise StorageError("refresh-users cannot fold in:\n  " + "\n  ".join(blockers))
    base = base_model(store)
    assert base is not None  # refresh_blockers said so
    als = served_als(store, base.item_factors_version)
    if als is None:
        raise StorageError(f"models has no row for {base.model_version}: run train-als")
    built = _built_from(store, cfg)
    now = store.version(T.INTERACTION_MATRIX)
    assert now is not None
    recorded = [e.metadata["input_versions"].get(T.INTERACTION_MATRIX) for e in built.values() if e is not None]
    since = min(v for v in recorded if v is not None)
    if since == now:
        return RefreshResult(base, since, now, seconds=time.perf_counter() - started)

    cc = cfg.candidates
    matrix = store.read(T.INTERACTION_MATRIX, version=now)
    changed = changed_users(store.read(T.INTERACTION_MATRIX, version=since), matrix).persist()
    history = matrix.join(changed, "user_idx", "left_semi").persist(StorageLevel.MEMORY_AND_DISK)
    user_ids = store.read(T.USERS).select("user_idx", "user_id")
    item_ids = store.read(T.ITEMS).select("item_idx", "item_id")
    item_factors = store.read(T.ITEM_FACTORS, version=base.item_factors_version)
    writes: list[WriteResult] = []
    cached = [changed, history]
    try:
        n_changed = changed.count()
        fresh = fold_in_users(history, item_factors, als).persist()
        cached.append(fresh)
        n_fresh = fresh.count()
        old = store.read(T.USER_FACTORS).select("user_idx", "user_id", "factors", "model_version")
        n_new = changed.join(old, "user_idx", "left_anti").count()  # changed users without a factor before
        record = {
            "base_model": base.model_version,
            "from_version": since,
            "to_version": now,
            "users": n_changed,
            "new_users": n_new,
        }
        log.info("refresh: %d users changed (%d new), %d with a factored item", n_changed, n_new, n_fresh)
        factors = old.join(changed, "user_idx", "left_anti").unionByName(
            fresh.join(user_ids, "user_idx").select(
                "user_idx", "user_id", "factors", F.lit(base.model_version).alias("model_version")
            )
        )
        factor_inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
        writes.append(
            store.write(
                factors.repartitionByRange("user_idx").sortWithinPartitions("user_idx"),
                T.USER_FACTORS,
                "overwrite",
                ctx.commit(
                    model_version=base.model_version,
                    input_versions=factor_inputs,
                    settings_hash=base.settings_hash,
                    refresh=record,
                ),
            )
        )

        inputs = candidate_inputs(store, cfg)  # the user_factors just written among them
        settings = settings_hash(cfg, "candidates")
        excluded, rules = excluded_items(spark, cc, item_ids)
        if excluded is not None:
            cached.append(excluded)
        applied = {"rules": rules} if rules else {}
        popular = eligible_popular_items(store.read(T.INTERACTION_MATRIX, version=now), excluded, cc).persist()
        cached.append(popular)
        commit = ctx.commit(input_versions=inputs, settings_hash=settings, refresh=record, **applied)
        writes.append(write_popular_items(store, popular, item_ids, f"popular-{ctx.run_id}", commit))
        segment = popular.where(F.col("segment") == cc.cold_start_segment).select("rank", "item_idx", "users")

        tuned: dict[str, Any] = {}
        blend = built.get(f"{T.USER_CANDIDATES}/blend")
        if blend is not None and "blend_weights" in blend.metadata:
            # the weights the last blend search chose stay in force until the next full candidates run
            tuned = {k: blend.metadata[k] for k in ("blend_weights", "search") if k in blend.metadata}
            cc = cc.model_copy(update={"blend_weights": tuned["blend_weights"]})
        bounds = file_bounds(spark, user_ids, store.read(T.USERS).count(), cc.k, cc.rows_per_file)
        sizes = user_history_sizes(history).persist()
        cached.append(sizes)
        model = model_inputs(store, cfg, inputs, history, excluded)
        with CandidateBuilder(model, sizes, segment, cc, explain=True) as builder:
            for strategy, lists in builder.strategies():
                version = store.version(T.USER_CANDIDATES)
                # Read once, by the write itself, and not persisted: the pinned version's files
                # outlive this overwrite (a commit removes them from the log, not from the disk),
                # and caching 4.5M carried-over rows first took 14-23 s a strategy against 8-11 s
                # for the bare read-and-write on the demo's lists (tests/test_refresh.py checks the
                # carried rows).
                keep = store.read(T.USER_CANDIDATES, version=version, where=f"strategy = '{strategy}'").join(
                    F.broadcast(changed), "user_idx", "left_anti"
                )
                model_version = builder.model_version(strategy)
                rows = lookup_rows(lists, user_ids, item_ids, model_version, strategy, bounds, keep=keep)
                commit = ctx.commit(
                    model_version=model_version,
                    input_versions=inputs,
                    settings_hash=settings,
                    strategy=strategy,
                    refresh=record,
                    **(tuned if strategy == "blend" else {}),
                    **applied,
                )
                writes.append(write_strategy(store, rows, strategy, commit))
                log.info("refresh %s: %d users re-scored", strategy, n_changed)
    finally:
        for df in cached:
            df.unpersist()
    return RefreshResult(base, since, now, n_changed, n_new, n_changed - n_fresh, time.perf_counter() - started, writes)
