"""The benchmark suite at its --quick sizes: every benchmark still runs and renders its section."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from recsys_spark.bench import cli

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config


@pytest.fixture(scope="module")
def quick_results(spark: SparkSession, base_config: Config, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every benchmark of a plain `make bench` at its --quick size, in the suite's own session.

    The pipeline benchmark times each stage in a process of its own; here it runs two of them
    (generate, ingest), which exercises all of its machinery (process-tree sampling, event-log
    metrics, startup probe, report) without starting seven JVMs. `make bench ARGS=--quick` is the
    complete smoke run.
    """
    from recsys_spark.bench import pipeline
    from recsys_spark.bench._common import BenchContext, machine

    work = tmp_path_factory.mktemp("bench")
    sizes = {name: quick for bench in cli.BENCHMARKS for name, (_, quick, _) in cli._module(bench).SIZES.items()}
    sizes.update(scale_min_events=2_000, scale_max_events=2_000)
    cfg = base_config.with_overrides([*cli.run_overrides(sizes["events"], work), f"storage.root={work / 'warehouse'}"])
    ctx = BenchContext(spark=spark, cfg=cfg, work=work, quick=True, repeats=1, sizes=sizes)
    results: dict = {
        "date": "today",
        "command": "python -m recsys_spark.bench --quick",
        "quick": True,
        "sizes": sizes,
        "repeats": 1,
        "machine": machine(spark),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "STAGES", pipeline.STAGES[:2])
        results.update(cli.run_benchmarks(ctx, cli.DEFAULT_ONLY))
    return results


def test_quick_benchmarks_fill_every_section(quick_results: dict) -> None:
    assert set(cli.DEFAULT_ONLY) <= set(quick_results)
    assert all(quick_results[name]["wall_s"] > 0 for name in cli.DEFAULT_ONLY)
    report = cli.render(json.loads(json.dumps(quick_results)))  # what benchmarks.json round-trips
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert len(sections) >= len(cli.DEFAULT_ONLY), sections
    assert not re.search(r"\bnan\b", report, re.IGNORECASE), "a figure came out as NaN"


def test_the_pipeline_benchmark_measures_each_stage_process(quick_results: dict) -> None:
    point = quick_results["pipeline"]["points"][0]
    assert point["ok"] and point["events_written"] > 1_000
    assert point["startup_s"] > 0 and point["session_build_s"] > 0
    for stage in ("generate", "ingest"):
        s = point["stages"][stage]
        assert s["exit_code"] == 0 and s["job_s"] > 0 and s["wall_s"] >= s["job_s"]
        assert s["event_log_found"] and s["tasks"] > 0 and s["failed_tasks"] == 0
        assert s["peak_jvm_rss_bytes"] > 0 and s["peak_rss_bytes"] >= s["peak_jvm_rss_bytes"]
        assert s["cpu_s"] > 0


def test_unknown_benchmark_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err


def test_calibrated_iterations_stretch_a_short_slope_until_it_lasts() -> None:
    from recsys_spark.bench.als import calibrated_iterations

    def fit(per_iter: float, fixed: float = 0.5) -> Callable[[int], float]:
        return lambda n: fixed + per_iter * n

    # 0.1 s per iteration: a 3 s span needs 30 iterations above lo
    assert calibrated_iterations(fit(0.1), 5, 10, 3.0) == (5, 35)
    # already long enough: hi is kept
    assert calibrated_iterations(fit(2.0), 5, 10, 3.0) == (5, 10)
    # milliseconds per iteration: capped
    assert calibrated_iterations(fit(0.001), 5, 10, 3.0, cap=400) == (5, 400)
    # no span asked for (--quick): unchanged
    assert calibrated_iterations(fit(0.1), 1, 2, 0.0) == (1, 2)
    # noise (hi no slower than lo): the hi fit's time per iteration bounds the estimate from above
    assert calibrated_iterations(lambda n: 1.0, 1, 3, 3.0) == (1, 10)


def test_scale_ladders(capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_spark.bench.pipeline import scale_points

    assert scale_points(100_000, 10_000_000) == [100_000, 300_000, 1_000_000, 3_000_000, 10_000_000]
    assert scale_points(100_000, 10_000_000, rungs=10) == [100_000, 1_000_000, 10_000_000]
    assert scale_points(5_000, 10_000) == [5_000, 10_000]
    assert scale_points(10_000_000, 10_000_000, rungs=10) == [10_000_000]
    with pytest.raises(SystemExit):
        cli.main(["--only", "pipeline", "--scale-rungs", "5"])
    assert "--scale-rungs must be 3" in capsys.readouterr().err
