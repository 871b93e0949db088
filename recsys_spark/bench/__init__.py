"""Benchmarks (``make bench``): each figure is measured in the same run as its baseline.

    python -m recsys_spark.bench [--quick] [--only NAME,...] [--repeats R] [--out DIR] [size options]

One module per benchmark; each has ``TITLE``, ``run(BenchContext) -> dict`` and
``markdown(dict) -> list[str]``. The run writes ``DIR/BENCHMARKS.md`` (for people) and
``DIR/benchmarks.json`` (for machines). ``--quick`` runs every benchmark at a tiny size once, to
prove it still works (CI does this).
"""

from recsys_spark.bench.cli import main

__all__ = ["main"]
