"""refresh-users and the nightly rule that chooses it over a full retrain.

One warehouse on a small synthetic log: the stages build every table; then a new file brings
events for 15 known users and one new user, and ``refresh-users`` folds them in. Their factors
are the exact solve of their normal equations against the base model's item factors, their rows
are new, everyone else's rows and factors are byte for byte what they were, and every commit
names the base model. A second refresh commits nothing; changed settings are refused with what
to run instead. Then two nights: a few changed users fold in, and a bound crossed retrains.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import AlsConfig, Config
from recsys_spark.models.confidence import confidence_array
from recsys_spark.pipeline.staleness import last_stage_commit
from recsys_spark.storage.store import TableStore
from tests.conftest import synthetic_args

STRATEGIES = ["als", "item_item", "blend"]


def _args(root: Path, tmp: Path, **extra: object) -> list[str]:
    return synthetic_args(
        root,
        tmp,
        **{
            "generate.num_events": 3000,
            "generate.num_users": 150,
            "generate.num_items": 80,
            "als.rank": 4,
            "als.max_iter": 3,
            "similarity.method": "cosine",
            "similarity.top_n": 10,
            "candidates.strategies": json.dumps(STRATEGIES),
            "evaluation.max_users": 60,
            # this module is about what a refresh rewrites; the gate is tested in test_gate.py
            "gate.max_drop": 1,
            "gate.max_rows_change": 10,
            "gate.max_coverage_drop": 1,
            **extra,
        },
    )


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


def _later_events(raw: Path, name: str, users: list[int], new_users: list[str], seed: int) -> None:
    """A source file of 4 new events for each of ``users`` and 6 for each new user."""
    rng = random.Random(seed)
    lines = ["event_id,user_id,item_id,event_type,timestamp,value"]
    ids = [f"u{u:07d}" for u in users for _ in range(4)] + [u for u in new_users for _ in range(6)]
    for n, user in enumerate(ids):
        lines.append(f"{name}{n:012d},{user},i{rng.randrange(40):06d},view,2026-12-01T10:{n % 60:02d}:00.000Z,1")
    (raw / f"{name}.csv").write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class World:
    store: TableStore
    args: list[str]
    tmp: Path
    before: dict[str, int | None]
    after: dict[str, int | None]
    changed: set[str]
    """user_id of every user the new file touched."""
    output: str
    again: dict[str, int | None]
    """Versions after a second refresh-users on the same data."""
    again_output: str


@pytest.fixture(scope="module")
def world(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("refresh")
    root = tmp / "warehouse"
    args = _args(root, tmp)
    for stage in ("generate", "ingest", "train-als", "item-similarity", "candidates"):
        assert main([*args, stage]) == 0, stage
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    before = {t: store.version(t) for t in T.CATALOG}
    users = random.Random(3).sample(range(150), 15)
    _later_events(tmp / "raw", "later", users, ["unew0001"], seed=4)
    assert main([*args, "ingest"]) == 0
    code, output = _run([*args, "refresh-users"])
    assert code == 0, output
    after = {t: store.version(t) for t in T.CATALOG}
    code, again_output = _run([*args, "refresh-users"])
    assert code == 0, again_output
    again = {t: store.version(t) for t in T.CATALOG}
    changed = {f"u{u:07d}" for u in users} | {"unew0001"}
    return World(store, args, tmp, before, after, changed, output, again, again_output)


def _partition(store: TableStore, version: int | None, strategy: str) -> DataFrame:
    return store.read(T.USER_CANDIDATES, version=version, where=f"strategy = '{strategy}'")


def test_every_other_users_rows_are_carried_over_unchanged(world: World) -> None:
    s, changed = world.store, sorted(world.changed)
    for strategy in STRATEGIES:
        old = _partition(s, world.before[T.USER_CANDIDATES], strategy).where(~F.col("user_id").isin(changed))
        new = _partition(s, world.after[T.USER_CANDIDATES], strategy).where(~F.col("user_id").isin(changed))
        assert_df_equality(new, old, ignore_row_order=True, ignore_nullable=True)
    old_f = s.read(T.USER_FACTORS, version=world.before[T.USER_FACTORS]).where(~F.col("user_id").isin(changed))
    new_f = s.read(T.USER_FACTORS, version=world.after[T.USER_FACTORS]).where(~F.col("user_id").isin(changed))
    assert_df_equality(new_f, old_f, ignore_row_order=True, ignore_nullable=True)


def test_the_changed_users_get_new_lists_without_their_seen_items_and_the_new_user_is_personalised(
    world: World,
) -> None:
    s, changed = world.store, sorted(world.changed)
    matrix = s.read(T.INTERACTION_MATRIX).select("user_idx", "item_idx")
    for strategy in STRATEGIES:
        old = _partition(s, world.before[T.USER_CANDIDATES], strategy).where(F.col("user_id").isin(changed))
        new = _partition(s, world.after[T.USER_CANDIDATES], strategy).where(F.col("user_id").isin(changed))
        assert new.select("user_id").distinct().count() == len(changed)
        assert new.groupBy("user_id").count().where("count != 10").count() == 0
        assert new.join(matrix, ["user_idx", "item_idx"]).count() == 0, f"{strategy} lists a seen item"
        assert new.select("user_id", "item_id").subtract(old.select("user_id", "item_id")).count() > 0
    newcomer = _partition(s, world.after[T.USER_CANDIDATES], "als").where(F.col("user_id") == "unew0001")
    assert {r.source for r in newcomer.collect()} == {"als"}  # not the popularity fallback
    assert s.read(T.USER_FACTORS).where(F.col("user_id") == "unew0001").count() == 1


def test_refreshed_factors_are_the_exact_solve_against_the_base_item_factors(world: World) -> None:
    s = world.store
    params = json.loads(s.read(T.MODELS).orderBy(F.col("trained_at").desc()).first().params)
    cfg = AlsConfig.model_validate({k: v for k, v in params.items() if k != "search"})
    y_rows = s.read(T.ITEM_FACTORS).collect()
    y = np.zeros((max(r.item_idx for r in y_rows) + 1, cfg.rank))
    for r in y_rows:
        y[r.item_idx] = r.factors
    factors = {r.user_id: np.array(r.factors) for r in s.read(T.USER_FACTORS).collect()}
    ids = {r.user_id: r.user_idx for r in s.read(T.USERS).collect()}
    matrix = s.read(T.INTERACTION_MATRIX)
    for user in sorted(world.changed):
        rows = matrix.where(F.col("user_idx") == ids[user]).collect()
        c, p = np.ones(len(y)), np.zeros(len(y))
        for r in rows:  # the textbook objective over every item: c = 1 + alpha * r, p = 1 where seen
            c[r.item_idx] = 1 + cfg.alpha * confidence_array(np.array([r.confidence]), cfg.confidence)[0]
            p[r.item_idx] = 1.0
        a = (y.T * c) @ y + cfg.reg_param * len(rows) * np.eye(cfg.rank)
        np.testing.assert_allclose(factors[user], np.linalg.solve(a, (y.T * c) @ p), atol=1e-5, rtol=0)


def test_every_refresh_commit_names_the_base_model_and_the_item_side_is_untouched(world: World) -> None:
    s = world.store
    base = last_stage_commit(s, T.ITEM_FACTORS).metadata["model_version"]
    assert world.after[T.ITEM_FACTORS] == world.before[T.ITEM_FACTORS]
    assert world.after[T.ITEM_NEIGHBORS] == world.before[T.ITEM_NEIGHBORS]
    assert world.after[T.MODELS] == world.before[T.MODELS]
    entries: list[Any] = [last_stage_commit(s, T.USER_FACTORS), last_stage_commit(s, T.POPULAR_ITEMS)]
    entries += [last_stage_commit(s, T.USER_CANDIDATES, {"strategy": st}) for st in STRATEGIES]
    matrix = s.version(T.INTERACTION_MATRIX)
    for entry in entries:
        refresh = entry.metadata["refresh"]
        assert refresh["base_model"] == base
        assert refresh["to_version"] == matrix and refresh["from_version"] == matrix - 1
        assert refresh["users"] == len(world.changed) and refresh["new_users"] == 1
        assert entry.metadata["input_versions"][T.INTERACTION_MATRIX] == matrix
    assert world.after[T.USER_CANDIDATES] == world.before[T.USER_CANDIDATES] + len(STRATEGIES)
    assert f"{len(world.changed)} users folded in against {base} (1 new" in world.output


def test_a_second_refresh_on_the_same_data_commits_nothing(world: World) -> None:
    assert {t: v for t, v in world.again.items() if t != T.RUNS} == {
        t: v for t, v in world.after.items() if t != T.RUNS
    }
    assert "nothing to refresh" in world.again_output


def test_a_refresh_under_changed_settings_is_refused_naming_what_to_run(world: World) -> None:
    code, output = _run([*world.args, "--set", "als.rank=5", "refresh-users"])
    assert code != 0
    assert "refresh-users cannot fold in" in output
    assert "the ALS settings changed since als-" in output and "run train-als" in output
    code, output = _run([*world.args, "--set", "candidates.k=7", "refresh-users"])
    assert code != 0 and "the candidates settings changed since user_candidates/als v" in output
    rules = world.tmp / "banned.csv"
    rules.write_text("item_id,reason\ni000001,recalled\n")
    code, output = _run([*world.args, "--set", f"candidates.exclude_items={rules}", "refresh-users"])
    assert code != 0 and "the item rules changed (candidates.exclude_items): run candidates" in output
    assert world.store.version(T.USER_FACTORS) == world.again[T.USER_FACTORS]


def _night(world: World, **sets: object) -> dict[str, dict[str, Any]]:
    code, output = _run([*_args(Path(world.store.root), world.tmp, **sets), "nightly"])
    assert code == 0, output
    run = world.store.read(T.RUNS).where(F.col("job") == "nightly").orderBy(F.col("started_at").desc()).first()
    return {s["stage"]: s for s in json.loads(run.details)["stages"]}


def test_the_nightly_job_folds_in_a_few_changed_users_and_retrains_past_a_bound(world: World) -> None:
    _later_events(world.tmp / "raw", "night1", random.Random(5).sample(range(150), 8), [], seed=6)
    first = _night(world, **{"refresh.fold_in": "true"})
    assert first["refresh-users"]["ran"] and "train-als" not in first
    assert (
        "fold-in: " in first["refresh-users"]["why"]
        and "of the users changed since als-" in first["refresh-users"]["why"]
    )
    # the item side stays the base model's: its neighbours and the candidates are current
    assert not first["item-similarity:cosine"]["ran"] and not first["candidates"]["ran"]
    assert first["publish"]["ran"]

    second = _night(world, **{"refresh.fold_in": "true"})
    assert [name for name, s in second.items() if s["ran"]] == []

    _later_events(world.tmp / "raw", "night2", random.Random(7).sample(range(150), 8), [], seed=8)
    third = _night(world, **{"refresh.fold_in": "true", "refresh.max_changed_users": 0.05})
    assert third["train-als"]["ran"] and "refresh-users" not in third
    assert (
        "retrain: " in third["train-als"]["why"] and "(refresh.max_changed_users = 5.0%)" in third["train-als"]["why"]
    )
    assert third["item-similarity:cosine"]["ran"] and third["candidates"]["ran"]
