"""The quality gate, the published pointer and rollback, on one warehouse through one story.

A good night publishes; a broken model (rank 1, one iteration) is refused with every failed check
named, while a long-lived reader and the CLI keep the published lists; hand-corrupted lists (a NaN
score, a seen item) are refused; a good night publishes again; a rollback is seen by the
long-lived reader, the rolled-back version is refused from then on, and a rollback to a run
brings that run's versions back.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config, GateConfig
from recsys_spark.evaluation.gate import gate_checks, list_stats
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import last_stage_commit
from recsys_spark.serving.lookup import Recommendations
from recsys_spark.storage.published import Publication, current_publication, publications
from recsys_spark.storage.store import TableStore
from tests.conftest import synthetic_args


@dataclass
class Story:
    store: TableStore
    root: str
    said: dict[str, tuple[int, str]] = field(default_factory=dict)
    """step -> (exit code, what it printed)."""
    published: dict[str, Publication | None] = field(default_factory=dict)
    """step -> the publication in force after it."""
    reader: dict[str, int | None] = field(default_factory=dict)
    """step -> the user_candidates version the long-lived reader serves after a refresh."""
    latest: dict[str, int | None] = field(default_factory=dict)
    """step -> the latest user_candidates version."""
    runs: list[dict[str, Any]] = field(default_factory=list)


def _args(root: Path, tmp: Path, **extra: object) -> list[str]:
    sets: dict[str, object] = {
        "generate.num_events": 12000,
        "generate.num_users": 400,
        "generate.num_items": 150,
        "als.rank": 8,
        "als.max_iter": 6,
        "similarity.method": "cosine",
        "candidates.strategies": '["als"]',
        **extra,
    }
    return synthetic_args(root, tmp, **sets)


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


def _corrupt(spark: SparkSession, store: TableStore) -> None:
    """A new version of the als lists with one NaN score and one item the user has seen."""
    entry = last_stage_commit(store, T.USER_CANDIDATES)
    assert entry is not None
    rows = store.read(T.USER_CANDIDATES, where="strategy = 'als'")
    first = rows.orderBy("user_id", "rank").first()
    seen = (
        store.read(T.INTERACTION_MATRIX)
        .where(F.col("user_idx") == first["user_idx"])
        .select("item_idx")
        .first()["item_idx"]
    )
    target = (F.col("user_idx") == first["user_idx"]) & (F.col("rank") == 1)
    other = rows.where(F.col("user_idx") != first["user_idx"]).orderBy("user_id").first()
    nan_row = (F.col("user_idx") == other["user_idx"]) & (F.col("rank") == 2)
    bad = rows.withColumn("item_idx", F.when(target, F.lit(seen)).otherwise(F.col("item_idx"))).withColumn(
        "score", F.when(nan_row, F.lit(float("nan")).cast("float")).otherwise(F.col("score"))
    )
    ctx = RunContext.new("corrupt", Config())
    meta = {k: v for k, v in entry.metadata.items() if k in ("input_versions", "settings_hash", "model_version")}
    commit = ctx.commit(**meta, strategy="als")
    store.write(bad, T.USER_CANDIDATES, "overwrite", commit, ["strategy"], {"strategy": "als"})


@pytest.fixture(scope="module")
def story(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Story:
    tmp = tmp_path_factory.mktemp("gate")
    root = tmp / "warehouse"
    good = _args(root, tmp)
    broken = _args(root, tmp, **{"als.rank": 1, "als.max_iter": 1})
    assert main([*good, "generate"]) == 0
    store = TableStore(spark, base_config.with_overrides([f"storage.root={root}"]).storage)
    s = Story(store, str(root))
    reader: Recommendations | None = None

    def step(name: str, argv: list[str]) -> None:
        nonlocal reader
        s.said[name] = _run(argv)
        if reader is None:
            reader = Recommendations.open(str(root), refresh_seconds=3600)
        reader.refresh()
        s.published[name] = current_publication(str(root))
        s.reader[name] = reader.versions()[T.USER_CANDIDATES]
        s.latest[name] = store.version(T.USER_CANDIDATES)

    step("good", [*good, "nightly"])
    step("broken", [*broken, "nightly"])
    user = store.read(T.USER_CANDIDATES).orderBy("user_id").first()["user_id"]
    s.said["lookup after broken"] = _run(["--set", f"storage.root={root}", "lookup", "user", user, "--json"])
    _corrupt(spark, store)
    step("corrupt", [*good, "publish"])
    step("good again", [*good, "nightly"])
    first = s.published["good"]
    assert first is not None
    step("rollback", [*good, "rollback", T.USER_CANDIDATES, "--to-version", str(first.versions[T.USER_CANDIDATES])])
    step("publish withdrawn", [*good, "publish"])
    again = s.published["good again"]
    assert again is not None
    step("rollback to run", [*good, "rollback", "--to-run", again.run_id])
    s.runs = [r.asDict() for r in store.read(T.RUNS).orderBy("started_at").collect()]
    return s


def _run_row(story: Story, job: str, nth: int = 0) -> dict[str, Any]:
    return [r for r in story.runs if r["job"] == job][nth]


def test_a_good_night_publishes_its_versions_to_readers(story: Story) -> None:
    code, _ = story.said["good"]
    assert code == 0
    first = story.published["good"]
    assert first is not None and first.action == "publish" and first.seq == 1
    assert first.versions[T.USER_CANDIDATES] == story.latest["good"] == story.reader["good"]
    assert set(first.versions) == {T.USER_CANDIDATES, T.ITEM_NEIGHBORS, T.POPULAR_ITEMS, T.ITEMS}
    als = first.stats["als"]
    assert als["bad_scores"] == 0 and als["seen_items"] == 0 and als["user_coverage"] == 1.0
    assert 0 < als["metric"] < 1


def test_a_broken_model_is_refused_naming_the_metric_and_readers_keep_the_published_lists(story: Story) -> None:
    code, said = story.said["broken"]
    assert code == 2
    assert "the quality gate refused user_candidates v" in said
    assert "als: ndcg@10:" in said and "gate.max_drop = 10%" in said
    first = story.published["good"]
    assert story.published["broken"] == first
    assert first is not None
    assert story.latest["broken"] > first.versions[T.USER_CANDIDATES]  # written, not served
    assert story.reader["broken"] == first.versions[T.USER_CANDIDATES]
    code, said = story.said["lookup after broken"]
    assert code == 0 and json.loads(said)["version"] == first.versions[T.USER_CANDIDATES]
    run = _run_row(story, "nightly", 1)
    assert run["status"] == "refused"
    gate = json.loads(run["details"])["gate"]
    failed = [c for c in gate["checks"] if not c["passed"]]
    # the collapsed lists may also fail the coverage bound; the list checks themselves pass
    names = {(c["strategy"], c["name"]) for c in failed}
    assert ("als", "ndcg@10") in names and names <= {("als", "ndcg@10"), ("als", "coverage drop")}
    stages = json.loads(run["details"])["stages"]
    assert stages[-1]["stage"] == "publish" and stages[-1]["why"].startswith("refused: the quality gate")


def test_lists_with_a_nan_score_and_a_seen_item_are_refused_naming_both(story: Story) -> None:
    code, said = story.said["corrupt"]
    assert code == 2
    assert "als: scores: 1 NaN or null scores in" in said
    assert "als: seen items: 1 rows hold an item the user has seen" in said
    # run with the good settings after the broken night: its evaluation is not of them
    assert "*: evaluation current: settings changed since evaluation_summary v" in said
    assert story.published["corrupt"] == story.published["good"]


def test_a_good_model_after_a_refusal_passes_and_is_published(story: Story) -> None:
    code, said = story.said["good again"]
    assert code == 0, said
    again, first = story.published["good again"], story.published["good"]
    assert again is not None and first is not None and again.seq == 2
    assert again.versions[T.USER_CANDIDATES] == story.latest["good again"] == story.reader["good again"]
    assert again.versions[T.USER_CANDIDATES] > first.versions[T.USER_CANDIDATES]
    # measured against the first publication: the same settings on the same matrix
    churn = again.stats["als"]["churn"]
    assert churn["users"] == again.stats["als"]["users"]
    assert 0 <= churn["changed_users"] <= 1 and 0 <= churn["mean_rbo"] <= 1 and churn["mean_jaccard"] <= 1
    assert "churn" not in first.stats["als"]


def test_a_rollback_is_seen_by_a_long_lived_reader_and_recorded(story: Story) -> None:
    first = story.published["good"]
    rolled = story.published["rollback"]
    assert first is not None and rolled is not None
    assert story.said["rollback"][0] == 0
    assert rolled.action == "rollback" and rolled.seq == 3
    assert rolled.versions[T.USER_CANDIDATES] == first.versions[T.USER_CANDIDATES]
    assert story.reader["rollback"] == first.versions[T.USER_CANDIDATES]
    assert story.latest["rollback"] == story.latest["good again"]  # the lists' own history is untouched
    run = _run_row(story, "rollback")
    assert run["status"] == "succeeded"
    assert json.loads(run["details"])["rollback"]["to"] == rolled.versions


def test_a_rolled_back_version_is_refused_until_a_new_run_replaces_it(story: Story) -> None:
    code, said = story.said["publish withdrawn"]
    assert code == 2
    again = story.published["good again"]
    assert again is not None
    assert f"user_candidates v{again.versions[T.USER_CANDIDATES]} was rolled back by run" in said
    assert story.published["publish withdrawn"] == story.published["rollback"]


def test_a_rollback_to_a_run_brings_back_every_version_it_published(story: Story) -> None:
    again, back = story.published["good again"], story.published["rollback to run"]
    assert again is not None and back is not None
    assert back.versions == again.versions and back.action == "rollback"
    assert story.reader["rollback to run"] == again.versions[T.USER_CANDIDATES]
    assert [p.action for p in publications(story.root)] == ["publish", "publish", "rollback", "rollback"]


def test_a_rollback_names_what_is_wrong_with_its_arguments(story: Story, tmp_path: Path) -> None:
    root = ["--set", f"storage.root={story.root}"]
    for argv, expected in (
        ([*root, "rollback", "users", "--to-version", "0"], "'users' is not a served table"),
        ([*root, "rollback", T.USER_CANDIDATES, "--to-version", "999"], "user_candidates has no version 999"),
        ([*root, "rollback", "--to-run", "nope"], "run 'nope' published nothing"),
        ([*root, "rollback"], "name a TABLE with --to-version N, or give --to-run RUN_ID"),
        (["--set", f"storage.root={tmp_path}", "rollback", "--to-run", "x"], "nothing was published yet"),
    ):
        code, said = _run(argv)
        assert code == 2 and expected in said, (argv, said)


def test_every_bound_is_checked_against_the_publication_in_force() -> None:
    now = {"rows": 100, "users": 10, "items": 5, "bad_scores": 0, "seen_items": 0}
    stats = {"als": {**now, "user_coverage": 1.0, "item_coverage": 0.05, "metric": 0.2}}
    before = {"als": {**now, "rows": 300, "user_coverage": 1.0, "item_coverage": 0.5, "metric": 0.3}}
    checks = gate_checks(stats, before, GateConfig(), "ndcg@10")
    failed = sorted(c.name for c in checks if not c.passed)
    assert failed == ["coverage drop", "ndcg@10", "row count"]
    assert not [c for c in gate_checks(stats, None, GateConfig(), "ndcg@10") if not c.passed]
    strict = GateConfig(min_user_coverage=1.0, min_item_coverage=0.1)
    low = {"als": {**stats["als"], "user_coverage": 0.9}}
    assert sorted(c.name for c in gate_checks(low, None, strict, "ndcg@10") if not c.passed) == [
        "item coverage",
        "users covered",
    ]


def test_list_stats_count_each_strategys_rows_users_items_bad_scores_and_seen_items(spark: SparkSession) -> None:
    nan = float("nan")
    lists = [
        ("als", 1, 10, 0.9),
        ("als", 1, 11, nan),
        ("als", 2, 10, None),
        ("als", 2, 12, 0.5),
        ("als", 3, 13, 0.1),
        ("blend", 1, 13, 0.2),
        ("blend", 1, 14, 0.1),
        ("item_item", 4, 10, 1.0),
    ]
    seen = [(1, 11), (2, 12), (1, 14), (4, 99), (9, 10)]
    got = list_stats(
        spark.createDataFrame(lists, "strategy STRING, user_idx INT, item_idx INT, score FLOAT"),
        spark.createDataFrame(seen, "user_idx INT, item_idx INT"),
    )
    expected = {}
    for strategy in ("als", "blend", "item_item"):
        mine = [r for r in lists if r[0] == strategy]
        expected[strategy] = {
            "rows": len(mine),
            "users": len({r[1] for r in mine}),
            "items": len({r[2] for r in mine}),
            "bad_scores": sum(r[3] is None or r[3] != r[3] for r in mine),
            "seen_items": sum((r[1], r[2]) in set(seen) for r in mine),
        }
    assert got == expected
    assert got["als"] == {"rows": 5, "users": 3, "items": 4, "bad_scores": 2, "seen_items": 2}
