"""Errors a user can fix, end to end through `recsys-spark` and the jobs/ entry points: each is a
short message naming the option, table or file, exit status 2, and never a Python traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from recsys_spark.cli import main, run_job
from recsys_spark.config.schema import Config

REPO = Path(__file__).resolve().parent.parent


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    text = out.err + out.out
    assert "Traceback" not in text
    return text


def _sets(*pairs: str) -> list[str]:
    return [arg for p in pairs for arg in ("--set", p)]


def _with_session(base: Config, root: Path, *pairs: str) -> list[str]:
    """--set arguments for a Spark command: the shared test session's settings, so the CLI reuses it."""
    s = base.spark
    return _sets(
        f"storage.root={root}",
        f"spark.master={s.master}",
        f"spark.shuffle_partitions={s.shuffle_partitions}",
        "spark.ui_enabled=false",
        f"spark.checkpoint_dir={s.checkpoint_dir}",
        *pairs,
    )


# -- bad configuration: caught before Spark starts -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "als.rnak=4", "train-als"], "als.rnak: unknown key"),
        (["--set", "sparkk.master=local", "ingest"], "sparkk: unknown key"),
        (["--set", "als.rank=ten", "train-als"], "als.rank: Input should be a valid integer (got 'ten')"),
        (["--set", "ingest.max_reject_fraction=2", "ingest"], "ingest.max_reject_fraction: Input should be less than"),
        (["--set", "ingest.source.encoding=UTF-16", "ingest"], "ingest.source.encoding 'UTF-16' is not supported"),
        (["--set", "ingest.source.delimiter=;;", "ingest"], "ingest.source.delimiter must be a single character"),
        (["--set", "evaluation.headline_k=7", "evaluate"], "evaluation.headline_k = 7 must be one of evaluation.ks"),
    ],
    ids=["unknown-key", "unknown-section", "wrong-type", "out-of-range", "encoding", "delimiter", "cross-key"],
)
def test_bad_overrides_name_the_key(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    said = _said(capsys)
    assert expected in said and said.startswith("error: invalid configuration")


def test_bad_config_file_names_file_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[ingest.source]\npresett = "synthetic"\n[als]\nrank = "32"\n')
    assert main(["--config", str(f), "train-als"]) == 2
    said = _said(capsys)
    assert f"invalid configuration in {f}" in said
    assert "ingest.source.presett: unknown key" in said and "als.rank: Input should be a valid integer" in said


def test_config_path_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path), "ingest"]) == 2
    assert f"config file {tmp_path} is a directory, not a TOML file" in _said(capsys)


@pytest.mark.parametrize(
    ("key", "value", "relation"),
    [
        ("generate.output", "{root}/..", "contains"),
        ("generate.output", "{root}/../warehouse", "is"),
        ("evaluation.output_dir", "{root}/interactions/../reports", "is inside"),
        ("spark.checkpoint_dir", "{root}/users/../../warehouse/ckpt", "is inside"),
        ("ingest.source.path", "{root}/..", "contains"),
        ("evaluation.given_train", "{root}/interactions/part-0.csv", "is inside"),
    ],
    ids=["generate-contains", "generate-is", "reports-inside", "checkpoints-inside", "source-contains", "given-inside"],
)
def test_paths_that_escape_into_the_table_root(
    key: str, value: str, relation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "warehouse"
    command = {"generate": "generate", "evaluation": "evaluate", "spark": "train-als", "ingest": "ingest"}
    assert main([*_sets(f"storage.root={root}", f"{key}={value.format(root=root)}"), command[key.split(".")[0]]]) == 2
    said = _said(capsys)
    assert f"{key} '{value.format(root=root)}' {relation} the table root" in said
    assert f"that is {root} once '..' is resolved" in said


def test_a_file_where_a_folder_belongs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    assert main([*_sets(f"storage.root={f}"), "tables"]) == 2
    assert f"storage.root '{f}' must be a directory, but it is a file" in _said(capsys)
    assert main([*_sets(f"storage.root={tmp_path / 'wh'}", f"evaluation.output_dir={f}/reports"), "evaluate"]) == 2
    assert f"evaluation.output_dir '{f}/reports' must be a directory, but it is a file ({f} is a file)" in _said(capsys)


@pytest.mark.parametrize(
    ("job", "args", "expected"),
    [
        ("train_als.py", ["--set", "als.rank=ten"], "als.rank: Input should be a valid integer"),
        (
            "generate.py",
            ["--set", "generate.output=data/warehouse/.."],
            "generate.output 'data/warehouse/..' contains the table root",
        ),
        ("evaluate.py", ["--config", "conf"], "config file conf is a directory"),
    ],
    ids=["wrong-type", "escaping-output", "config-is-a-directory"],
)
def test_job_entry_points_report_config_errors(job: str, args: list[str], expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / job), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


# -- tables that are not there yet, or names that leave the table root -----------------------------


@pytest.mark.parametrize(
    ("command", "extra", "expected"),
    [
        (
            "train-als",
            [],
            "tables ['interaction_matrix', 'users', 'items'] do not exist yet: run `recsys-spark ingest` first",
        ),
        ("item-similarity", [], "table 'interaction_matrix' does not exist yet: run `recsys-spark ingest` first"),
        (
            "item-similarity",
            ["similarity.method=als"],
            "table 'item_factors' does not exist yet: run `recsys-spark train-als` first",
        ),
        (
            "candidates",
            ['candidates.strategies=["als"]'],
            "do not exist yet: run ingest, train-als and item-similarity first",
        ),
        (
            "topk",
            ['candidates.strategies=["als"]'],
            "do not exist yet: run ingest, train-als and item-similarity first",
        ),
        ("evaluate", [], "do not exist yet: run `recsys-spark ingest` first"),
    ],
    ids=["train-als", "item-similarity", "item-similarity-als", "candidates", "topk-alias", "evaluate"],
)
def test_missing_tables_say_which_job_to_run(
    command: str,
    extra: list[str],
    expected: str,
    spark: SparkSession,
    base_config: Config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*_with_session(base_config, tmp_path / "warehouse", *extra), command]) == 2
    assert expected in _said(capsys).split("error: ", 1)[1].splitlines()[0]


def test_missing_table_through_the_job_entry_point(
    spark: SparkSession, base_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # exactly what jobs/train_als.py runs under spark-submit
    assert run_job("train-als", _with_session(base_config, tmp_path / "warehouse")) == 2
    assert "run `recsys-spark ingest` first" in _said(capsys)


@pytest.mark.parametrize(
    ("what", "table", "job"), [("user", "user_candidates", "candidates"), ("item", "item_neighbors", "item-similarity")]
)
def test_lookup_before_the_tables_exist(
    what: str, table: str, job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_sets(f"storage.root={tmp_path}"), "lookup", what, "x1"]) == 2
    said = _said(capsys)
    assert f"table '{table}' does not exist at {tmp_path}/{table}: run `recsys-spark {job}` first" in said


def test_table_names_cannot_leave_the_table_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_sets(f"storage.root={tmp_path}"), "vacuum", "../users"]) == 2
    said = _said(capsys)
    assert "invalid table name '../users'" in said and "may not point outside the table root" in said
    with pytest.raises(SystemExit) as exit_:  # history only takes catalogued names
        main([*_sets(f"storage.root={tmp_path}"), "history", "../users"])
    assert exit_.value.code == 2
    assert "invalid choice: '../users'" in _said(capsys)
