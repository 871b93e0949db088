"""Idempotency and reproducibility: the full pipeline run twice on the same input with the same seed
gives identical tables (content, not files) without duplicate rows, and each job run leaves one
manifest row in ``runs`` whose table versions match the Delta logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config
from recsys_spark.storage.store import TableStore, table_history
from tests.conftest import synthetic_args

#: The jobs of one pipeline round, in order (generate runs once: the input stays the same).
Rounds = tuple[TableStore, list[dict[str, int | None]]]
"""The ``two_rounds`` fixture: the store, and every table's version after each of the two rounds."""

ROUND = ["ingest", "train-als", "item-similarity", "candidates", "evaluate"]
#: Columns that say which run wrote a row or when, not what it holds.
RUN_COLUMNS = {
    "run_id",
    "model_version",
    "ingested_at",
    "evaluated_at",
    "trained_at",
    "created_at",
    "train_seconds",
    "input_versions",
}
#: Tables each job appends a row set to per run (compared run against run, not version against version).
APPENDED = {T.EVALUATION_SUMMARY, T.MODELS}
#: The natural key of each table: no two rows may share one.
KEYS = {
    T.INTERACTIONS: ["event_key"],
    T.USERS: ["user_id"],
    T.ITEMS: ["item_id"],
    T.INTERACTION_MATRIX: ["user_idx", "item_idx"],
    T.INGESTED_FILES: ["path"],
    T.USER_FACTORS: ["user_idx"],
    T.ITEM_FACTORS: ["item_idx"],
    T.ITEM_NEIGHBORS: ["method", "item_idx", "neighbor_idx"],
    T.USER_CANDIDATES: ["strategy", "user_id", "item_id"],
    T.REJECTED_INTERACTIONS: ["source_file", "line_number", "reason"],
}


def _args(cfg: Config, tmp_path: Path) -> list[str]:
    return synthetic_args(
        cfg.storage.root,
        tmp_path,
        **{
            "generate.num_events": 6000,
            "generate.num_users": 300,
            "generate.num_items": 150,
            "als.rank": 4,
            "als.max_iter": 3,
            "similarity.top_n": 10,
            "similarity.method": "cosine",
            "evaluation.max_users": 200,
        },
    )


def _content(df: DataFrame) -> DataFrame:
    return df.drop(*[c for c in df.columns if c in RUN_COLUMNS])


def _run_ids(store: TableStore, job: str) -> list[str]:
    return [r["run_id"] for r in store.read(T.RUNS).where(F.col("job") == job).orderBy("started_at").collect()]


@pytest.fixture(scope="module")
def two_rounds(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Rounds:
    tmp = tmp_path_factory.mktemp("reruns")
    cfg = base_config.with_overrides([f"storage.root={tmp / 'warehouse'}"])
    args = _args(cfg, tmp)
    assert main([*args, "generate"]) == 0
    store = TableStore(spark, cfg.storage)
    versions = []
    for _ in range(2):
        for job in ROUND:
            assert main([*args, job]) == 0, f"{job} failed"
        versions.append({t: store.version(t) for t in T.CATALOG})
    return store, versions


def test_second_round_gives_identical_tables(two_rounds: Rounds) -> None:
    store, (first, second) = two_rounds
    # ingest saw only files it had ingested: it committed nothing the second time
    for table in (T.INTERACTIONS, T.USERS, T.ITEMS, T.INTERACTION_MATRIX, T.INGESTED_FILES):
        assert second[table] == first[table], f"{table} changed on a re-run of ingest"
    for table in T.CATALOG:
        if table in APPENDED or table == T.RUNS or first[table] is None:
            continue
        before, after = store.read(table, version=first[table]), store.read(table, version=second[table])
        assert_approx_df_equality(
            _content(before), _content(after), precision=1e-9, ignore_row_order=True, ignore_nullable=True
        )


def test_appended_rows_of_both_runs_are_identical(two_rounds: Rounds) -> None:
    store, _ = two_rounds
    for table, job in ((T.EVALUATION_SUMMARY, "evaluate"), (T.MODELS, "train-als")):
        first, second = _run_ids(store, job)
        rows = store.read(table)
        assert_approx_df_equality(
            _content(rows.where(F.col("run_id") == first)),
            _content(rows.where(F.col("run_id") == second)),
            precision=1e-9,
            ignore_row_order=True,
            ignore_nullable=True,
        )


def test_no_duplicate_rows(two_rounds: Rounds) -> None:
    store, _ = two_rounds
    for table, key in KEYS.items():
        df = store.read(table)
        assert df.count() > 0 or table == T.REJECTED_INTERACTIONS, f"{table} is empty"
        assert df.groupBy(*key).count().where("count > 1").isEmpty(), f"duplicate {key} in {table}"


def test_every_run_has_a_manifest_matching_the_logs(two_rounds: Rounds) -> None:
    store, _ = two_rounds
    runs = store.read(T.RUNS).collect()
    assert sorted(r["job"] for r in runs) == sorted(["generate"] + ROUND * 2)
    assert {r["status"] for r in runs} == {"succeeded"}
    assert len({r["run_id"] for r in runs}) == len(runs)
    for r in runs:
        config = json.loads(r["config"])
        assert config["als"]["rank"] == 4 and r["config_hash"]
        packages = json.loads(r["packages"])
        assert {"pyspark", "deltalake", "pyarrow", "numpy", "python"} <= packages.keys()
        assert json.loads(r["spark"])["master"].startswith("local")
        assert r["finished_at"] >= r["started_at"] and r["duration_s"] >= 0
        outputs = json.loads(r["output_versions"])
        # every output version named is a commit of this run in the table's log, and vice versa
        for table in T.CATALOG:
            if table == T.RUNS or not store.exists(table):
                continue
            logged = sorted(
                e.version for e in table_history(store.root, table) if e.metadata.get("run_id") == r["run_id"]
            )
            assert outputs.get(table, []) == logged, f"{r['job']} {r['run_id']}: {table}"
    by_job = {}
    for r in sorted(runs, key=lambda r: r["started_at"]):
        by_job.setdefault(r["job"], []).append(r)
    first_ingest, second_ingest = by_job["ingest"]
    assert json.loads(second_ingest["output_versions"]) == {}  # nothing new to ingest
    assert {T.INTERACTIONS, T.USERS, T.ITEMS, T.INTERACTION_MATRIX} <= json.loads(
        first_ingest["output_versions"]
    ).keys()
    # a model job's inputs are the versions the preceding ingest left
    matrix_version = json.loads(first_ingest["output_versions"])[T.INTERACTION_MATRIX][-1]
    for r in by_job["train-als"]:
        assert json.loads(r["input_versions"])[T.INTERACTION_MATRIX] == matrix_version
    candidates_inputs = json.loads(by_job["candidates"][1]["input_versions"])
    assert (
        candidates_inputs[T.USER_FACTORS] == json.loads(by_job["train-als"][1]["output_versions"])[T.USER_FACTORS][-1]
    )


def test_a_failed_run_is_recorded_with_its_error(spark: SparkSession, base_config: Config, tmp_path: Path) -> None:
    cfg = base_config.with_overrides([f"storage.root={tmp_path / 'warehouse'}"])
    args = _args(cfg, tmp_path)
    assert main([*args, "train-als"]) != 0  # nothing ingested yet
    (run,) = TableStore(spark, cfg.storage).read(T.RUNS).collect()
    assert run["job"] == "train-als" and run["status"] == "failed"
    assert "interaction_matrix" in run["error"]
    assert json.loads(run["output_versions"]) == {}
