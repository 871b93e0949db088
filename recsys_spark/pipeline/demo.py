"""The ``demo`` job: every stage on the synthetic log, each skipped when its inputs are unchanged.

A stage is stale when what it reads has changed in this run: new events (ingest added rows)
make ALS and the cosine neighbours stale; new factors make the ALS neighbours, the candidates and
the evaluation stale; a missing table or report is always rebuilt. A second ``make demo`` on the
same log therefore commits nothing and prints where each current table is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_spark import tables as T
from recsys_spark.pipeline.candidates import run_candidates
from recsys_spark.pipeline.evaluate import run_evaluate
from recsys_spark.pipeline.generate import run_generate
from recsys_spark.pipeline.ingest import run_ingest
from recsys_spark.pipeline.similarity import run_item_similarity
from recsys_spark.pipeline.train import als_summary, run_train_als
from recsys_spark.storage.store import TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.runs import RunContext


@dataclass(frozen=True)
class DemoResult:
    """What the demo leaves: the store it wrote, the evaluation's headline table (None when the
    latest report was current), and that report."""

    store: TableStore
    headline_table: str | None
    report_path: Path


def run_demo(
    spark: SparkSession, cfg: Config, ctx: RunContext, fresh: bool = False, say: Callable[[str], None] = print
) -> DemoResult:
    """Generate (unless the log exists and not ``fresh``), ingest, train, neighbours, candidates,
    evaluate; ``say`` gets one progress line per stage."""
    store = TableStore(spark, cfg.storage)
    steps = 7
    out = Path(cfg.generate.output)
    if fresh or not out.exists():
        path, n = run_generate(spark, cfg)
        say(f"[1/{steps}] generated {n:,} synthetic events in {path}")
    else:
        say(f"[1/{steps}] reusing the synthetic log in {out} (pass --fresh to regenerate)")
    cfg = cfg.with_overrides([f"ingest.source.path={cfg.generate.output}", "ingest.source.preset=synthetic"])
    report = run_ingest(spark, cfg, ctx)
    say(f"[2/{steps}] " + report.render())
    changed = report.events_added > 0
    retrained = changed or not store.exists(T.USER_FACTORS)
    if retrained:
        say(f"[3/{steps}] " + als_summary(cfg, run_train_als(spark, cfg, ctx)))
    else:
        say(f"[3/{steps}] ALS: interactions unchanged, factors are current")
    methods = store.partition_values(T.ITEM_NEIGHBORS, "method")
    for step, method, label, stale in (
        (4, "cosine", "item-item cosine", changed),
        (5, "als", "ALS item-factor cosine", retrained),
    ):
        if stale or method not in methods:
            w = run_item_similarity(spark, cfg.with_overrides([f"similarity.method={method}"]), ctx)
            say(
                f"[{step}/{steps}] {label}: item_neighbors v{w.version}, {w.rows:,} neighbour rows "
                f"(method = {method!r})"
            )
        else:
            say(f"[{step}/{steps}] {label}: inputs unchanged, item_neighbors (method = {method!r}) is current")
    if retrained or not store.exists(T.USER_CANDIDATES):
        out = run_candidates(spark, cfg, ctx)
        say(
            f"[6/{steps}] candidates: " + ", ".join(f"{name} v{w.version} ({w.rows:,} rows)" for name, w in out.items())
        )
    else:
        say(f"[6/{steps}] candidates: inputs unchanged, user_candidates is current")
    latest = Path(cfg.evaluation.output_dir) / "latest" / "report.html"
    if retrained or not store.exists(T.EVALUATION_SUMMARY) or not latest.exists():
        res = run_evaluate(spark, cfg, ctx)
        say(
            f"[7/{steps}] evaluation ({cfg.evaluation.split} split, {res.summary['splits'][0]['test_users']:,} "
            f"test users): evaluation_summary v{res.table.version}"
        )
        return DemoResult(store, res.headline_table(), res.report_path)
    else:
        say(f"[7/{steps}] evaluation: inputs unchanged, the latest report is current")
        return DemoResult(store, None, latest)
