"""Self-contained HTML report of one evaluation run, rendered from the ``evaluation.json`` dict.

No Spark here: the evaluation job writes ``evaluation.json`` and this module only reads the dict, so a
report can be re-rendered anywhere (a laptop, CI) from the file alone. The HTML has no external URLs,
fonts or scripts; plots are embedded as base64 PNG, drawn with matplotlib's Agg canvas (headless, and
no pyplot global state, so concurrent renders do not share figures).

Input contract (the content of ``evaluation.json``)::

    {
      "run_id": "20261123T170000Z-abcd1234",
      "created_at": "2026-11-23T17:00:00+00:00",
      "dataset": "synthetic",                        # free text
      "ks": [5, 10, 20, 50, 100],
      "headline": {"metric": "ndcg", "k": 10},
      "splits": [{"name": "u1", "kind": "given|random|time|leave_last", "params": {...},
                  "train_rows": 80000, "test_rows": 20000, "test_users": 459}, ...],
      "models": {"als": {"kind": "model", "model_version": "als-...", "params": {...}},
                 "popularity": {"kind": "baseline", ...}, ...},
      "results": [{"split": "u1", "model": "als", "metric": "ndcg", "k": 10, "value": 0.1234}, ...],
          # metrics: precision, recall, ndcg, ndcg_graded (optional), map, mrr, hit_rate, coverage, gini,
          # novelty, ild (optional), and rating errors rmse / mae with k = 0 (optional, explicit models only)
      "flags": ["model 'x' does not beat most-popular on ndcg@10 (0.01 vs 0.02)"],   # may be empty
      "popularity": {"n_items": 1682, "n_interactions": 80000, "item_counts_desc": [583, 509, ...],
                     "item_rank": [1, 2, ...]},     # item_rank only when the curve is downsampled
      "input_versions": {"interaction_matrix": 3, "users": 0},
      "config": {...}                                # nested dict of the parameters used
    }

Only ``results`` is required; every other section renders as "not recorded" when missing. Across
splits a cell shows mean ± sample standard deviation (ddof = 1); with one value it shows the value.

The report, in order: run header and splits, flags, headline table (metrics at k = 10, or the
headline k when 10 was not evaluated), metric-vs-k small multiples, long tail (popularity curve and
coverage per model), and every parameter (splits, models, input versions, config).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from recsys_spark.evaluation.summary import LOWER_IS_BETTER, EvaluationDocument, beats, mean_std

matplotlib.use("Agg")  # headless: never try to open a display

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RANKING_METRICS = ("precision", "recall", "ndcg", "ndcg_graded", "map", "mrr", "hit_rate")
"""Panels of the metric-vs-k figure, in this order (ndcg_graded only when evaluated)."""

TOP_K_COLUMNS = (
    "ndcg",
    "ndcg_graded",
    "precision",
    "recall",
    "map",
    "mrr",
    "hit_rate",
    "coverage",
    "gini",
    "novelty",
    "ild",
)
"""Headline-table metrics taken at the headline-table k; optional ones drop out when absent."""

RATING_COLUMNS = ("rmse", "mae")
"""Rating-error metrics, recorded with k = 0 (explicit models only)."""


HEAD_SHARE = 0.2
"""The "head" of the catalogue: the most popular items that together make this share of interactions."""

_MODEL_COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
)
_BASELINE_GREYS = ("#555555", "#999999", "#777777", "#bbbbbb")
_BASELINE_DASHES = ("--", ":", "-.", (0, (5, 1, 1, 1)))

_CSS = """
:root { --fg: #1d2125; --muted: #5f6b76; --line: #c9d1d9; --head: #f3f5f7; --warn-bg: #fff4e5;
        --warn-line: #e8a33d; --ok-bg: #edf7ed; --ok-line: #5aa35e; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg); line-height: 1.45; font-size: 15px;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
       "Liberation Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 20px 0 8px; }
p.note, .muted { color: var(--muted); font-size: 0.9em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 12px; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
thead th { background: var(--head); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.headline td.best { font-weight: 700; }
table.headline .sd { display: block; font-size: 0.85em; color: var(--muted); }
table.headline th .at { display: block; font-weight: 400; font-size: 0.85em; color: var(--muted); }
table.headline th, table.headline td { padding: 4px 7px; }
.scroll { overflow-x: auto; }
table.headline td.beats { background: var(--warn-bg); }
table.headline th.headline-metric, table.headline td.headline-metric { background: #eef4fb; }
table.headline tr.baseline td:first-child { color: var(--muted); }
.badge { display: inline-block; font-size: 0.75em; padding: 0 6px; margin-left: 6px; border-radius: 8px;
         border: 1px solid var(--line); color: var(--muted); background: var(--head); vertical-align: 1px; }
.box { border: 1px solid; border-left-width: 6px; border-radius: 4px; padding: 10px 14px; margin: 8px 0; }
.box.warn { background: var(--warn-bg); border-color: var(--warn-line); }
.box.ok { background: var(--ok-bg); border-color: var(--ok-line); }
.box ul { margin: 4px 0 0; padding-left: 20px; }
.box strong { display: block; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.88em; margin-top: 4px; }
pre { background: var(--head); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      font-size: 0.85em; margin: 0; }
table.kv { margin: 0; } table.kv th { background: var(--head); font-weight: 600; white-space: nowrap; }
table.kv table.kv { font-size: 1em; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class Summary:
    """One metric of one model at one k, across splits."""

    mean: float
    std: float | None  # None with a single value: nothing to spread
    n: int


# --------------------------------------------------------------------------------------------- data


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _is_baseline(models: Mapping[str, Any], name: str) -> bool:
    spec = models.get(name)
    return isinstance(spec, Mapping) and spec.get("kind") == "baseline"


def model_order(evaluation: EvaluationDocument) -> list[str]:
    """Model names, models first then baselines, each in recorded order (models only seen in results last)."""
    models = evaluation.get("models") or {}
    names = list(models)
    for row in evaluation.get("results") or []:
        if str(row["model"]) not in names:
            names.append(str(row["model"]))
    return [n for n in names if not _is_baseline(models, n)] + [n for n in names if _is_baseline(models, n)]


def _check_results(results: Any) -> list[Mapping[str, Any]]:
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
        raise ValueError("evaluation['results'] must be a list of {split, model, metric, k, value} rows")
    for i, row in enumerate(results):
        missing = [
            key for key in ("split", "model", "metric", "k", "value") if not isinstance(row, Mapping) or key not in row
        ]
        if missing:
            raise ValueError(f"evaluation['results'][{i}] lacks {', '.join(missing)}: {row!r}")
    return list(results)


def summarize_results(results: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, int], Summary]:
    """(model, metric, k) -> mean and sample std across splits; null and non-finite values are left out."""
    values: dict[tuple[str, str, int], list[float]] = {}
    for row in results:
        value = row["value"]
        if value is None or not math.isfinite(float(value)):
            log.warning(
                "skipping undefined %s@%s of %s on split %s", row["metric"], row["k"], row["model"], row["split"]
            )
            continue
        values.setdefault((str(row["model"]), str(row["metric"]), int(row["k"])), []).append(float(value))
    return {key: Summary(*mean_std(v), len(v)) for key, v in values.items()}


def evaluated_ks(evaluation: EvaluationDocument, summary: Mapping[tuple[str, str, int], Summary]) -> list[int]:
    """The cutoffs of the run: ``ks`` when recorded, else every k > 0 seen in the results."""
    ks = evaluation.get("ks") or sorted({k for _, _, k in summary if k > 0})
    return sorted(int(k) for k in ks)


def headline_metric(evaluation: EvaluationDocument) -> tuple[str, int]:
    """(metric, k) the run is judged on; ndcg@10 when not recorded."""
    head = evaluation.get("headline") or {}
    return str(head.get("metric", "ndcg")), int(head.get("k", 10))


def table_k(evaluation: EvaluationDocument, ks: Sequence[int]) -> int:
    """k of the headline table: 10 when evaluated (comparable across runs), else the headline k."""
    return 10 if 10 in ks or not ks else headline_metric(evaluation)[1]


def format_value(x: float) -> str:
    """4 decimals in the usual range; 3 significant figures for tiny or huge values (4 decimals would hide them)."""
    if x == 0:
        return "0.0000"  # not "0": it would stand out in a column of 4-decimal numbers
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.4f}"
    return f"{x:.3g}"


def format_summary(s: Summary) -> str:
    """``mean ± std`` across splits, or the plain value for one split."""
    return format_value(s.mean) if s.std is None else f"{format_value(s.mean)} ± {format_value(s.std)}"


def _summary_cell(s: Summary) -> str:
    # the std goes on its own line: a dozen "0.1234 ± 0.0056" columns side by side overflow the page
    if s.std is None:
        return format_value(s.mean)
    return f'{format_value(s.mean)} <span class="sd">± {format_value(s.std)}</span>'


def best_models(values: Mapping[str, float], metric: str) -> set[str]:
    """The models holding the best value of ``metric`` (all of them on a tie)."""
    if not values:
        return set()
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(values.values())
    return {m for m, v in values.items() if math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)}


def head_items(counts: np.ndarray, ranks: np.ndarray | None, share: float = HEAD_SHARE) -> tuple[float, bool]:
    """How many of the most popular items make ``share`` of all interactions; and whether it is estimated.

    A downsampled curve (``ranks`` given) is integrated with the trapezoid rule between sampled ranks,
    so the answer is an estimate.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.size == 0 or counts.sum() <= 0:
        return 0.0, False
    if ranks is None:
        cum = np.cumsum(counts)
        return float(np.searchsorted(cum, share * cum[-1]) + 1), False
    ranks = np.asarray(ranks, dtype=float)
    segment = np.diff(ranks) * (counts[1:] + counts[:-1]) / 2  # items strictly after each sampled rank
    cum = np.concatenate([[counts[0] * ranks[0]], counts[0] * ranks[0] + np.cumsum(segment)])
    target = share * cum[-1]
    return float(np.interp(target, cum, ranks)), True


# -------------------------------------------------------------------------------------------- plots


def _plain(label: str) -> str:
    # "$" would switch matplotlib to mathtext and can raise on model names such as "a$b$c"
    return label.replace("$", r"\$")


def _png_data_uri(fig: Figure, dpi: int = 150) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str, caption: str) -> str:
    # displayed at 100 css px per inch, rendered at 150 dpi so it stays sharp on high-density screens
    width = round(fig.get_figwidth() * 100)
    return (
        f'<figure><img src="{_png_data_uri(fig)}" width="{width}" alt="{_esc(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _model_styles(names: Sequence[str], models: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Matplotlib line style per model: colours for models, dashed greys for baselines."""
    styles, n_model, n_base = {}, 0, 0
    for name in names:
        if _is_baseline(models, name):
            styles[name] = {
                "color": _BASELINE_GREYS[n_base % len(_BASELINE_GREYS)],
                "linestyle": _BASELINE_DASHES[n_base % len(_BASELINE_DASHES)],
                "marker": "s",
            }
            n_base += 1
        else:
            styles[name] = {"color": _MODEL_COLORS[n_model % len(_MODEL_COLORS)], "linestyle": "-", "marker": "o"}
            n_model += 1
    return styles


def _grid_shape(n: int) -> tuple[int, int]:
    ncols = min(n, 4 if n in (4, 7, 8) else 3)
    return math.ceil(n / ncols), ncols


def metric_vs_k_figure(
    summary: Mapping[tuple[str, str, int], Summary],
    names: Sequence[str],
    models: Mapping[str, Any],
    marked_k: int | None,
) -> Figure | None:
    """Small multiples, one panel per ranking metric: value against k, a line per model, ± std as error bars."""
    metrics = [m for m in RANKING_METRICS if any(key[1] == m and key[2] > 0 for key in summary)]
    if not metrics:
        return None
    nrows, ncols = _grid_shape(len(metrics))
    fig = Figure(figsize=(12.4 if ncols >= 3 else 4.2 * ncols, 2.6 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = _model_styles(names, models)
    handles: dict[str, Any] = {}
    spread = any(s.std is not None for s in summary.values())
    for ax, metric in zip(axes, metrics):
        for i, name in enumerate(names):
            points = sorted((k, s) for (m, met, k), s in summary.items() if m == name and met == metric and k > 0)
            if not points:
                continue
            ks = np.array([k for k, _ in points], dtype=float)
            if spread:  # nudge models apart along the log axis so error bars at the same k do not hide each other
                ks = ks * (1 + 0.025 * (i - (len(names) - 1) / 2))
            means = [s.mean for _, s in points]
            stds = [s.std if s.std is not None else 0.0 for _, s in points]
            has_spread = any(s.std is not None for _, s in points)
            line = ax.errorbar(
                ks,
                means,
                yerr=stds if has_spread else None,
                capsize=2.5,
                markersize=4,
                linewidth=1.5,
                elinewidth=1,
                label=_plain(name),
                **styles[name],
            )
            handles.setdefault(name, line)
        _decorate_k_axis(ax, summary, metric, marked_k)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.legend(
        [handles[n] for n in names if n in handles],
        [_plain(n) + (" (baseline)" if _is_baseline(models, n) else "") for n in names if n in handles],
        loc="outside upper center",
        ncol=min(len(handles), 6),
        frameon=False,
        fontsize=9,
    )
    return fig


def _decorate_k_axis(
    ax: Axes, summary: Mapping[tuple[str, str, int], Summary], metric: str, marked_k: int | None
) -> None:
    ks = sorted({k for (_, met, k) in summary if met == metric and k > 0})
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    if marked_k in ks:
        ax.axvline(marked_k, color="#cccccc", linewidth=0.8, zorder=0)
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel("k", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, axis="y", color="#eeeeee")
    ax.set_ylim(bottom=0)


def long_tail_figure(
    popularity: Mapping[str, Any] | None,
    coverage: Mapping[str, float],
    coverage_k: int | None,
    names: Sequence[str],
    models: Mapping[str, Any],
) -> tuple[Figure | None, str]:
    """Popularity curve with its head shaded, next to catalogue coverage per model; and a caption."""
    counts = np.asarray((popularity or {}).get("item_counts_desc") or [], dtype=float)
    panels = int(counts.size > 0) + int(bool(coverage))
    if panels == 0:
        return None, ""
    fig = Figure(figsize=(12.4 if panels == 2 else 7, 3.8), layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False, width_ratios=[1.25, 1][:panels]).ravel())
    caption, head_share = [], None
    if counts.size:
        ranks = popularity.get("item_rank")
        n_items = int(popularity.get("n_items") or (ranks[-1] if ranks else counts.size))
        head, estimated = head_items(counts, np.asarray(ranks, dtype=float) if ranks else None)
        head_share = head / n_items if n_items else None
        _draw_popularity(axes.pop(0), counts, ranks, head, head_share, n_items)
        approx = "≈ " if estimated else ""
        if head_share is not None:
            caption.append(
                f"The {approx}{head:,.0f} most popular items ({approx}{head_share:.1%} of the {n_items:,} "
                f"items) make {HEAD_SHARE:.0%} of the training interactions."
            )
        if estimated:
            caption.append("The popularity curve is downsampled; the head size is interpolated.")
    if coverage:
        _draw_coverage(axes.pop(0), coverage, coverage_k, head_share, names, models)
        caption.append(
            f"Coverage@{coverage_k}: share of the catalogue recommended to at least one test user; "
            "a model left of the dotted line recommends fewer distinct items than the head holds."
        )
    return fig, " ".join(_esc(c) for c in caption)


def _draw_popularity(
    ax: Axes, counts: np.ndarray, ranks: Sequence[int] | None, head: float, head_share: float | None, n_items: int
) -> None:
    x = np.asarray(ranks, dtype=float) if ranks else np.arange(1, counts.size + 1, dtype=float)
    positive = counts > 0  # items never interacted with have no place on a log axis
    x, y = x[positive], counts[positive]
    ax.plot(x, y, color="#444444", linewidth=1.3)
    in_head = x <= head
    ax.fill_between(
        x, y, where=in_head, color="#e8a33d", alpha=0.55, linewidth=0, label=f"head: {HEAD_SHARE:.0%} of interactions"
    )
    in_tail = ~in_head
    if in_head.any():
        in_tail[np.flatnonzero(in_head)[-1]] = True  # share the boundary point, or a gap shows between the fills
    ax.fill_between(x, y, where=in_tail, color="#c9d1d9", alpha=0.6, linewidth=0, label="long tail")
    ax.axvline(max(head, 1), color="#b36b00", linewidth=0.9, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1, max(n_items, x[-1] if x.size else 1))
    ax.set_xlabel("item popularity rank", fontsize=9)
    ax.set_ylabel("training interactions", fontsize=9)
    ax.set_title("Training popularity (log-log)", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", color="#eeeeee")
    if head_share is not None:
        ax.annotate(
            f"head = {head:,.0f} items\n({head_share:.1%} of catalogue)",
            xy=(max(head, 1), y[0] if y.size else 1),
            xytext=(8, -4),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color="#7a4a00",
        )
    ax.legend(fontsize=8, loc="upper right")


def _draw_coverage(
    ax: Axes,
    coverage: Mapping[str, float],
    k: int | None,
    head_share: float | None,
    names: Sequence[str],
    models: Mapping[str, Any],
) -> None:
    shown = [n for n in names if n in coverage]
    styles = _model_styles(names, models)
    y = np.arange(len(shown))[::-1]
    values = [coverage[n] for n in shown]
    bars = ax.barh(y, values, color=[styles[n]["color"] for n in shown], height=0.6, hatch=None, edgecolor="white")
    for bar, name in zip(bars, shown):
        if _is_baseline(models, name):
            bar.set_hatch("///")
            bar.set_alpha(0.7)
    ax.set_yticks(y, [_plain(n) + (" (baseline)" if _is_baseline(models, n) else "") for n in shown], fontsize=8)
    top = max([*values, head_share or 0.0, 1e-9])
    xmax = min(1.0, top * 1.3) if top <= 1 else top * 1.3
    ax.set_xlim(0, xmax)
    for yi, v in zip(y, values):
        inside = v > 0.8 * xmax  # a label right of a long bar would leave the axes
        ax.text(
            v,
            yi,
            f"{format_value(v)} " if inside else f" {format_value(v)}",
            va="center",
            fontsize=8,
            ha="right" if inside else "left",
            color="white" if inside else "black",
            bbox={"facecolor": "#555555", "edgecolor": "none", "pad": 1} if inside else None,
        )
    if head_share is not None:
        ax.axvline(head_share, color="#b36b00", linestyle=":", linewidth=1.2)
        ax.text(head_share, len(shown) - 0.45, f" head {head_share:.1%}", fontsize=8, color="#7a4a00", va="bottom")
    ax.set_ylim(-0.6, len(shown) - 0.1)
    ax.set_title(f"Catalogue coverage@{k}", fontsize=10)
    ax.set_xlabel("share of items recommended", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", color="#eeeeee")


# --------------------------------------------------------------------------------------------- html


def _section_header(evaluation: EvaluationDocument, head: tuple[str, int]) -> str:
    missing = "not recorded"
    meta = [
        ("run id", evaluation.get("run_id", missing)),
        ("dataset", evaluation.get("dataset", missing)),
        ("created at", evaluation.get("created_at", missing)),
        ("headline", f"{head[0]}@{head[1]}"),
        ("ks", ", ".join(str(k) for k in evaluation.get("ks") or []) or "not recorded"),
    ]
    rows = "".join(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>" for key, value in meta)
    title = f"Evaluation report: {evaluation.get('dataset', 'unnamed dataset')}"
    return f'<header><h1>{_esc(title)}</h1><dl class="meta">{rows}</dl></header>' + _splits_table(evaluation)


def _int_cell(value: Any) -> str:
    return f'<td class="num">{value:,}</td>' if isinstance(value, int) else f'<td class="num">{_esc(value)}</td>'


def _splits_table(evaluation: EvaluationDocument) -> str:
    splits = evaluation.get("splits") or []
    if not splits:
        return '<p class="note">Splits: not recorded.</p>'
    rows = "".join(
        f"<tr><td>{_esc(s.get('name', '?'))}</td><td>{_esc(s.get('kind', '?'))}</td>"
        + "".join(_int_cell(s.get(key, "—")) for key in ("train_rows", "test_rows", "test_users"))
        + "</tr>"
        for s in splits
    )
    word = "split" if len(splits) == 1 else "splits"
    return (
        f'<h3>{len(splits)} {word}</h3><table><thead><tr><th>split</th><th>kind</th><th class="num">train rows'
        f'</th><th class="num">test rows</th><th class="num">test users</th></tr></thead><tbody>{rows}'
        "</tbody></table>"
    )


def _section_flags(evaluation: EvaluationDocument, head: tuple[str, int]) -> str:
    flags = evaluation.get("flags") or []
    if not flags:
        return (
            f'<h2>Flags</h2><div class="box ok" role="status"><strong>No flags.</strong>Every model beats '
            f"most-popular on {_esc(head[0])}@{head[1]}.</div>"
        )
    items = "".join(f"<li>{_esc(f)}</li>" for f in flags)
    word = "flag" if len(flags) == 1 else "flags"
    return (
        f'<h2>Flags</h2><div class="box warn" role="alert"><strong>⚠ {len(flags)} {word}</strong><ul>{items}</ul></div>'
    )


def headline_columns(summary: Mapping[tuple[str, str, int], Summary], k: int) -> list[tuple[str, int]]:
    """(metric, k) columns of the headline table that have at least one value."""
    present = {(met, kk) for (_, met, kk) in summary}
    return [(m, k) for m in TOP_K_COLUMNS if (m, k) in present] + [(m, 0) for m in RATING_COLUMNS if (m, 0) in present]


def _section_headline(
    summary: Mapping[tuple[str, str, int], Summary],
    names: Sequence[str],
    models: Mapping[str, Any],
    k: int,
    head: tuple[str, int],
    n_splits: int,
) -> str:
    columns = headline_columns(summary, k)
    if not columns:
        return f'<h2>Headline metrics @{k}</h2><p class="note">No metric was evaluated at k = {k}.</p>'
    contenders = [n for n in names if not _is_baseline(models, n)] or list(names)
    best: dict[tuple[str, int], set[str]] = {}
    for col in columns:
        best[col] = best_models({n: summary[(n, *col)].mean for n in contenders if (n, *col) in summary}, col[0])
    # "@k" and the direction on a second header line keep a dozen columns within the page width
    header = "".join(
        f'<th class="num{" headline-metric" if col == head else ""}">{_esc(col[0])}<span class="at">'
        f"{'@' + str(col[1]) if col[1] else ''} {'↓' if col[0] in LOWER_IS_BETTER else '↑'}</span></th>"
        for col in columns
    )
    rows = []
    for name in names:
        baseline = _is_baseline(models, name)
        label = _esc(name) + ('<span class="badge">baseline</span>' if baseline else "")
        cells = []
        for col in columns:
            s = summary.get((name, *col))
            classes = ["num"] + (["headline-metric"] if col == head else [])
            if s is None:
                cells.append(f'<td class="{" ".join(classes)}">—</td>')
                continue
            if name in best[col]:  # best is taken over models only, unless there are nothing but baselines
                classes.append("best")
            elif baseline and best[col] and beats(s.mean, summary[(next(iter(best[col])), *col)].mean, col[0]):
                classes.append("beats")
            cells.append(f'<td class="{" ".join(classes)}">{_summary_cell(s)}</td>')
        rows.append(f'<tr class="{"baseline" if baseline else "model"}"><td>{label}</td>{"".join(cells)}</tr>')
    spread = f"mean ± sample standard deviation across the {n_splits} splits" if n_splits > 1 else "one split"
    return (
        f"<h2>Headline metrics @{k}</h2>"
        f'<div class="scroll"><table class="headline"><thead><tr><th>model</th>{header}</tr></thead><tbody>'
        f'{"".join(rows)}</tbody></table></div><p class="note">Values: {spread}. '
        "↑ higher is better, ↓ lower is better. <b>Bold</b>: best model per column (baselines excluded); "
        "shaded: a baseline better than every model. rmse/mae are rating errors (k = 0), for explicit models "
        "only; — means not evaluated.</p>"
    )


def _section_metric_vs_k(
    summary: Mapping[tuple[str, str, int], Summary],
    names: Sequence[str],
    models: Mapping[str, Any],
    k: int,
    n_splits: int,
) -> str:
    fig = metric_vs_k_figure(summary, names, models, k)
    if fig is None:
        return '<h2>Metrics against k</h2><p class="note">No ranking metric was evaluated.</p>'
    bars = (
        "Error bars: standard deviation across splits; points are nudged sideways so that overlapping bars stay "
        "visible. "
        if n_splits > 1
        else ""
    )
    return "<h2>Metrics against k</h2>" + _img(
        fig,
        "ranking metrics against k, one line per model",
        f"{bars}Baselines are grey and dashed; the vertical line marks k = {k}.",
    )


def _section_long_tail(
    evaluation: EvaluationDocument,
    summary: Mapping[tuple[str, str, int], Summary],
    names: Sequence[str],
    models: Mapping[str, Any],
    ks: Sequence[int],
) -> str:
    coverage_ks = sorted(k for (_, met, k) in summary if met == "coverage" and k > 0)
    coverage_k = max(ks) if ks and max(ks) in coverage_ks else (coverage_ks[-1] if coverage_ks else None)
    coverage = {n: summary[(n, "coverage", coverage_k)].mean for n in names if (n, "coverage", coverage_k) in summary}
    fig, caption = long_tail_figure(evaluation.get("popularity"), coverage, coverage_k, names, models)
    if fig is None:
        return '<h2>Long tail</h2><p class="note">Neither the popularity curve nor coverage was recorded.</p>'
    return "<h2>Long tail</h2>" + _img(fig, "training popularity curve and catalogue coverage per model", caption)


def churn_figure(churn: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Share of users whose top 10 changed, and mean rank-biased overlap, at each recent
    publication, one line per strategy; None when no publication measured churn yet."""
    if not churn:
        return None
    fig = Figure(figsize=(12.4, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for strategy in sorted({str(r["strategy"]) for r in churn}):
        rows = sorted((r for r in churn if r["strategy"] == strategy), key=lambda r: r["seq"])
        seqs = [r["seq"] for r in rows]
        left.plot(seqs, [r["changed_users"] for r in rows], marker="o", label=_plain(strategy))
        right.plot(seqs, [r["mean_rbo"] for r in rows], marker="o", label=_plain(strategy))
    for ax, title in ((left, "users whose top 10 changed"), (right, "mean rank-biased overlap (p = 0.9)")):
        ax.set_title(title)
        ax.set_xlabel("publication")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    left.legend(loc="best", fontsize="small")
    return fig


def _section_churn(evaluation: EvaluationDocument) -> str:
    fig = churn_figure(evaluation.get("churn") or [])
    if fig is None:
        return (
            '<h2>Churn</h2><p class="note">No churn recorded yet: each publish measures it against the '
            "publication before (recsys-spark publish, the nightly job's last stage).</p>"
        )
    caption = (
        "At each publication, against the one before: the share of users whose served top 10 changed "
        "(other items or another order), and the mean rank-biased overlap of the two top 10s "
        "(1: identical, 0: disjoint). This run's own lists are published after it, so they show from "
        "the next report on."
    )
    return "<h2>Churn</h2>" + _img(fig, "churn of the served lists at recent publications", _esc(caption))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return _esc(value)
    return f'<span class="mono">{_esc(json.dumps(value, default=str))}</span>'


def nested_table(value: Any, depth: int = 0) -> str:
    """A nested mapping as nested key/value tables; lists of scalars inline, anything deeper as JSON."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">(empty)</span>'
        if depth >= 6:  # deeper nesting reads better as JSON than as ever narrower tables
            return f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{nested_table(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in value):
            return "[" + ", ".join(_scalar(v) for v in value) + "]"
        return f"<pre>{_esc(json.dumps(value, indent=2, default=str))}</pre>"
    return _scalar(value)


def _section_parameters(evaluation: EvaluationDocument) -> str:
    parts = ["<h2>Parameters</h2>"]
    splits = evaluation.get("splits") or []
    if splits:
        rows = "".join(
            f"<tr><td>{_esc(s.get('name', '?'))}</td><td>{_esc(s.get('kind', '?'))}</td>"
            f"<td>{nested_table(s.get('params') or {})}</td></tr>"
            for s in splits
        )
        parts.append(
            f"<h3>Splits</h3><table><thead><tr><th>split</th><th>kind</th><th>params</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    models = evaluation.get("models") or {}
    if models:
        rows = "".join(
            f"<tr><td>{_esc(name)}</td><td>{_esc(spec.get('kind', '?'))}</td>"
            f'<td class="mono">{_esc(spec.get("model_version", "—"))}</td>'
            f"<td>{nested_table(spec.get('params') or {})}</td></tr>"
            for name, spec in (
                (n, models[n] if isinstance(models[n], Mapping) else {}) for n in model_order(evaluation) if n in models
            )
        )
        parts.append(
            f"<h3>Models</h3><table><thead><tr><th>model</th><th>kind</th><th>version</th><th>params</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    for key, title in (("input_versions", "Input table versions"), ("config", "Configuration")):
        content = evaluation.get(key)
        parts.append(f"<h3>{title}</h3>" + (nested_table(content) if content else '<p class="note">not recorded</p>'))
    return "".join(parts)


def render_html(evaluation: EvaluationDocument) -> str:
    """The report as one HTML string (see the module docstring for the input contract)."""
    if not isinstance(evaluation, Mapping):
        raise ValueError(f"evaluation must be a mapping (the content of evaluation.json), not {type(evaluation)}")
    results = _check_results(evaluation.get("results"))
    summary = summarize_results(results)
    models = evaluation.get("models") or {}
    names = model_order(evaluation)
    ks = evaluated_ks(evaluation, summary)
    head = headline_metric(evaluation)
    k = table_k(evaluation, ks)
    n_splits = len(evaluation.get("splits") or []) or len({row["split"] for row in results})
    body = "".join(
        [
            _section_header(evaluation, head),
            _section_flags(evaluation, head),
            _section_headline(summary, names, models, k, head, n_splits),
            _section_metric_vs_k(summary, names, models, k, n_splits),
            _section_long_tail(evaluation, summary, names, models, ks),
            _section_churn(evaluation),
            _section_parameters(evaluation),
        ]
    )
    title = f"Evaluation {evaluation.get('run_id', '')} ({evaluation.get('dataset', '')})"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def render_report(evaluation: EvaluationDocument, path: str | Path) -> Path:
    """Write a self-contained HTML report (no external URLs, fonts or scripts; plots embedded as base64 PNG or inline
    SVG) for one evaluation run; returns the path."""
    path = Path(path)
    text = render_html(evaluation)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    log.info(
        "evaluation report for run %s: %s (%d models, %d result rows, %.0f kB)",
        evaluation.get("run_id"),
        path,
        len(model_order(evaluation)),
        len(evaluation.get("results") or []),
        len(text) / 1024,
    )
    return path
