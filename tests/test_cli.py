"""The recsys-spark command: clear errors with non-zero exits, and the Spark-free commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recsys_spark.cli import main, spark_error_summary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config

REPO = Path(__file__).resolve().parent.parent


def test_bad_config_is_one_clear_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[storage]\nroot = 5\nflavour = 'x'\n")
    assert main(["--config", str(f), "tables"]) == 2
    err = capsys.readouterr().err
    assert "storage.root: Input should be a valid string" in err
    assert "storage.flavour: unknown key" in err
    assert "Traceback" not in err


def test_missing_table_history_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--set", f"storage.root={tmp_path}", "history", "users"]) == 2
    assert "table 'users' does not exist" in capsys.readouterr().err


def test_tables_on_an_empty_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--set", f"storage.root={tmp_path}", "tables"]) == 0
    out = capsys.readouterr().out
    assert "interaction_matrix" in out and "(not written yet)" in out


def test_options_may_follow_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["tables", "--set", f"storage.root={tmp_path}"]) == 0
    assert str(tmp_path) in capsys.readouterr().out


def test_spark_error_summary_keeps_the_python_cause() -> None:
    exc = RuntimeError(
        "An exception was thrown from the Python worker:\n  File x, line 3\n"
        "ModuleNotFoundError: No module named 'pandas'\n SQLSTATE: 38000)"
    )
    assert spark_error_summary(exc) == (
        "An exception was thrown from the Python worker: (ModuleNotFoundError: No module named 'pandas')"
    )


def test_job_entry_point_rejects_bad_overrides() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "ingest.py"), "--set", "ingest.nope=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ingest.nope: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_ingest_and_tables_end_to_end(
    spark: SparkSession, cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text(
        "event_id,user_id,item_id,event_type,timestamp,value\n"
        "e1,u1,i1,view,2026-09-01T00:00:00Z,1\ne2,u2,i1,click,2026-09-01T00:01:00Z,1\n"
    )
    root = cfg.storage.root
    args = [
        "--set",
        f"storage.root={root}",
        "--set",
        f"ingest.source.path={raw}",
        "--set",
        "spark.master=local[2]",
        "--set",
        "spark.ui_enabled=false",
    ]
    assert main([*args, "ingest"]) == 0
    out = capsys.readouterr().out
    assert "new events: 2" in out
    assert main([*args, "tables"]) == 0
    assert "interactions" in capsys.readouterr().out
    assert main([*args, "history", "interactions"]) == 0
    assert "job=ingest" in capsys.readouterr().out
    assert main([*args, "vacuum", "--retention-hours", "0", "--dry-run"]) == 0


def test_an_unwritable_table_root_fails_before_any_work(
    spark: SparkSession,
    cfg: Config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text("event_id,user_id,item_id,event_type,timestamp,value\ne1,u1,i1,view,2026-09-01T00:00:00Z,1\n")

    def last_job() -> int:  # job ids only grow, whatever the tracker has forgotten
        return max(spark.sparkContext.statusTracker().getJobIdsForGroup(None), default=-1)

    jobs_before = last_job()
    args = [
        "--set",
        "storage.root=/proc/recsys-warehouse",
        "--set",
        f"ingest.source.path={raw}",
        "--set",
        "spark.master=local[2]",
        "--set",
        "spark.ui_enabled=false",
    ]
    assert main([*args, "ingest"]) == 2
    err = capsys.readouterr().err
    assert "error: storage.root '/proc/recsys-warehouse' (/proc/recsys-warehouse) is not writable" in err
    assert "Traceback" not in err and "\tat " not in err
    # it stopped before reading the input: no Spark job ran
    assert last_job() == jobs_before
