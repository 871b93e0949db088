"""The benchmark suite's --quick mode (what CI runs): every benchmark still works end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_spark.bench import cli


def test_quick_benchmarks_write_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "recsys_spark.bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, check=False, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "benchmarks.json").read_text())
    report = (out / "BENCHMARKS.md").read_text()
    assert results["quick"] is True
    for name in cli.DEFAULT_ONLY:  # quality needs the public datasets and has make quality of its own
        assert name in results, name
        assert results[name]["wall_s"] > 0
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert len(sections) >= len(cli.DEFAULT_ONLY), sections
    assert not re.search(r"\bnan\b", report, re.IGNORECASE), "a figure came out as NaN"


def test_unknown_benchmark_is_refused(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        cli.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err


def test_calibrated_iterations_stretch_a_short_slope_until_it_lasts() -> None:
    from recsys_spark.bench.als import calibrated_iterations

    def fit(per_iter: float, fixed: float = 0.5):  # noqa: ANN202
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


def test_scale_ladders(capsys) -> None:  # noqa: ANN001
    from recsys_spark.bench.pipeline import scale_points

    assert scale_points(100_000, 10_000_000) == [100_000, 300_000, 1_000_000, 3_000_000, 10_000_000]
    assert scale_points(100_000, 10_000_000, rungs=10) == [100_000, 1_000_000, 10_000_000]
    assert scale_points(5_000, 10_000) == [5_000, 10_000]
    assert scale_points(10_000_000, 10_000_000, rungs=10) == [10_000_000]
    with pytest.raises(SystemExit):
        cli.main(["--only", "pipeline", "--scale-rungs", "5"])
    assert "--scale-rungs must be 3" in capsys.readouterr().err
