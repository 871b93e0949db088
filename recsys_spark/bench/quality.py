"""Recommendation quality on public data, against single-machine peers in the same run.

For each dataset (read from ``../shared/data`` or ``$RECSYS_SHARED_DATA``; skipped when absent) the
benchmark ingests it with its config under ``conf/``, takes the config's splits (ML-100K: the five
official folds), and on every split:

* scores every strategy the config serves, through ``evaluation.evaluate_split``: the models
  fitted on the training part, their settings searched on a validation carve-out of it, the lists
  made by the code that writes ``user_candidates``;
* fits the peers (implicit's ALS and CosineRecommender, a dense numpy EASE) on the same training
  part, each with its settings chosen on the same validation carve-out by the same metric, and
  scores their lists with the same metric code.

The table reports each model's mean headline metric over the splits, its ratio to popularity and
to the best peer, and the time each took. No number here comes from a test part that chose anything.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys_spark.bench._common import BenchContext

if TYPE_CHECKING:
    from recsys_spark.config.schema import Config

log = logging.getLogger(__name__)

TITLE = "Recommendation quality"
#: Size options: name -> (full default, --quick value, help).
SIZES = {"quality_folds": (5, 1, "ML-100K official folds to run (1..5)")}

REPO = Path(__file__).resolve().parents[2]

#: name -> (config under conf/, files that must exist under the data root, extra --set overrides).
DATASETS: dict[str, tuple[str, list[str], list[str]]] = {
    "ML-100K (official folds)": (
        "movielens-100k.toml",
        ["ml-100k/u.data"],
        [
            "ingest.source.path={data}/ml-100k/u.data",
            "evaluation.given_train={data}/ml-100k/{{fold}}.base",
            "evaluation.given_test={data}/ml-100k/{{fold}}.test",
        ],
    ),
    "Last.fm 2K (random 20% per user)": (
        "lastfm-2k.toml",
        ["hetrec2011-lastfm-2k/user_artists.dat"],
        ["ingest.source.path={data}/hetrec2011-lastfm-2k/user_artists.dat"],
    ),
    "ml-latest-small (random 20% per user)": (
        "ml-latest-small.toml",
        ["ml-latest-small/ratings.csv"],
        ["ingest.source.path={data}/ml-latest-small/ratings.csv"],
    ),
    "ml-latest-small (leave last 5)": (
        "ml-latest-small.toml",
        ["ml-latest-small/ratings.csv"],
        ["ingest.source.path={data}/ml-latest-small/ratings.csv", "evaluation.split=leave_last"],
    ),
    "Amazon 5-core (random 20% per user)": (
        "amazon-5core.toml",
        ["amazon-2014-musical-instruments-5core/Musical_Instruments_5.json.gz"],
        ["ingest.source.path={data}/amazon-2014-musical-instruments-5core/Musical_Instruments_5.json.gz"],
    ),
}

#: --quick: the smallest dataset, one split, no searches, tiny models: proves the machinery works.
_QUICK = [
    "als.tune=false",
    "similarity.tune=false",
    "candidates.tune=false",
    "als.rank=8",
    "als.max_iter=3",
    'candidates.strategies=["als", "ease", "blend"]',
    "candidates.blend_weights={ease = 0.5, als = 0.5}",
    "similarity.ease.l2=100.0",
]


def data_root() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


#: short names for ``RECSYS_QUALITY_DATASETS`` (``make quality DATASETS="lastfm-2k amazon-5core"``).
DATASET_IDS = dict(zip(["ml-100k", "lastfm-2k", "ml-latest-small", "ml-latest-small-last", "amazon-5core"], DATASETS))


def selected() -> list[str]:
    """The datasets to run: ``$RECSYS_QUALITY_DATASETS`` (ids, comma or space separated), else all."""
    wanted = os.environ.get("RECSYS_QUALITY_DATASETS", "").replace(",", " ").split()
    unknown = [w for w in wanted if w not in DATASET_IDS]
    if unknown:
        raise ValueError(
            f"RECSYS_QUALITY_DATASETS: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASET_IDS)}"
        )
    return [DATASET_IDS[w] for w in wanted] or list(DATASETS)


#: ``make quality TUNE=1``: every search on, whatever the config ships (its chosen values are then
#: only where the searches start from).
_TUNE = ["als.tune=true", "similarity.tune=true", "candidates.tune=true"]


def searches_forced() -> bool:
    """Whether ``$RECSYS_QUALITY_TUNE`` asks for every search (``make quality TUNE=1``)."""
    return os.environ.get("RECSYS_QUALITY_TUNE", "").strip().lower() not in ("", "0", "false", "no")


def run(ctx: BenchContext) -> dict[str, Any]:
    root = data_root()
    out: dict[str, Any] = {"data_root": str(root), "datasets": {}}
    names = ["Amazon 5-core (random 20% per user)"] if ctx.quick else selected()
    forced = searches_forced() and not ctx.quick
    for name in names:
        config, needs, sets = DATASETS[name]
        missing = [n for n in needs if not (root / n).exists()]
        if missing:
            out["datasets"][name] = {"skipped": f"{root / missing[0]} not found"}
            continue
        folder = ctx.work / f"quality-{len(out['datasets'])}"
        overrides = [s.format(data=root) for s in sets] + [
            f"storage.root={folder / 'warehouse'}",
            f"evaluation.output_dir={folder / 'reports'}",
            f"spark.checkpoint_dir={folder / 'checkpoints'}",
            "spark.ui_enabled=false",
        ]
        if "ML-100K" in name:
            folds = [f"u{i}" for i in range(1, ctx.sizes["quality_folds"] + 1)]
            overrides.append("evaluation.folds=" + "[" + ", ".join(f'"{f}"' for f in folds) + "]")
        if forced:
            overrides += _TUNE
        if ctx.quick:
            overrides += _QUICK
        start = time.perf_counter()
        out["datasets"][name] = quality_of(ctx, REPO / "conf" / config, overrides, ctx.quick)
        out["datasets"][name]["wall_s"] = time.perf_counter() - start
        out["datasets"][name]["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out["datasets"][name]["searches_forced"] = forced
        log.info("quality of %s: %s, %.0f s", name, out["datasets"][name]["means"], out["datasets"][name]["wall_s"])
    return out


def quality_of(ctx: BenchContext, config: Path, overrides: list[str], quick: bool) -> dict[str, Any]:
    """Ours and the peers on every split of one dataset config."""
    from recsys_spark import tables as T
    from recsys_spark.config.loader import load_config
    from recsys_spark.evaluation.scoring import evaluate_split, headline_values
    from recsys_spark.pipeline.evaluate import _splits
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.session import released_caches
    from recsys_spark.storage.store import TableStore

    spark = ctx.spark
    cfg = load_config(config, overrides)
    run_ingest(spark, cfg, RunContext.new("bench-quality", cfg))
    store = TableStore(spark, cfg.storage)
    inputs = {t: store.version(t) for t in (T.INTERACTION_MATRIX, T.USERS, T.ITEMS)}
    matrix = store.read(T.INTERACTION_MATRIX, version=inputs[T.INTERACTION_MATRIX]).persist()
    n_users = store.read(T.USERS).count()
    n_items = store.read(T.ITEMS).count()
    graded = matrix.where("rating IS NOT NULL").limit(1).count() > 0
    results: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    chosen: dict[str, list[dict[str, Any]]] = {}
    splits = []
    try:
        for split, _, train, test in _splits(spark, cfg, store, matrix, inputs):
            with released_caches(spark):
                train, test = train.persist(), test.persist()
                start = time.perf_counter()
                scored = evaluate_split(split, train, test, cfg, n_items=n_items, graded=graded)
                seconds["ours (every strategy, searches included)"] = (
                    seconds.get("ours (every strategy, searches included)", 0.0) + time.perf_counter() - start
                )
                results += scored.results
                splits.append(scored.meta)
                for model, meta in scored.models.items():
                    chosen.setdefault(model, []).append(meta.get("params", {}))
                for peer_name, rows, took, params in _peers(
                    spark, cfg, train, test, n_users, n_items, graded, quick, split
                ):
                    results += rows
                    seconds[peer_name] = seconds.get(peer_name, 0.0) + took
                    chosen.setdefault(peer_name, []).append(params)
                train.unpersist()
                test.unpersist()
    finally:
        matrix.unpersist()
    metric, k = cfg.evaluation.headline_metric, cfg.evaluation.headline_k
    means = headline_values(results, metric, k)
    peers = {m: v for m, v in means.items() if m.startswith(("implicit_", "numpy_"))}
    ours = {m: v for m, v in means.items() if m in cfg.candidates.strategies}
    best_peer = max(peers, key=peers.get) if peers else None
    best_ours = max(ours, key=ours.get) if ours else None
    return {
        "config": str(config.relative_to(REPO)),
        "metric": f"{metric}@{k}",
        "splits": splits,
        "means": means,
        "per_split": {
            f"{r['model']}|{r['split']}": r["value"] for r in results if r["metric"] == metric and r["k"] == k
        },
        "seconds": seconds,
        "best_ours": best_ours,
        "best_peer": best_peer,
        "ratio_to_best_peer": (ours[best_ours] / peers[best_peer]) if best_ours and best_peer else None,
        "chosen": chosen,
        "strategies": list(cfg.candidates.strategies),
    }


def _peers(
    spark: Any, cfg: Config, train: Any, test: Any, n_users: int, n_items: int, graded: bool, quick: bool, split: str
) -> list[tuple[str, list[dict[str, Any]], float, dict[str, Any]]]:
    """Every peer on one split: settings chosen on the validation carve-out, then scored on the test."""
    from recsys_spark.bench.peers import matrix_of, peers
    from recsys_spark.evaluation.baselines import item_popularity
    from recsys_spark.evaluation.scoring import SplitArrow, evaluated_users, score_lists
    from recsys_spark.tuning.search import carve_validation, validation_score

    validation = carve_validation(train, cfg)
    truth, users = evaluated_users(train, test, cfg)
    pop = item_popularity(train).persist()
    collected = SplitArrow(truth, pop)
    n_train_users = train.select("user_idx").distinct().count()
    cols = ["user_idx", "item_idx", "confidence"]
    full = matrix_of(train.select(*cols).toArrow(), n_users, n_items)
    fit = matrix_of(validation.fit.select(*cols).toArrow(), n_users, n_items)
    valid_users = np.array(sorted(r.user_idx for r in validation.users.select("user_idx").collect()), dtype=np.int64)
    test_users = np.array(sorted(r.user_idx for r in users.select("user_idx").collect()), dtype=np.int64)
    k_val, k_test = cfg.evaluation.headline_k, max(cfg.evaluation.ks)
    out = []
    try:
        for peer in peers(cfg.tuning.ease_l2, quick, cfg.tuning.ease_confidence):
            start = time.perf_counter()
            best, best_value = peer.grid[0], None
            if len(peer.grid) > 1:
                for params in peer.grid:
                    value = validation_score(_frame(spark, *peer.rank(fit, params, valid_users, k_val)), validation)
                    if value is not None and (best_value is None or value > best_value):
                        best, best_value = params, value
            lists = _frame(spark, *peer.rank(full, best, test_users, k_test))
            rows = score_lists(
                lists,
                truth,
                cfg,
                split=split,
                model=peer.name,
                n_items=n_items,
                popularity=pop,
                n_train_users=n_train_users,
                graded=graded,
                collected=collected,
            )
            took = time.perf_counter() - start
            log.info("peer %s on %s: %s (validation %s), %.1f s", peer.name, split, best, best_value, took)
            out.append((peer.name, rows, took, {**best, "validation": best_value}))
    finally:
        validation.release()
        for df in (truth, users, pop):
            df.unpersist()
    return out


def _frame(spark: Any, users: np.ndarray, items: np.ndarray, ranks: np.ndarray) -> Any:
    import pyarrow as pa

    table = pa.table(
        {
            "user_idx": pa.array(users.astype(np.int32)),
            "item_idx": pa.array(items.astype(np.int32)),
            "rank": pa.array(ranks.astype(np.int32)),
        }
    )
    return spark.createDataFrame(table)


def markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        "## Recommendation quality against single-machine peers",
        "",
        "Each dataset is ingested with its config under `conf/`; on every split every served strategy is "
        "scored from the lists `candidates` would write (models fitted on the training part, settings searched on a "
        "validation carve-out of it), and the peers are fitted on the same training part with their settings "
        "chosen on the same carve-out. Values are the mean over the splits; ratios compare against popularity "
        "and the best peer of the same run.",
        "",
    ]
    order = [n for n in DATASETS if n in s["datasets"]] + [n for n in s["datasets"] if n not in DATASETS]
    for name in order:
        d = s["datasets"][name]
        if "skipped" in d:
            lines += [f"### {name}", "", f"Skipped: {d['skipped']}.", ""]
            continue
        means, metric = d["means"], d["metric"]
        pop = means.get("popularity")
        best_peer = d["best_peer"]
        searched = (
            " with every search on (`make quality TUNE=1`), on each split's own validation carve-out"
            if d.get("searches_forced")
            else " as it ships (its own `tune` flags)"
        )
        lines += [
            f"### {name}",
            "",
            f"`{d['config']}`{searched}, {len(d['splits'])} split(s); {metric}.",
            "",
            f"| model | {metric} | × popularity | × best peer |",
            "|---|---|---|---|",
        ]
        order = (
            [m for m in d["strategies"] if m in means]
            + [m for m in means if m.startswith(("implicit_", "numpy_"))]
            + [m for m in ("popularity", "random") if m in means]
        )
        for model in order:
            kind = (
                " (peer)"
                if model.startswith(("implicit_", "numpy_"))
                else (" (baseline)" if model in ("popularity", "random") else "")
            )
            vs_pop = f"{means[model] / pop:.2f}" if pop else "-"
            vs_peer = f"{means[model] / means[best_peer]:.3f}" if best_peer else "-"
            bold = "**" if model == d["best_ours"] else ""
            lines.append(f"| {bold}{model}{bold}{kind} | {means[model]:.4f} | {vs_pop} | {vs_peer} |")
        ratio = d["ratio_to_best_peer"]
        if ratio is not None:
            verdict = "at or above" if ratio >= 1 else "**below**"
            lines += [
                "",
                f"Best served strategy `{d['best_ours']}` is {verdict} the best peer `{best_peer}`: {ratio:.3f}×.",
            ]
        when = f" Measured {d['measured']}." if d.get("measured") else ""
        lines += [
            "",
            "Time per model over all splits: "
            + ", ".join(f"{m} {t:.0f} s" for m, t in d["seconds"].items())
            + "."
            + when,
            "",
        ]
    return lines
