"""Candidates: popularity, cold start, item-item and blend scores, and the candidates job end to end."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.candidates.builder import blend_candidates, cold_start_candidates, item_item_candidates, popular_items
from recsys_spark.candidates.neighbor_votes import recent_history

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.storage.store import TableStore
    from tests.conftest import IngestRun

T0 = datetime(2026, 9, 30, tzinfo=timezone.utc)
MATRIX_SCHEMA = "user_idx INT, item_idx INT, confidence DOUBLE, last_event_time TIMESTAMP"


def _matrix(spark: SparkSession, rows: list[tuple[int, int, float, int]]) -> DataFrame:
    return spark.createDataFrame([(u, i, float(c), T0 - timedelta(days=d)) for u, i, c, d in rows], MATRIX_SCHEMA)


def test_popular_items_overall_and_recent(spark: SparkSession) -> None:
    # item 0: 3 users long ago; item 1: 2 users recently; item 2: 2 users, one recent; item 3: 1 recent
    m = _matrix(
        spark,
        [
            (0, 0, 1, 30),
            (1, 0, 1, 30),
            (2, 0, 1, 30),
            (0, 1, 1, 1),
            (1, 1, 1, 0),
            (0, 2, 1, 2),
            (3, 2, 1, 20),
            (3, 3, 1, 0),
        ],
    )
    rows = {(r.segment, r.rank): (r.item_idx, r.users) for r in popular_items(m, 7, 3).collect()}
    assert rows == {
        ("overall", 1): (0, 3),
        ("overall", 2): (1, 2),
        ("overall", 3): (2, 2),
        ("recent", 1): (1, 2),
        ("recent", 2): (2, 1),
        ("recent", 3): (3, 1),
    }


def test_cold_start_excludes_seen_items(spark: SparkSession) -> None:
    popular = spark.createDataFrame(
        [(r, i, 10 - r) for r, i in enumerate([5, 6, 7, 8], start=1)], "rank INT, item_idx INT, users LONG"
    )
    seen = _matrix(spark, [(1, 5, 1, 0), (1, 7, 1, 0)])
    cold = spark.createDataFrame([(1,), (2,)], "user_idx INT")
    got = {(r.user_idx, r.rank): r.item_idx for r in cold_start_candidates(cold, seen, popular, 2, 2).collect()}
    assert got == {(1, 1): 6, (1, 2): 8, (2, 1): 5, (2, 2): 6}


def test_item_item_scores_sum_neighbor_similarities(spark: SparkSession) -> None:
    # user 0 saw items 0 (newest), 1, 2 (oldest); with recent_items=2 only 0 and 1 vote
    m = _matrix(spark, [(0, 0, 1, 0), (0, 1, 1, 1), (0, 2, 1, 2)])
    nb = spark.createDataFrame(
        [(0, 3, 0.5), (0, 4, 0.2), (1, 3, 0.25), (1, 2, 0.9), (2, 5, 0.99)],
        "item_idx INT, neighbor_idx INT, similarity DOUBLE",
    )
    users = spark.createDataFrame([(0,)], "user_idx INT")
    got = [(r.item_idx, r.score, r.rank) for r in item_item_candidates(m, nb, users, 5, 2).orderBy("rank").collect()]
    assert [(i, rk) for i, _, rk in got] == [(3, 1), (4, 2)]  # item 2 is seen; item 5 only from a stale item
    assert got[0][1] == pytest.approx(0.75) and got[1][1] == pytest.approx(0.2)
    assert [r.item_idx for r in recent_history(m, 2).collect()] == [0, 1]


def test_blend_scales_each_source_per_user(spark: SparkSession) -> None:
    schema = "user_idx INT, item_idx INT, score FLOAT, rank INT"
    als = spark.createDataFrame([(0, 1, 10.0, 1), (0, 2, 6.0, 2), (0, 3, 2.0, 3)], schema)
    ii = spark.createDataFrame([(0, 3, 4.0, 1), (0, 4, 1.0, 2)], schema)
    got = {
        r.item_idx: (r.score, r.rank)
        for r in blend_candidates({"als": als, "item_item": ii}, {"als": 0.25, "item_item": 0.75}, 10).collect()
    }
    # als scaled: 1 -> 1, 2 -> 0.5, 3 -> 0; item_item scaled: 3 -> 1, 4 -> 0
    assert got[1][0] == pytest.approx(0.25) and got[2][0] == pytest.approx(0.125)
    assert got[3][0] == pytest.approx(0.75) and got[4][0] == pytest.approx(0.0)
    assert [i for i, _ in sorted(got.items(), key=lambda kv: kv[1][1])] == [3, 1, 2, 4]


def _log(path: Path) -> Path:
    """Two taste groups, a few cold users (one or two items), explicit timestamps."""
    rng = np.random.default_rng(3)
    lines = ["event_id,user_id,item_id,event_type,timestamp,value"]
    n = 0
    for u in range(60):
        group = u % 2
        size = 1 + u % 2 if u >= 54 else 6 + u % 5
        items = rng.choice(np.arange(group * 15, group * 15 + 15), size=size, replace=False)
        for day, i in enumerate(items):
            lines.append(f"e{n},u{u:03d},i{int(i):03d},view,2026-09-{1 + day:02d}T10:00:00Z,1")
            n += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def _trained(spark: SparkSession, cfg: Config, ingest: IngestRun, tmp_path: Path, *overrides: str) -> Config:
    """The two-group log ingested, ALS trained and cosine neighbours fitted; the config that did it."""
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity
    from recsys_spark.pipeline.train import run_train_als

    ingest(cfg, f"ingest.source.path={_log(tmp_path / 'log.csv')}")
    c = cfg.with_overrides(
        [
            "als.rank=4",
            "als.max_iter=5",
            "similarity.cosine.min_cooccurrence=1",
            "candidates.k=5",
            'candidates.strategies=["als", "item_item", "blend"]',
            *overrides,
        ]
    )
    run_train_als(spark, c, RunContext.new("train-als", c))
    run_item_similarity(spark, c, RunContext.new("item-similarity", c))
    return c


def test_candidates_job_end_to_end_and_lookups_match(
    spark: SparkSession,
    cfg: Config,
    ingest: IngestRun,
    store: TableStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recsys_spark.pipeline.candidates import run_candidates
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.serving.lookup import Recommendations, UnknownItemError

    c = _trained(
        spark,
        cfg,
        ingest,
        tmp_path,
        "candidates.min_history=3",
        "candidates.user_block=7",
        "candidates.item_block=8",
        "candidates.rows_per_file=1000",
    )
    out = run_candidates(spark, c, RunContext.new("candidates", c))
    assert set(out) == {T.POPULAR_ITEMS, "user_candidates/als", "user_candidates/item_item", "user_candidates/blend"}

    cands = store.read(T.USER_CANDIDATES)
    seen = store.read(T.INTERACTION_MATRIX).select("user_idx", "item_idx")
    assert cands.join(seen, ["user_idx", "item_idx"]).count() == 0  # seen items never appear
    assert cands.groupBy("strategy", "user_idx", "rank").count().where("count > 1").count() == 0
    for strategy in ("als", "item_item", "blend"):
        part = cands.where(f"strategy = '{strategy}'")
        assert part.select("user_idx").distinct().count() == 60  # every user gets a list
        cold = part.where("source = 'popular'").select("user_id").distinct().collect()
        assert {r.user_id for r in cold} >= {f"u{u:03d}" for u in range(54, 60)}
    als = cands.where("strategy = 'als' AND source = 'als'")
    assert als.groupBy("user_idx").count().where("count != 5").count() == 0

    # ALS lists equal a brute-force numpy ranking of the stored factors
    uf = {r.user_idx: np.array(r.factors) for r in store.read(T.USER_FACTORS).collect()}
    itf = {r.item_idx: np.array(r.factors) for r in store.read(T.ITEM_FACTORS).collect()}
    seen_by = {}
    for r in seen.collect():
        seen_by.setdefault(r.user_idx, set()).add(r.item_idx)
    for user_idx in sorted({r.user_idx for r in als.select("user_idx").collect()})[:20]:
        scores = sorted(((-float(uf[user_idx] @ v), i) for i, v in itf.items() if i not in seen_by[user_idx]))[:5]
        mine = [r.item_idx for r in als.where(f"user_idx = {user_idx}").orderBy("rank").collect()]
        assert mine == [i for _, i in scores]

    # explanations: ALS names the history item most cosine-similar by factors (brute force here),
    # the neighbour lists a history item with its share, popularity rows nothing
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    for r in als.limit(60).collect():
        best = max(cosine(itf[r.item_idx], itf[h]) for h in seen_by[r.user_idx])
        want = min(h for h in seen_by[r.user_idx] if cosine(itf[r.item_idx], itf[h]) >= best - 1e-6)
        assert r.because_item_idx == want and r.because_share is None
    votes = cands.where("source = 'item_item'").collect()
    assert votes and all(r.because_item_idx in seen_by[r.user_idx] for r in votes)
    assert all(0 < r.because_share <= 1 + 1e-6 for r in votes)  # cosine votes are positive
    ids = {r.item_idx: r.item_id for r in store.read(T.ITEMS).collect()}
    assert all(r.because_item_id == ids[r.because_item_idx] for r in votes)
    blended = cands.where("source = 'blend'").collect()
    assert blended and all(r.because_item_idx in seen_by[r.user_idx] for r in blended)
    assert cands.where("source = 'popular' AND (because_item_id IS NOT NULL OR because_share IS NOT NULL)").count() == 0

    # lookups return exactly the rows Spark wrote
    recs = Recommendations.open(c.storage.root, strategy="blend", neighbor_method="cosine")
    spark_rows = {
        (r.user_id, r.rank): (
            r.item_id,
            r.item_idx,
            pytest.approx(r.score),
            r.source,
            r.because_item_id,
            None if r.because_share is None else pytest.approx(r.because_share),
        )
        for r in cands.where("strategy = 'blend'").collect()
    }
    users = sorted({u for u, _ in spark_rows})
    looked = recs.for_users(users, k=5)
    assert {
        (u, x.rank): (x.item_id, x.item_idx, x.score, x.source, x.because_item_id, x.because_share)
        for u, rs in looked.items()
        for x in rs
    } == spark_rows
    nb_rows = store.read(T.ITEM_NEIGHBORS).where("method = 'cosine' AND item_id = 'i003'").orderBy("rank").collect()
    assert [(n.item_id, n.rank) for n in recs.similar_items("i003", k=50)] == [(r.neighbor_id, r.rank) for r in nb_rows]
    assert len(recs.similar_items("i003", k=2)) == 2
    # unknown user: the popularity list; unknown item: a clear error
    popular = recs.for_user("nobody", k=3)
    assert [p.source for p in popular] == ["popular"] * 3 and popular == recs.popular(3)
    with pytest.raises(UnknownItemError, match="unknown item id 'nope'"):
        recs.similar_items("nope")

    # a long-running reader moves to a new version on refresh; a pinned one does not
    pinned = Recommendations.open(c.storage.root, versions={T.USER_CANDIDATES: out["user_candidates/als"].version})
    before = recs.versions()[T.USER_CANDIDATES]
    c2 = c.with_overrides(["candidates.k=3", 'candidates.strategies=["blend"]'])
    run_candidates(spark, c2, RunContext.new("candidates", c2))
    assert recs.refresh() and recs.versions()[T.USER_CANDIDATES] > before
    assert max(r.rank for r in recs.for_user("u000", k=10)) == 3
    pinned.refresh()
    assert pinned.versions()[T.USER_CANDIDATES] == out["user_candidates/als"].version
    assert max(r.rank for r in pinned.for_user("u000", k=10)) == 5

    # the lookup CLI: same rows, JSON for scripts, a clear error and exit 2 for an unknown item
    import json

    from recsys_spark.cli import main

    root = ["--set", f"storage.root={c.storage.root}"]
    capsys.readouterr()
    assert main([*root, "lookup", "user", "u001", "--k", "2", "--strategy", "als", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = recs.__class__.open(c.storage.root, strategy="als").for_user("u001", 2)
    assert [r["item_id"] for r in got["rows"]] == [r.item_id for r in want] and len(want) == 2
    assert [r["because_item_id"] for r in got["rows"]] == [r.because_item_id for r in want]
    assert main([*root, "lookup", "user", "u001", "--k", "2", "--strategy", "item_item"]) == 0
    assert "because of i0" in capsys.readouterr().out
    assert main([*root, "lookup", "item", "i003", "--k", "3"]) == 0
    assert "neighbours of item 'i003'" in capsys.readouterr().out
    assert main([*root, "lookup", "item", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown item id 'nope'" in err and "Traceback" not in err


def test_candidates_job_needs_its_inputs(spark: SparkSession, cfg: Config) -> None:
    from recsys_spark.errors import StorageError
    from recsys_spark.pipeline.candidates import run_candidates
    from recsys_spark.pipeline.runs import RunContext

    with pytest.raises(StorageError, match="do not exist yet"):
        run_candidates(spark, cfg, RunContext.new("candidates", cfg))


def test_lookup_module_does_not_import_pyspark() -> None:
    import subprocess
    import sys

    code = "import sys, recsys_spark.serving.lookup, recsys_spark.cli; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_excluded_items_are_in_no_list_and_the_lists_stay_k_long(
    spark: SparkSession, cfg: Config, ingest: IngestRun, store: TableStore, tmp_path: Path
) -> None:
    from recsys_spark.pipeline.candidates import run_candidates
    from recsys_spark.pipeline.runs import RunContext

    c = _trained(spark, cfg, ingest, tmp_path)
    run_candidates(spark, c, RunContext.new("candidates", c))
    top = [
        r.item_id for r in store.read(T.POPULAR_ITEMS).where("segment = 'overall'").orderBy("rank").limit(3).collect()
    ]
    rules = tmp_path / "out-of-stock.csv"
    rules.write_text(f"# sold out\n{top[0]},sold out\n\n{top[1]}\n{top[2]}, recalled\nnot-in-catalogue\n")
    before: dict[int, list[str]] = {}
    for r in store.read(T.USER_CANDIDATES).where("strategy = 'item_item'").orderBy("user_idx", "rank").collect():
        before.setdefault(r.user_idx, []).append(r.item_id)
    ruled = c.with_overrides([f"candidates.exclude_items={rules}"])
    run_candidates(spark, ruled, RunContext.new("candidates", ruled))

    banned = set(top)
    cands = store.read(T.USER_CANDIDATES)
    assert cands.where(F.col("item_id").isin(list(banned))).count() == 0
    assert store.read(T.POPULAR_ITEMS).where(F.col("item_id").isin(list(banned))).count() == 0
    for segment in ("overall", "recent"):  # re-ranked without gaps
        ranks = [r.rank for r in store.read(T.POPULAR_ITEMS).where(f"segment = '{segment}'").orderBy("rank").collect()]
        assert ranks == list(range(1, len(ranks) + 1))
    sizes = cands.where("strategy = 'als' AND source != 'popular'").groupBy("user_idx").count()
    assert sizes.where("count != 5").count() == 0  # ALS has eligible items to spare: every list is k long
    # item_item: a removed item's place goes to the next eligible neighbour; the rest keep their order
    after: dict[int, list[str]] = {}
    for r in cands.where("strategy = 'item_item'").orderBy("user_idx", "rank").collect():
        after.setdefault(r.user_idx, []).append(r.item_id)
    refilled = 0
    for user_idx, items in before.items():
        kept = [i for i in items if i not in banned]
        assert after[user_idx][: len(kept)] == kept, user_idx
        refilled += len(after[user_idx]) - len(kept)
    assert refilled > 0  # some lists were made up from below rank k
    cold = cands.where("strategy = 'als' AND source = 'popular'").groupBy("user_idx").count()
    assert cold.count() > 0 and cold.where("count != 5").count() == 0

    # ALS: the top 5 of the eligible unseen items, by the stored factors
    uf = {r.user_idx: np.array(r.factors) for r in store.read(T.USER_FACTORS).collect()}
    itf = {r.item_idx: np.array(r.factors) for r in store.read(T.ITEM_FACTORS).collect()}
    banned_idx = {r.item_idx for r in store.read(T.ITEMS).where(F.col("item_id").isin(list(banned))).collect()}
    seen_by: dict[int, set[int]] = {}
    for r in store.read(T.INTERACTION_MATRIX).collect():
        seen_by.setdefault(r.user_idx, set()).add(r.item_idx)
    als = cands.where("strategy = 'als' AND source = 'als'")
    for user_idx in sorted({r.user_idx for r in als.select("user_idx").collect()})[:15]:
        best = sorted((-float(uf[user_idx] @ v), i) for i, v in itf.items() if i not in seen_by[user_idx] | banned_idx)[
            :5
        ]
        assert [r.item_idx for r in als.where(f"user_idx = {user_idx}").orderBy("rank").collect()] == [
            i for _, i in best
        ]

    # every commit of the run names the rule set it applied
    import hashlib

    expected = {"path": str(rules), "sha256": hashlib.sha256(rules.read_bytes()).hexdigest()[:16], "items": 4}
    for table in (T.USER_CANDIDATES, T.POPULAR_ITEMS):
        recorded = store.history(table, limit=1)[0].metadata["rules"]
        assert {k: recorded[k] for k in expected} == expected and recorded["in_catalogue"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("i001\n,no id here\n", r"out\.csv:2: the line has no item id: ',no id here'"),
        (b"i001\n\xff\xfe\n", r"out\.csv:2: not UTF-8"),
        (None, r"candidates\.exclude_items: cannot read '.*out\.csv'"),
    ],
)
def test_a_bad_rules_file_is_an_error_naming_its_line(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    from recsys_spark.errors import ConfigError
    from recsys_spark.pipeline.rules import read_item_rules

    path = tmp_path / "out.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_item_rules(str(path))
