"""The scheduling examples of "Running it every night": the Airflow DAG under docs/ and the cron
line in the README start the nightly job that exists, with paths that ``make dist`` produces.

Airflow is not installed: the DAG file runs against stand-ins of ``DAG`` and
``SparkSubmitOperator`` that record what it builds.
"""

from __future__ import annotations

import re
import runpy
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "docs" / "airflow" / "recsys_nightly.py"


class _Operator:
    made: ClassVar[dict[str, _Operator]] = {}

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        self.task_id, self.kwargs, self.downstream = task_id, kwargs, []
        _Operator.made[task_id] = self

    def __rshift__(self, other: _Operator) -> _Operator:
        self.downstream.append(other.task_id)
        return other


class _Dag:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __enter__(self) -> _Dag:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def dag(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    _Operator.made = {}
    names = ["airflow", "airflow.providers", "airflow.providers.apache", "airflow.providers.apache.spark"]
    names += ["airflow.providers.apache.spark.operators", "airflow.providers.apache.spark.operators.spark_submit"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["airflow"].DAG = _Dag  # type: ignore[attr-defined]
    sys.modules[names[-1]].SparkSubmitOperator = _Operator  # type: ignore[attr-defined]
    monkeypatch.setenv("RECSYS_HOME", str(REPO))
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    return runpy.run_path(str(DAG_FILE))


def _cron_line() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running it every night", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if "jobs/nightly.py" in line and re.match(r"^[\d*/,-]+ ", line)]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_dag_submits_the_nightly_job_then_the_redis_export(dag: dict[str, Any]) -> None:
    tasks = _Operator.made
    assert list(tasks) == ["nightly", "export_redis"]
    assert tasks["nightly"].downstream == ["export_redis"]
    for task, job in (("nightly", "nightly.py"), ("export_redis", "export_redis.py")):
        application = Path(tasks[task].kwargs["application"])
        assert application == REPO / "jobs" / job and application.exists()
        args = tasks[task].kwargs["application_args"]
        assert args[0] == "--config" and Path(args[1]).exists()
        # the zip `make dist` writes
        assert tasks[task].kwargs["py_files"] == f"{REPO}/dist/recsys_spark.zip"
    assert "dist/recsys_spark.zip" in (REPO / "Makefile").read_text()


def test_the_dag_never_runs_two_nights_at_once_and_retries_a_failed_one(dag: dict[str, Any]) -> None:
    kwargs = dag["dag"].kwargs
    assert kwargs["max_active_runs"] == 1 and kwargs["catchup"] is False
    assert kwargs["default_args"]["retries"] >= 1


def test_the_cron_line_and_the_dag_share_the_schedule(dag: dict[str, Any]) -> None:
    line = _cron_line()
    assert " ".join(line.split()[:5]) == dag["dag"].kwargs["schedule"]
    assert "flock -n" in line and "--py-files dist/recsys_spark.zip jobs/nightly.py" in line
    config = re.search(r"--config (\S+)", line)
    assert config and (REPO / config.group(1)).exists()


def test_the_readme_rollback_commands_are_commands_of_the_cli() -> None:
    from recsys_spark.cli import _build_parser

    readme = (REPO / "README.md").read_text()
    block = readme.split("**Rollback.**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    assert [c[1] for c in commands] == ["history", "rollback", "rollback"]
    for argv in commands:
        args = _build_parser().parse_args(argv[1:])  # argparse exits on anything it does not know
        assert args.command in ("history", "rollback")
