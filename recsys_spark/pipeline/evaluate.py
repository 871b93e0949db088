"""The ``evaluate`` job: every served strategy and the baselines scored on a split, into
``evaluation_summary`` and a run folder (``evaluation.json`` and the HTML report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsys_spark.evaluation.summary import EvaluationDocument

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import tables as T
from recsys_spark.config.schema import Config
from recsys_spark.errors import StorageError
from recsys_spark.evaluation.churn import churn_history
from recsys_spark.ingest.sources import list_source_files, read_source
from recsys_spark.ingest.transforms import (
    accepted_events,
    interaction_matrix,
    validate_events,
    with_dense_ids,
)
from recsys_spark.pipeline.common import writable_store
from recsys_spark.pipeline.runs import RunContext
from recsys_spark.pipeline.staleness import settings_hash
from recsys_spark.session import released_caches
from recsys_spark.storage.published import publications
from recsys_spark.storage.store import TableStore, WriteResult

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What one evaluation run produced."""

    run_id: str
    summary: EvaluationDocument
    json_path: Path
    report_path: Path
    table: WriteResult

    def headline_table(self) -> str:
        """A plain-text table of the headline metrics, mean ± std over splits."""
        from recsys_spark.evaluation.scoring import headline_table

        return headline_table(self.summary)


def _given_matrix(
    spark: SparkSession, cfg: Config, store: TableStore, path: str, key: str, inputs: dict[str, int | None]
) -> DataFrame:
    """The matrix of the files at ``path`` (config key ``key``), mapped to the stored dense ids; pairs
    of users or items the tables do not know are left out."""
    icfg = cfg.ingest
    users = store.read(T.USERS, version=inputs[T.USERS])
    items = store.read(T.ITEMS, version=inputs[T.ITEMS])
    files = list_source_files(path, key)
    raw = read_source(spark, icfg.source, files, icfg.max_line_bytes)
    validated = validate_events(raw, icfg.source, icfg, datetime.now(timezone.utc))
    events = with_dense_ids(accepted_events(validated, icfg.source, icfg), users, items)
    return interaction_matrix(events, icfg)


def _splits(
    spark: SparkSession, cfg: Config, store: TableStore, matrix: DataFrame, inputs: dict[str, int | None]
) -> list[tuple[str, dict, DataFrame, DataFrame]]:
    from recsys_spark.evaluation.splits import given_split, leave_last_split, random_split, time_split

    ec = cfg.evaluation
    if ec.split == "served":
        test = _given_matrix(spark, cfg, store, ec.given_test, "evaluation.given_test", inputs)
        return [("served", {"test": ec.given_test}, *given_split(matrix, test))]
    if ec.split == "given":
        out = []
        for fold in ec.folds or [None]:
            paths = [
                (key, pattern.replace("{fold}", fold) if fold else pattern)
                for key, pattern in (
                    ("evaluation.given_train", ec.given_train),
                    ("evaluation.given_test", ec.given_test),
                )
            ]
            train, test = (_given_matrix(spark, cfg, store, path, key, inputs) for key, path in paths)
            out.append((fold or "given", {"train": paths[0][1], "test": paths[1][1]}, *given_split(train, test)))
        return out
    if ec.split == "random":
        return [
            (
                "random",
                {"test_fraction": ec.test_fraction, "seed": ec.seed},
                *random_split(matrix, ec.test_fraction, ec.seed),
            )
        ]
    if ec.split == "time":
        cutoff = datetime.fromisoformat(ec.time_cutoff.replace("Z", "+00:00")) if ec.time_cutoff else None
        return [
            (
                "time",
                {"time_cutoff": ec.time_cutoff, "test_fraction": ec.test_fraction},
                *time_split(matrix, cutoff, ec.test_fraction),
            )
        ]
    return [("leave_last", {"n": ec.leave_last_n}, *leave_last_split(matrix, ec.leave_last_n))]


def _point_latest_at(run_dir: Path) -> None:
    """Make ``<output_dir>/latest`` the run's folder, atomically: a symlink swapped with os.replace.

    Two evaluations finishing at once each swap the link, and either way it names one whole run;
    replacing a copied folder (remove, then rename) let the second one fail on the first's.
    """
    latest = run_dir.parent / "latest"
    if latest.is_dir() and not latest.is_symlink():
        shutil.rmtree(latest)  # a folder left by an earlier version of this job
    tmp = run_dir.parent / f".latest-{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)  # relative: the folder may be moved
    os.replace(tmp, latest)


def run_evaluate(spark: SparkSession, cfg: Config, ctx: RunContext) -> EvaluationResult:
    """Score every strategy of ``candidates.strategies`` and every baseline on each split's test
    part, and write evaluation_summary, evaluation.json and report.html.

    The strategies' models are fitted on each split's training part (settings searched on its
    validation carve-out where a stage's ``tune`` is set) and their lists made by the code that
    writes user_candidates; with ``evaluation.split = "served"`` nothing is fitted and the lists
    user_candidates serves now are scored against ``evaluation.given_test``.
    """
    import json

    from recsys_spark.evaluation.report import render_report
    from recsys_spark.evaluation.scoring import evaluate_split, headline_values
    from recsys_spark.evaluation.summary import beats

    ec = cfg.evaluation
    store = writable_store(spark, cfg)
    tables = [T.INTERACTION_MATRIX, T.USERS, T.ITEMS] + ([T.USER_CANDIDATES] if ec.split == "served" else [])
    inputs = {t: store.version(t) for t in tables}
    missing = [t for t, v in inputs.items() if v is None]
    if missing:
        first = "candidates" if missing == [T.USER_CANDIDATES] else "ingest"
        raise StorageError(f"tables {missing} do not exist yet: run `recsys-spark {first}` first")
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    n_items = store.read(T.ITEMS, version=inputs[T.ITEMS]).count()
    matrix.count()  # materialised before the per-split released_caches blocks
    graded = matrix.where(F.col("rating").isNotNull()).limit(1).count() > 0
    results: list[dict] = []
    splits_meta: list[dict] = []
    models_meta: dict[str, dict] = {}
    popularity_curve: dict = {}
    try:
        for name, params, train, test in _splits(spark, cfg, store, matrix, inputs):
            with released_caches(spark):  # every model fitted on this split is freed with it
                train = train.persist(StorageLevel.MEMORY_AND_DISK)
                test = test.persist(StorageLevel.MEMORY_AND_DISK)
                served = _served_lists(store, inputs) if ec.split == "served" else None
                scored = evaluate_split(name, train, test, cfg, n_items=n_items, graded=graded, served=served)
                splits_meta.append({**scored.meta, "params": params})
                results += scored.results
                for model, meta in scored.models.items():
                    entry = models_meta.setdefault(
                        model,
                        {
                            "kind": meta["kind"],
                            "params": meta["params"],
                            "model_version": f"{model}-{ctx.run_id}",
                            "splits": {},
                        },
                    )
                    entry["splits"][name] = {k: v for k, v in meta.items() if k != "kind"}
                if not popularity_curve:
                    counts = scored.popularity_counts
                    step = max(1, len(counts) // 2000)
                    popularity_curve = {
                        "n_items": n_items,
                        "n_interactions": scored.meta["train_rows"],
                        "item_counts_desc": counts[::step],
                        "item_rank": list(range(1, len(counts) + 1, step)),
                    }
                train.unpersist()
                test.unpersist()
    finally:
        matrix.unpersist()

    means = headline_values(results, ec.headline_metric, ec.headline_k)
    strategies = [m for m, meta in models_meta.items() if meta["kind"] == "model" and m in means]
    best = max(strategies, key=lambda m: means[m]) if strategies else None
    flags = []
    if "popularity" in models_meta:
        base = means.get("popularity")
        for model, meta in models_meta.items():
            if meta["kind"] == "model" and not beats(means.get(model), base, ec.headline_metric):
                flags.append(
                    f"model {model!r} does not beat most-popular on {ec.headline_metric}@{ec.headline_k} "
                    f"({means.get(model)} vs {base})"
                )
    summary: EvaluationDocument = {
        "run_id": ctx.run_id,
        "created_at": ctx.started_at.isoformat(),
        "dataset": cfg.ingest.source.preset,
        "ks": list(ec.ks),
        "headline": {"metric": ec.headline_metric, "k": ec.headline_k},
        "best": None if best is None else {"model": best, "value": means[best]},
        "splits": splits_meta,
        "models": models_meta,
        "results": results,
        "flags": flags,
        "popularity": popularity_curve,
        "input_versions": inputs,
        "config": cfg.model_dump(mode="json"),
        # measured by each publish against the one before; this night's publish comes after
        "churn": churn_history(publications(cfg.storage.root)),
    }
    out_dir = Path(ec.output_dir) / ctx.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    report_path = render_report(summary, out_dir / "report.html")
    _point_latest_at(out_dir)

    rows = [
        (
            ctx.run_id,
            r["split"],
            r["model"],
            models_meta[r["model"]]["kind"],
            models_meta[r["model"]]["model_version"],
            r["metric"],
            r["k"],
            r["value"],
            json.dumps(inputs, sort_keys=True),
            ctx.started_at,
        )
        for r in results
    ]
    df = spark.createDataFrame(
        rows,
        "run_id STRING, split STRING, model STRING, kind STRING, model_version STRING, "
        "metric STRING, k INT, value DOUBLE, input_versions STRING, "
        "evaluated_at TIMESTAMP",
    )
    written = store.write(
        df.coalesce(1),
        T.EVALUATION_SUMMARY,
        "append",
        ctx.commit(input_versions=inputs, settings_hash=settings_hash(cfg, "evaluate")),
    )
    return EvaluationResult(ctx.run_id, summary, json_path, report_path, written)


def _served_lists(store: TableStore, inputs: dict[str, int | None]) -> dict[str, DataFrame]:
    """strategy -> (user_idx, item_idx, rank) of every list user_candidates serves at the version read."""
    version = inputs[T.USER_CANDIDATES]
    served = sorted(store.partition_values(T.USER_CANDIDATES, "strategy"))
    return {
        s: store.read(T.USER_CANDIDATES, version=version, where=f"strategy = '{s}'").select(
            "user_idx", "item_idx", "rank"
        )
        for s in served
    }
