"""The ``nightly`` job: ingest, train, item neighbours, candidates, evaluation and publish in one
run, on the configured source, each stage skipped when its output is current.

What is current is judged from the commits (:mod:`recsys_spark.pipeline.staleness`): a stage runs
when its output is missing, when an input table has moved past the version its latest commit
records, or when the settings that shape it changed. Ingest always looks, since only the source
folder knows whether a file is new; it commits nothing when none is. So a night on unchanged input
changes no table but ``runs``, and a night after a kill does only what the killed one left.

The last stage is the quality gate (:mod:`recsys_spark.pipeline.publish`): the new lists reach the
readers only when it passes; a refused night raises, so the job exits non-zero, and readers keep
the lists published before.

The whole night is one run: every commit carries its run id, and its one ``runs`` row lists the
stages with what each did, why, how long it took and the versions it committed (``details.stages``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_spark import tables as T
from recsys_spark.candidates.builder import every_blend_source, needed_neighbor_methods
from recsys_spark.errors import GateRefusedError
from recsys_spark.pipeline.candidates import run_candidates
from recsys_spark.pipeline.evaluate import run_evaluate
from recsys_spark.pipeline.ingest import run_ingest
from recsys_spark.pipeline.publish import run_publish
from recsys_spark.pipeline.refresh import choose_refresh, fold_in_floors, run_refresh_users
from recsys_spark.pipeline.similarity import run_item_similarity
from recsys_spark.pipeline.staleness import last_stage_commit, settings_hash, why_stale
from recsys_spark.pipeline.train import als_summary, run_train_als
from recsys_spark.storage.store import TableStore

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.storage.store import WriteResult

log = logging.getLogger(__name__)

__all__ = ["NightlyResult", "StageRun", "neighbor_methods", "run_nightly"]


@dataclass(frozen=True)
class StageRun:
    """One stage of a night, as its ``runs`` row records it."""

    stage: str
    """The stage's job name, with the partition for a partitioned one (``item-similarity:als``)."""
    ran: bool
    """Whether it committed anything (ingest looks every night; it runs when a file is new)."""
    why: str
    """Why it ran, or why it was current."""
    seconds: float
    """Wall time, the staleness check included."""
    committed: dict[str, list[int]] = field(default_factory=dict)
    """table -> versions it committed, oldest first."""


@dataclass(frozen=True)
class NightlyResult:
    """What a night leaves: the store, its stages in order, the evaluation's headline table (None
    when the evaluation was current) and the latest report."""

    store: TableStore
    stages: list[StageRun]
    headline_table: str | None
    report_path: Path

    @property
    def ran(self) -> list[str]:
        """The stages that committed something."""
        return [s.stage for s in self.stages if s.ran]


def neighbor_methods(cfg: Config, store: TableStore, also: Iterable[str] = ()) -> list[str]:
    """The item_neighbors methods a night keeps current: ``similarity.method``, every method the
    candidate strategies vote through (all blend sources when the blend is searched), every method
    the table already serves (a lookup may ask for it), and ``also``."""
    scope = every_blend_source(cfg.candidates) if cfg.candidates.tune else cfg.candidates
    served = sorted(store.partition_values(T.ITEM_NEIGHBORS, "method"))
    return list(dict.fromkeys([cfg.similarity.method, *needed_neighbor_methods(scope), *served, *also]))


def _versions(writes: Iterable[WriteResult]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for w in writes:
        out.setdefault(w.table, []).append(w.version)
    return out


def _candidates_stale(store: TableStore, cfg: Config) -> str | None:
    """Why the candidates stage must run: a strategy's partition or popular_items is not current,
    or the item rules file changed since (its SHA-256 is in the commit)."""
    expected = settings_hash(cfg, "candidates")
    for strategy in cfg.candidates.strategies:
        why = why_stale(store, T.USER_CANDIDATES, expected, {"strategy": strategy})
        if why:
            return why
    why = why_stale(store, T.POPULAR_ITEMS, expected)
    if why:
        return why
    if cfg.candidates.exclude_items:
        from recsys_spark.pipeline.rules import read_item_rules

        now = read_item_rules(cfg.candidates.exclude_items).sha256
        entry = last_stage_commit(store, T.POPULAR_ITEMS)
        recorded = ((entry.metadata.get("rules") or {}) if entry else {}).get("sha256")
        if recorded != now:
            return f"the item rules changed ({recorded} -> {now}, candidates.exclude_items)"
    return None


def _only_data_moved(store: TableStore, cfg: Config) -> bool:
    """Whether the user factors are stale only because the interaction data moved: they exist, and
    their settings are the configuration's, so a fold-in could make them current."""
    entry = last_stage_commit(store, T.USER_FACTORS)
    return (
        entry is not None
        and store.exists(T.ITEM_FACTORS)
        and entry.metadata.get("settings_hash") == settings_hash(cfg, "train-als")
    )


def run_nightly(
    spark: SparkSession,
    cfg: Config,
    ctx: RunContext,
    say: Callable[[str], None] = print,
    also_methods: Iterable[str] = (),
) -> NightlyResult:
    """Every stage on ``cfg``'s source in order, each skipped when current; ``say`` gets one line a
    stage. ``also_methods``: item_neighbors methods to build besides :func:`neighbor_methods`'."""
    store = TableStore(spark, cfg.storage)
    stages: list[StageRun] = []
    ctx.notes["stages"] = records = []  # live: a night that fails records the stages it got through

    def done(stage: str, ran: bool, why: str, started: float, writes: Iterable[WriteResult] = ()) -> None:
        run = StageRun(stage, ran, why, round(time.perf_counter() - started, 3), _versions(writes))
        stages.append(run)
        records.append(asdict(run))
        log.info("nightly %s: %s (%s) in %.1fs", stage, "ran" if ran else "current", why, run.seconds)

    started = time.perf_counter()
    report = run_ingest(spark, cfg, ctx)
    done(
        "ingest",
        bool(report.writes),
        f"{report.events_added:,} new events" if report.writes else "no new source file",
        started,
        report.writes,
    )
    methods = neighbor_methods(cfg, store, also_methods)
    steps = 5 + len(methods)
    say(f"[1/{steps}] " + report.render())

    started = time.perf_counter()
    why = why_stale(store, T.USER_FACTORS, settings_hash(cfg, "train-als")) or (
        None if store.exists(T.ITEM_FACTORS) else "item_factors not written yet"
    )
    decision = choose_refresh(store, cfg) if why and _only_data_moved(store, cfg) else None
    if decision is not None and decision.fold_in:
        refreshed = run_refresh_users(spark, cfg, ctx)
        done("refresh-users", True, f"{why}; {decision.why}", started, refreshed.writes)
        say(f"[2/{steps}] " + refreshed.render() + f" ({decision.why})")
    elif why:
        why = f"{why}; {decision.why}" if decision else why
        trained = run_train_als(spark, cfg, ctx)
        done("train-als", True, why, started, trained.values())
        say(f"[2/{steps}] " + als_summary(cfg, trained) + f" ({why})")
    else:
        done("train-als", False, "inputs and settings unchanged", started)
        say(f"[2/{steps}] ALS: inputs and settings unchanged, the factors are current")

    for step, method in enumerate(methods, start=3):
        started = time.perf_counter()
        mcfg = cfg.with_overrides([f"similarity.method={method}"])
        why = why_stale(
            store, T.ITEM_NEIGHBORS, settings_hash(mcfg, "item-similarity"), {"method": method}, fold_in_floors(store)
        )
        stage = f"item-similarity:{method}"
        if why:
            w = run_item_similarity(spark, mcfg, ctx)
            done(stage, True, why, started, [w])
            say(f"[{step}/{steps}] item neighbours ({method}): item_neighbors v{w.version}, {w.rows:,} rows ({why})")
        else:
            done(stage, False, "inputs and settings unchanged", started)
            say(f"[{step}/{steps}] item neighbours ({method}): inputs and settings unchanged, current")

    step = steps - 2
    started = time.perf_counter()
    why = _candidates_stale(store, cfg)
    if why:
        out = run_candidates(spark, cfg, ctx)
        done("candidates", True, why, started, out.values())
        lists = ", ".join(f"{name} v{w.version} ({w.rows:,} rows)" for name, w in out.items())
        say(f"[{step}/{steps}] candidates: {lists} ({why})")
    else:
        done("candidates", False, "inputs and settings unchanged", started)
        say(f"[{step}/{steps}] candidates: inputs and settings unchanged, user_candidates is current")

    started = time.perf_counter()
    latest = Path(cfg.evaluation.output_dir) / "latest" / "report.html"
    why = why_stale(store, T.EVALUATION_SUMMARY, settings_hash(cfg, "evaluate")) or (
        None if latest.exists() else f"no report at {latest}"
    )
    headline: str | None = None
    if why:
        res = run_evaluate(spark, cfg, ctx)
        done("evaluate", True, why, started, [res.table])
        test_users = res.summary["splits"][0]["test_users"]
        say(
            f"[{steps - 1}/{steps}] evaluation ({cfg.evaluation.split} split, {test_users:,} test users): "
            f"evaluation_summary v{res.table.version} ({why})"
        )
        headline, latest = res.headline_table(), res.report_path
    else:
        done("evaluate", False, "inputs and settings unchanged", started)
        say(f"[{steps - 1}/{steps}] evaluation: inputs and settings unchanged, the latest report is current")

    started = time.perf_counter()
    try:
        published = run_publish(spark, cfg, ctx)
    except GateRefusedError as exc:
        done("publish", False, f"refused: {exc}", started)
        say(f"[{steps}/{steps}] {exc}")
        raise
    writes = [published.written] if published.written else []
    done("publish", published.published, published.render().removeprefix("publish: "), started, writes)
    say(f"[{steps}/{steps}] " + published.render())
    return NightlyResult(store, stages, headline, latest)
