"""The nightly job: each stage runs exactly when its commits say its inputs or settings moved.

One warehouse goes through six nights on a small synthetic log: the first builds everything; the
second, on the same input, changes no table; a stage run by hand in between is not redone, while
the stage that reads its output is; a changed ALS setting reruns ALS and what depends on it, not the
item-item cosine; a new source file reruns everything; and every night is one ``runs`` row
listing its stages.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config
from recsys_spark.pipeline.staleness import settings_hash, why_stale
from recsys_spark.storage.store import TableStore
from tests.conftest import synthetic_args

EVERY_STAGE = [
    "ingest",
    "train-als",
    "item-similarity:als",
    "item-similarity:cosine",
    "candidates",
    "evaluate",
    "publish",
]


@dataclass(frozen=True)
class Night:
    versions: dict[str, int | None]
    """Every table's version after the night."""
    run: dict[str, Any]
    """The night's ``runs`` row."""

    @property
    def stages(self) -> list[dict[str, Any]]:
        return json.loads(self.run["details"])["stages"]

    @property
    def ran(self) -> list[str]:
        return [s["stage"] for s in self.stages if s["ran"]]


@dataclass(frozen=True)
class Nights:
    store: TableStore
    cfg: Config
    before: dict[str, int | None]
    """Versions before the first night (only the raw log exists)."""
    nights: list[Night]
    hand_run: dict[str, int | None]
    """Versions right after the item-similarity job run by hand between nights 2 and 3."""


def _args(root: Path, tmp: Path, **extra: object) -> list[str]:
    sets: dict[str, object] = {
        "generate.num_events": 3000,
        "generate.num_users": 150,
        "generate.num_items": 80,
        "als.rank": 4,
        "als.max_iter": 2,
        "similarity.method": "als",
        "similarity.top_n": 10,
        "candidates.strategies": '["als", "item_item"]',
        "evaluation.max_users": 100,
        # this module is about which stages run; the gate's bounds are tested in test_gate.py
        "gate.max_drop": 1,
        "gate.max_rows_change": 10,
        "gate.max_coverage_drop": 1,
        **extra,
    }
    return synthetic_args(root, tmp, **sets)


@pytest.fixture(scope="module")
def nights(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Nights:
    tmp = tmp_path_factory.mktemp("nightly")
    root = tmp / "warehouse"
    args = _args(root, tmp)
    assert main([*args, "generate"]) == 0
    cfg = base_config.with_overrides([f"storage.root={root}"])
    store = TableStore(spark, cfg.storage)
    before = {t: store.version(t) for t in T.CATALOG}
    out: list[Night] = []

    def night(argv: list[str]) -> None:
        assert main([*argv, "nightly"]) == 0
        rows = store.read(T.RUNS).where(F.col("job") == "nightly").orderBy("started_at").collect()
        out.append(Night({t: store.version(t) for t in T.CATALOG}, rows[-1].asDict()))

    night(args)
    night(args)
    assert main([*args, "--set", "similarity.method=cosine", "item-similarity"]) == 0
    hand_run = {t: store.version(t) for t in T.CATALOG}
    night(args)
    night(_args(root, tmp, **{"als.rank": 5}))
    # the same log generated with another seed: new events, in files ingest has not seen
    more = tmp / "more"
    assert main([*args, "--set", f"generate.output={more}", "--set", "generate.seed=99", "generate"]) == 0
    for i, f in enumerate(sorted(p for p in more.iterdir() if p.is_file() and not p.name.startswith((".", "_")))):
        shutil.copy(f, tmp / "raw" / f"later-{i}-{f.name}")
    night(_args(root, tmp, **{"als.rank": 5}))
    return Nights(store, cfg, before, out, hand_run)


def test_the_first_night_runs_every_stage_in_order(nights: Nights) -> None:
    first = nights.nights[0]
    assert [s["stage"] for s in first.stages] == EVERY_STAGE
    assert first.ran == EVERY_STAGE
    assert first.run["status"] == "succeeded"
    assert first.versions[T.PUBLISHED] == 0
    for table in (T.INTERACTION_MATRIX, T.USER_FACTORS, T.ITEM_NEIGHBORS, T.USER_CANDIDATES, T.EVALUATION_SUMMARY):
        assert nights.before[table] is None and first.versions[table] is not None, table


def test_a_second_night_on_the_same_input_changes_no_table_but_runs(nights: Nights) -> None:
    first, second = nights.nights[:2]
    assert second.ran == []
    assert [s["stage"] for s in second.stages] == EVERY_STAGE
    assert all(s["committed"] == {} for s in second.stages)
    changed = [t for t in T.CATALOG if first.versions[t] != second.versions[t]]
    assert changed == [T.RUNS]
    assert json.loads(second.run["output_versions"]) == {}
    current = {s["stage"]: s["why"] for s in second.stages}
    assert current["ingest"] == "no new source file"
    assert current["candidates"] == "inputs and settings unchanged"
    assert current["publish"].startswith("already in force (user_candidates v")


def test_a_stage_run_by_hand_is_not_redone_but_what_reads_its_output_is(nights: Nights) -> None:
    third = nights.nights[2]
    assert third.ran == ["candidates", "publish"]
    why = {s["stage"]: s["why"] for s in third.stages}
    hand = nights.hand_run[T.ITEM_NEIGHBORS]
    assert f"item_neighbors is at v{hand}" in why["candidates"]
    assert why["item-similarity:cosine"] == "inputs and settings unchanged"
    # evaluation refits its models on its own split of the matrix: the neighbour table is no input of it
    assert why["evaluate"] == "inputs and settings unchanged"
    assert third.versions[T.ITEM_NEIGHBORS] == hand


def test_a_changed_setting_reruns_its_stage_and_what_depends_on_it_only(nights: Nights) -> None:
    fourth = nights.nights[3]
    assert fourth.ran == ["train-als", "item-similarity:als", "candidates", "evaluate", "publish"]
    why = {s["stage"]: s["why"] for s in fourth.stages}
    assert why["train-als"].startswith("settings changed since user_factors v")
    assert why["item-similarity:als"].startswith("item_factors is at v")
    assert why["item-similarity:cosine"] == "inputs and settings unchanged"


def test_a_new_source_file_reruns_every_stage(nights: Nights) -> None:
    fifth = nights.nights[4]
    assert fifth.ran == EVERY_STAGE
    ingest = next(s for s in fifth.stages if s["stage"] == "ingest")
    assert ingest["why"].endswith("new events") and not ingest["why"].startswith("0 ")
    # the fold-in refresh is off unless configured (test_refresh.py covers it)
    train = next(s for s in fifth.stages if s["stage"] == "train-als")
    assert train["why"].endswith("; retrain: refresh.fold_in = false")
    assert fifth.versions[T.INTERACTIONS] > nights.nights[3].versions[T.INTERACTIONS]


def test_each_night_is_one_runs_row_whose_versions_are_its_stages_commits(nights: Nights) -> None:
    runs = nights.store.read(T.RUNS).where(F.col("job") == "nightly").collect()
    assert len(runs) == len(nights.nights)
    for night in nights.nights:
        committed: dict[str, list[int]] = {}
        for s in night.stages:
            for table, versions in s["committed"].items():
                committed.setdefault(table, []).extend(versions)
        recorded = json.loads(night.run["output_versions"])
        assert {t: sorted(v) for t, v in recorded.items()} == {t: sorted(v) for t, v in committed.items()}
        assert all(s["seconds"] >= 0 for s in night.stages)


def test_every_stage_is_current_after_the_last_night(nights: Nights) -> None:
    store, cfg = (
        nights.store,
        nights.cfg.with_overrides(["als.rank=5", "als.max_iter=2", "similarity.top_n=10", "candidates.k=10"]),
    )
    # the check the night makes, asked directly: a hash of other settings is a reason to run
    assert why_stale(store, T.USER_FACTORS, "0" * 12).startswith("settings changed since user_factors v")
    assert why_stale(store, T.USER_CANDIDATES, "x", {"strategy": "ease"}) == (
        "user_candidates (strategy = 'ease') not written yet"
    )
    assert settings_hash(cfg, "train-als") != settings_hash(cfg.with_overrides(["als.rank=6"]), "train-als")
    assert settings_hash(cfg, "train-als") == settings_hash(cfg.with_overrides(["serve.port=9"]), "train-als")
