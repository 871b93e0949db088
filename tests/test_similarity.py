"""Item-item cosine: hand-computed values, top-N order and pruning, heavy-user capping, scipy cross-check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from recsys_spark.config.schema import CosineConfig, FactorCosineConfig, SimilarityConfig
from recsys_spark.kernels.selection import kth_largest_per_row
from recsys_spark.models.cosine import item_cosine

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.storage.store import TableStore
    from tests.conftest import IngestRun

# users x items, confidence values
#        i0  i1  i2  i3
#  u0     1   1   0   0
#  u1     1   1   1   0
#  u2     0   2   1   0
#  u3     0   0   0   3
MATRIX = [(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0), (1, 2, 1.0), (2, 1, 2.0), (2, 2, 1.0), (3, 3, 3.0)]


def _sims(
    spark: SparkSession, params: SimilarityConfig, rows: list[tuple[int, int, float]] = MATRIX
) -> dict[tuple[int, int], tuple]:
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    return {
        (r.item_idx, r.neighbor_idx): (r.similarity, r.rank, r.cooccurrence) for r in item_cosine(df, params).collect()
    }


def test_binary_cosine_matches_the_formula(spark: SparkSession) -> None:
    s = _sims(spark, SimilarityConfig())
    # binary columns: i0 = {u0,u1}, i1 = {u0,u1,u2}, i2 = {u1,u2}
    assert s[(0, 1)][0] == pytest.approx(2 / math.sqrt(2 * 3))
    assert s[(0, 2)][0] == pytest.approx(1 / math.sqrt(2 * 2))
    assert s[(1, 2)][0] == pytest.approx(2 / math.sqrt(3 * 2))
    assert s[(1, 0)] == s[(0, 1)]  # both directions
    assert not any(3 in k for k in s)  # i3 shares no user with anything
    assert s[(1, 2)][2] == 2 and s[(0, 2)][2] == 1


def test_weighted_cosine(spark: SparkSession) -> None:
    s = _sims(spark, SimilarityConfig(cosine=CosineConfig(confidence="linear")))
    # i1 = (1, 1, 2, 0), i2 = (0, 1, 1, 0)
    assert s[(1, 2)][0] == pytest.approx((1 + 2) / (math.sqrt(6) * math.sqrt(2)))


def test_top_n_order_and_pruning(spark: SparkSession) -> None:
    s = _sims(spark, SimilarityConfig(top_n=1))
    assert {k: v[1] for k, v in s.items()} == {(0, 1): 1, (1, 0): 1, (2, 1): 1}
    # i1's neighbours i0 and i2 tie at 2/sqrt(6): the lower index wins
    s = _sims(spark, SimilarityConfig(cosine=CosineConfig(min_cooccurrence=2)))
    assert set(s) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    s = _sims(spark, SimilarityConfig(cosine=CosineConfig(min_similarity=0.6)))
    assert set(s) == {(0, 1), (1, 0), (1, 2), (2, 1)}  # 0.5 for (0, 2) is dropped
    ranks = _sims(spark, SimilarityConfig())
    assert ranks[(1, 0)][1] == 1 and ranks[(1, 2)][1] == 2


def test_heavy_user_history_is_capped(spark: SparkSession) -> None:
    # u9 interacted with 4 items; capped at 2 it keeps its two strongest (i2: 5, i3: 4)
    rows = [*MATRIX, (9, 0, 1.0), (9, 1, 1.0), (9, 2, 5.0), (9, 3, 4.0)]
    s = _sims(spark, SimilarityConfig(cosine=CosineConfig(confidence="linear"), max_user_items=2), rows)
    # with u9 capped, i0 and i1 gain nothing from u9, and i2/i3 co-occur through u9 only
    assert s[(2, 3)][2] == 1
    assert s[(0, 1)][2] == 2
    # u1 (three items, equal weights) is capped too: it keeps i0 and i1 and loses i2
    i2 = np.array([0, 0, 1, 0, 5.0])
    i3 = np.array([0, 0, 0, 3.0, 4.0])
    assert s[(2, 3)][0] == pytest.approx(i2 @ i3 / (np.linalg.norm(i2) * np.linalg.norm(i3)))


def _reference(rows: list[tuple[int, int, float]], params: SimilarityConfig) -> list[tuple[int, int, float, int, int]]:
    """Dense numpy cosine with the same cap, filters and ordering: (item, neighbour, sim, rank, co-occurrence)."""
    n_users = max(u for u, _, _ in rows) + 1
    n_items = max(i for _, i, _ in rows) + 1
    by_user: dict[int, list[tuple[float, int]]] = {}
    for u, i, c in rows:
        by_user.setdefault(u, []).append((-(1.0 if params.cosine.confidence == "binary" else c), i))
    x = np.zeros((n_users, n_items))
    for u, hist in by_user.items():
        for neg, i in sorted(hist)[: params.max_user_items]:
            x[u, i] = -neg
    dots, counts = x.T @ x, (x > 0).T.astype(float) @ (x > 0).astype(float)
    norms = np.sqrt((x * x).sum(axis=0))
    sims = dots / (np.outer(norms, norms) + params.cosine.shrink)
    out = []
    for i in range(n_items):
        cand = sorted(
            (-sims[i, j], j)
            for j in range(n_items)
            if j != i
            and counts[i, j] >= max(1, params.cosine.min_cooccurrence)
            and sims[i, j] >= params.cosine.min_similarity
        )
        out += [(i, j, -neg, rank, int(counts[i, j])) for rank, (neg, j) in enumerate(cand[: params.top_n], 1)]
    return out


@pytest.mark.parametrize("block_items", [3, 1000])
@pytest.mark.parametrize("confidence", ["binary", "linear"])
def test_blocking_never_changes_the_result(spark: SparkSession, block_items: int, confidence: str) -> None:
    # integer confidences keep every dot product exact, so ties must break identically
    rng = np.random.default_rng(11)
    pairs = {(int(u), int(min(rng.zipf(1.5), 23) - 1)) for u in rng.integers(0, 40, 300)}
    rows = [(u, i, float(rng.integers(1, 5))) for u, i in sorted(pairs)]
    params = SimilarityConfig(
        cosine=CosineConfig(confidence=confidence, min_cooccurrence=2),
        top_n=4,
        max_user_items=6,
        block_items=block_items,
    )
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    got = [
        tuple(r)
        for r in item_cosine(df, params)
        .select("item_idx", "neighbor_idx", "similarity", "rank", "cooccurrence")
        .orderBy("item_idx", "rank")
        .collect()
    ]
    assert got == _reference(rows, params)
    assert len(got) > 40  # enough pairs survive the filters for the comparison to mean something


def test_shrinkage_divides_by_the_norms_product_plus_shrink_and_demotes_rare_pairs(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    pairs = {(int(u), int(min(rng.zipf(1.5), 23) - 1)) for u in rng.integers(0, 40, 300)}
    # items 30 and 31: one user, nobody else: their exact cosine is 1, the highest there is
    rows = [(u, i, 1.0) for u, i in sorted(pairs)] + [(40, 30, 1.0), (40, 31, 1.0)]
    df = spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE")
    exact = SimilarityConfig(cosine=CosineConfig(), top_n=5, max_user_items=50)
    shrunk = SimilarityConfig(cosine=CosineConfig(shrink=4.0, min_similarity=0.05), top_n=5, max_user_items=50)
    columns = ["item_idx", "neighbor_idx", "similarity", "rank", "cooccurrence"]
    got = [tuple(r) for r in item_cosine(df, shrunk).select(*columns).orderBy("item_idx", "rank").collect()]
    want = _reference(rows, shrunk)
    assert [(i, j, rank, n) for i, j, _, rank, n in got] == [(i, j, rank, n) for i, j, _, rank, n in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], rel=1e-12)
    by_pair = {(r[0], r[1]): r[2] for r in got}
    assert by_pair[(30, 31)] == pytest.approx(1 / (1 + 4.0))  # 1 / (1 * 1 + shrink)
    exact_sims = {(r.item_idx, r.neighbor_idx): r.similarity for r in item_cosine(df, exact).collect()}
    assert exact_sims[(30, 31)] == pytest.approx(1.0)
    # a pair many users share keeps most of its cosine, so it now outranks the one-user pair
    supported = max((k for k in by_pair if k[0] < 30), key=by_pair.get)
    assert by_pair[supported] > by_pair[(30, 31)] and exact_sims[supported] < 1.0


@pytest.mark.realdata
def test_matches_scipy_on_movielens_100k(spark: SparkSession, shared_data: Path) -> None:
    import pandas as pd
    import scipy.sparse as sp

    data = pd.read_csv(shared_data / "ml-100k" / "u.data", sep="\t", names=["u", "i", "r", "t"])
    rows = [(int(u) - 1, int(i) - 1, 1.0) for u, i in zip(data.u, data.i)]
    top_n = 20
    got = item_cosine(
        spark.createDataFrame(rows, "user_idx INT, item_idx INT, confidence DOUBLE"),
        SimilarityConfig(top_n=top_n, max_user_items=10_000),
    ).toPandas()

    x = sp.csr_matrix((np.ones(len(rows)), (data.u - 1, data.i - 1)))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0))).ravel()
    sim = (x.T @ x).toarray() / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    max_diff, mismatched = 0.0, 0
    for item, group in got.groupby("item_idx"):
        row = sim[item]
        ref = row[group.neighbor_idx.to_numpy()]
        max_diff = max(max_diff, float(np.abs(ref - group.similarity.to_numpy()).max()))
        k = len(group)
        kth = np.sort(row)[::-1][k - 1]
        strictly_better = set(np.flatnonzero(row > kth + 1e-12))
        if not strictly_better <= set(group.neighbor_idx) or group.similarity.min() < kth - 1e-12:
            mismatched += 1  # differs beyond exact ties at the cut
    assert max_diff < 1e-6
    assert mismatched == 0
    assert got.item_idx.nunique() == 1682 - int((np.asarray((x.T @ x).sum(axis=1)).ravel() == 0).sum())


def test_item_similarity_job_writes_a_lookup_ready_table(
    spark: SparkSession, cfg: Config, ingest: IngestRun, store: TableStore, tmp_path: Path
) -> None:
    from recsys_spark import tables as T
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity

    raw = tmp_path / "log.csv"
    raw.write_text(
        "event_id,user_id,item_id,event_type,timestamp,value\n"
        + "\n".join(
            f"e{k},u{u},i{i},view,2026-09-01T00:00:00Z,1"
            for k, (u, i) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 3)])
        )
        + "\n"
    )
    cfg = cfg.with_overrides(["similarity.cosine.min_cooccurrence=1", "similarity.top_n=10"])
    ingest(cfg, f"ingest.source.path={raw}")
    result = run_item_similarity(spark, cfg, RunContext.new("item-similarity", cfg))
    rows = store.read(T.ITEM_NEIGHBORS).collect()
    assert result.rows == len(rows) == 6
    assert {r.method for r in rows} == {"cosine"} and len({r.model_version for r in rows}) == 1
    meta = store.history(T.ITEM_NEIGHBORS)[0].metadata
    # items is an input too: its ids are joined into the lookup table
    assert meta["input_versions"] == {
        T.INTERACTION_MATRIX: store.version(T.INTERACTION_MATRIX),
        T.ITEMS: store.version(T.ITEMS),
    }


def test_the_cosine_search_tries_every_shrink_on_validation_and_fits_the_best(
    spark: SparkSession, cfg: Config, ingest: IngestRun, store: TableStore, tmp_path: Path
) -> None:
    from recsys_spark import tables as T
    from recsys_spark.pipeline.generate import run_generate
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity

    c = cfg.with_overrides(
        [
            f"generate.output={tmp_path / 'raw'}",
            "generate.num_users=200",
            "generate.num_items=60",
            "generate.num_events=4000",
            "generate.partitions=1",
            f"ingest.source.path={tmp_path / 'raw'}",
            "ingest.source.preset=synthetic",
            "ingest.max_reject_fraction=0.05",
            "similarity.cosine.min_cooccurrence=1",
            "similarity.top_n=20",
            "similarity.tune=true",
            "tuning.cosine_shrink=[0.0, 30.0]",
            "tuning.cosine_top_n=[5]",
            'candidates.strategies=["item_item"]',
        ]
    )
    run_generate(spark, c)
    ingest(c)
    run_item_similarity(spark, c, RunContext.new("item-similarity", c))
    meta = store.history(T.ITEM_NEIGHBORS)[0].metadata
    search = meta["search"]
    assert search["model"] == "cosine" and search["metric"] == "ndcg@10"
    assert [t["params"] for t in search["trials"]] == [{"top_n": 5, "shrink": 0.0}, {"top_n": 5, "shrink": 30.0}]
    assert all(t["value"] is not None for t in search["trials"])
    best = max(search["trials"], key=lambda t: t["value"])
    assert search["best"] == best["params"]
    assert {k: meta["params"]["cosine"][k] for k in ("top_n", "shrink")} == best["params"]
    # the table holds the chosen fit, on the whole matrix
    written = {(r.item_idx, r.neighbor_idx): r.similarity for r in store.read(T.ITEM_NEIGHBORS).collect()}
    chosen = c.similarity.model_copy(update={"cosine": c.similarity.cosine.model_copy(update=best["params"])})
    refit = {
        (r.item_idx, r.neighbor_idx): r.similarity
        for r in item_cosine(store.read(T.INTERACTION_MATRIX), chosen).collect()
    }
    assert written.keys() == refit.keys() and all(written[k] == pytest.approx(refit[k]) for k in refit)


def test_item_similarity_needs_the_matrix(spark: SparkSession, cfg: Config) -> None:
    from recsys_spark.errors import StorageError
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity

    with pytest.raises(StorageError, match="run `recsys-spark ingest` first"):
        run_item_similarity(spark, cfg, RunContext.new("item-similarity", cfg))


@pytest.mark.parametrize("block_items", [100, 3])
def test_factor_cosine_matches_numpy(spark: SparkSession, block_items: int) -> None:
    from recsys_spark.models.cosine import item_factor_cosine

    rng = np.random.default_rng(5)
    v = rng.normal(size=(11, 4)).astype(np.float32)
    v[7] = 0.0  # a zero vector has no direction: no neighbours, and it is nobody's neighbour
    df = spark.createDataFrame([(i, x.tolist()) for i, x in enumerate(v)], "item_idx INT, factors ARRAY<FLOAT>")
    params = SimilarityConfig(
        method="als", top_n=3, als=FactorCosineConfig(min_similarity=0.1), block_items=block_items
    )
    got = item_factor_cosine(df, params).orderBy("item_idx", "rank").collect()

    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    sim = unit.astype(np.float64) @ unit.T.astype(np.float64)
    for i in range(11):
        mine = [(r.neighbor_idx, r.similarity, r.rank) for r in got if r.item_idx == i]
        if i == 7:
            assert mine == []
            continue
        cand = sorted((-sim[i, j], j) for j in range(11) if j not in (i, 7) and sim[i, j] >= 0.1)[:3]
        assert [n for n, _, _ in mine] == [j for _, j in cand]
        np.testing.assert_allclose([s for _, s, _ in mine], [-s for s, _ in cand], atol=1e-6)
        assert [rk for _, _, rk in mine] == list(range(1, len(mine) + 1))
    assert all(r.cooccurrence is None for r in got)


def test_als_neighbors_sit_beside_cosine_ones(
    spark: SparkSession, cfg: Config, ingest: IngestRun, store: TableStore, tmp_path: Path
) -> None:
    from recsys_spark import tables as T
    from recsys_spark.errors import StorageError
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity
    from recsys_spark.pipeline.train import run_train_als

    raw = tmp_path / "u.data"
    raw.write_text(
        "".join(
            f"{u}\t{i}\t5\t88000{u:04d}\n"
            for u in range(1, 21)
            for i in range(1, 13)
            if (u < 10) == (i < 7) and (u + i) % 3
        )
    )
    ingest(cfg, f"ingest.source.path={raw}", "ingest.source.preset=movielens-100k")
    als_cfg = cfg.with_overrides(
        ["similarity.method=als", "similarity.top_n=3", "similarity.block_items=5", "als.rank=3", "als.max_iter=4"]
    )
    with pytest.raises(StorageError, match="run `recsys-spark train-als` first"):
        run_item_similarity(spark, als_cfg, RunContext.new("item-similarity", als_cfg))
    run_item_similarity(spark, cfg, RunContext.new("item-similarity", cfg))
    cosine_rows = store.read(T.ITEM_NEIGHBORS).count()
    run_train_als(spark, als_cfg, RunContext.new("train-als", als_cfg))
    w = run_item_similarity(spark, als_cfg, RunContext.new("item-similarity", als_cfg))
    nb = store.read(T.ITEM_NEIGHBORS)
    assert nb.where("method = 'cosine'").count() == cosine_rows
    als_rows = nb.where("method = 'als'").collect()
    assert len(als_rows) == w.rows == 12 * 3
    assert {r.model_version for r in als_rows} == {store.read(T.ITEM_FACTORS).first().model_version}
    assert store.partition_values(T.ITEM_NEIGHBORS, "method") == {"cosine", "als"}
    # re-running one method replaces only its partition: same row count, new version
    run_item_similarity(spark, als_cfg, RunContext.new("item-similarity", als_cfg))
    assert store.read(T.ITEM_NEIGHBORS).count() == cosine_rows + 36


@pytest.mark.parametrize("buffer", [8, 1 << 22])
def test_kth_largest_per_row(monkeypatch: pytest.MonkeyPatch, buffer: int) -> None:
    from recsys_spark.kernels import selection as ranking

    monkeypatch.setattr(ranking, "_ROW_BUFFER", buffer)  # tiny buffers: many chunks, one row each
    rng = np.random.default_rng(3)
    lengths = np.r_[0, 1, 2, 3, 40, 3, 7, 2, 500, 9]
    indptr = np.r_[0, np.cumsum(lengths)]
    values = rng.integers(0, 6, indptr[-1]).astype(float)  # many ties
    got = kth_largest_per_row(indptr, values, 3)
    for row, n in enumerate(lengths):
        row_values = np.sort(values[indptr[row] : indptr[row + 1]])[::-1]
        assert got[row] == (row_values[2] if n >= 3 else -np.inf)


def test_partition_keys_put_one_cell_in_each_partition(spark: SparkSession) -> None:
    from pyspark.sql import functions as F

    from recsys_spark.kernels.cells import _partition_keys

    keys = _partition_keys(spark, 7)
    placed = (
        spark.createDataFrame([(k,) for k in keys], "key INT")
        .repartition(7, "key")
        .select("key", F.spark_partition_id().alias("p"))
        .collect()
    )
    assert {r.key: r.p for r in placed} == {k: i for i, k in enumerate(keys)}


def test_item_similarity_command_writes_ease_and_rp3beta_neighbors(
    spark: SparkSession,
    cfg: Config,
    ingest: IngestRun,
    store: TableStore,
    tmp_path: Path,
) -> None:
    from recsys_spark import tables as T
    from recsys_spark.cli import main
    from recsys_spark.models.ease import item_ease
    from recsys_spark.models.similarity import vote_weight
    from recsys_spark.pipeline.candidates import _neighbor_params

    rng = np.random.default_rng(2)
    events = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 12, 60), rng.integers(0, 7, 60))})
    raw = tmp_path / "log.csv"
    raw.write_text(
        "event_id,user_id,item_id,event_type,timestamp,value\n"
        + "\n".join(
            f"e{k},u{u},i{i},{('view', 'click', 'purchase')[k % 3]},2026-09-01T00:00:00Z,1"
            for k, (u, i) in enumerate(events)
        )
        + "\n"
    )
    ingest(cfg, f"ingest.source.path={raw}")
    args = [
        "--set",
        f"storage.root={cfg.storage.root}",
        "--set",
        "spark.master=local[2]",
        "--set",
        "spark.ui_enabled=false",
        "--set",
        "similarity.top_n=4",
        "--set",
        "similarity.ease.l2=2.0",
    ]
    assert main([*args, "--set", "similarity.method=ease", "item-similarity"]) == 0
    assert main([*args, "--set", "similarity.method=rp3beta", "item-similarity"]) == 0

    assert store.partition_values(T.ITEM_NEIGHBORS, "method") == {"ease", "rp3beta"}
    table = store.read(T.ITEM_NEIGHBORS)
    written = {(r.item_idx, r.neighbor_idx): (r.similarity, r.rank) for r in table.where("method = 'ease'").collect()}
    params = cfg.with_overrides(["similarity.method=ease", "similarity.top_n=4", "similarity.ease.l2=2.0"]).similarity
    direct = {
        (r.item_idx, r.neighbor_idx): (r.similarity, r.rank)
        for r in item_ease(store.read(T.INTERACTION_MATRIX), params).collect()
    }
    assert written == direct and len(written) == 7 * 4
    assert any(s < 0 for s, _ in written.values())
    assert table.where("method = 'rp3beta'").count() == 7 * 4
    # candidates weigh EASE's votes by the confidence transform the fit recorded
    version = store.version(T.ITEM_NEIGHBORS)
    assert vote_weight(_neighbor_params(store, version, "ease"), "ease") == ("linear", 1.0)
    assert vote_weight(_neighbor_params(store, version, "rp3beta"), "rp3beta") is None  # binary: each vote counts 1
