"""Evaluation HTML report: self-contained, right numbers in the headline table, escaped strings, robust inputs."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys_spark.dev import screenshot as shots
from recsys_spark.dev.screenshot import screenshot
from recsys_spark.evaluation.report import format_value, head_items, render_report

EVIL = "<script>alert('x')</script>"
MODELS = ("als", "als_explicit", "popularity", "random")
RANKING = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
BEYOND = ("coverage", "gini", "novelty", "ild")


def _value(model: str, metric: str, k: int, split: int) -> float:
    """Plausible made-up metric values: als > als_explicit > popularity > random on accuracy."""
    strength = {"als": 1.0, "als_explicit": 0.8, "popularity": 0.6, "random": 0.05}[model]
    noise = 0.01 * (split + 1) * (MODELS.index(model) + 1)
    if metric in RANKING:
        return round(min(1.0, strength * 0.1 * (1 + np.log(k)) + noise), 4)
    spread = {"als": 0.3, "als_explicit": 0.25, "popularity": 0.01, "random": 0.95}[model]
    return {
        "coverage": spread * min(1.0, k / 20),
        "gini": 1 - spread,
        "novelty": 5 + 6 * spread + noise,
        "ild": 0.4 + spread / 2,
    }[metric]


def _evaluation(n_splits: int = 2) -> dict[str, Any]:
    splits = [
        {
            "name": f"u{s + 1}",
            "kind": "random",
            "params": {"test_fraction": 0.2, "seed": s},
            "train_rows": 80_000,
            "test_rows": 20_000,
            "test_users": 459 + s,
        }
        for s in range(n_splits)
    ]
    results = []
    for s, split in enumerate(splits):
        for model in MODELS:
            for k in (5, 10, 20):
                for metric in RANKING + BEYOND:
                    results.append(
                        {
                            "split": split["name"],
                            "model": model,
                            "metric": metric,
                            "k": k,
                            "value": _value(model, metric, k, s),
                        }
                    )
        results += [
            {"split": split["name"], "model": "als_explicit", "metric": "rmse", "k": 0, "value": 0.91 + s / 50},
            {"split": split["name"], "model": "als_explicit", "metric": "mae", "k": 0, "value": 0.72 + s / 50},
        ]
    # the cell checked by hand: mean 0.43, sample std 0.01414 across the two splits
    for row in results:
        if (row["model"], row["metric"], row["k"]) == ("als", "ndcg", 10):
            row["value"] = [0.42, 0.44][int(row["split"][1:]) - 1]
    counts = sorted((int(1000 / r**0.9) for r in range(1, 1683)), reverse=True)
    return {
        "run_id": "20261123T170000Z-abcd1234",
        "created_at": "2026-11-23T17:00:00+00:00",
        "dataset": "synthetic & <friends>",
        "ks": [5, 10, 20],
        "headline": {"metric": "ndcg", "k": 10},
        "splits": splits,
        "models": {
            "als": {"kind": "model", "model_version": "als-20261123T160000Z", "params": {"rank": 64, "note": EVIL}},
            "als_explicit": {
                "kind": "model",
                "model_version": "als-explicit-1",
                "params": {"rank": 32, "feedback": "explicit"},
            },
            "popularity": {"kind": "baseline", "params": {}},
            "random": {"kind": "baseline", "params": {"seed": 7}},
        },
        "results": results,
        "flags": [f"model 'random' does not beat most-popular on ndcg@10 {EVIL}"],
        "popularity": {"n_items": 1682, "n_interactions": sum(counts), "item_counts_desc": counts},
        "input_versions": {"interaction_matrix": 3, "users": 0},
        "config": {
            "evaluate": {"ks": [5, 10, 20], "split": {"kind": "random", "test_fraction": 0.2}},
            "als": {"rank": 64, "reg_param": 0.1},
        },
    }


class _Tables(HTMLParser):
    """Cells (text and classes) of every <table class="headline"> row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str]]] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._cls = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and "headline" in (a.get("class") or ""):
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell, self._cls = [], a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), self._cls))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _headline(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """model -> column header -> (cell text, cell classes)."""
    parser = _Tables()
    parser.feed(text)
    header = [h.split()[0] for h, _ in parser.rows[0]]
    return {row[0][0].removesuffix("baseline"): dict(zip(header[1:], row[1:])) for row in parser.rows[1:]}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    assert render_report(_evaluation(), path) == path
    assert path.is_file()
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained(rendered: str) -> None:
    assert rendered.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rendered, re.I)
    assert "http://" not in rendered and "https://" not in rendered
    assert "url(" not in rendered and "@import" not in rendered


def test_two_embedded_png_figures(rendered: str) -> None:
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', rendered)
    assert len(images) == rendered.count("data:image/png;base64,") == 2  # metric-vs-k, long tail
    assert "<svg" not in rendered
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_sections_in_order(rendered: str) -> None:
    headings = re.findall(r"<h2>(.*?)</h2>", rendered)
    assert [h.split()[0] for h in headings] == ["Flags", "Headline", "Metrics", "Long", "Churn", "Parameters"]
    assert rendered.index("<h1>") < rendered.index("<h2>Flags")
    assert "20261123T170000Z-abcd1234" in rendered and "2026-11-23T17:00:00+00:00" in rendered
    assert "synthetic &amp; &lt;friends&gt;" in rendered
    assert "80,000" in rendered and "459" in rendered and "460" in rendered  # splits: rows and test users


def test_headline_table_values(rendered: str) -> None:
    table = _headline(rendered)
    assert list(table) == ["als", "als_explicit", "popularity", "random"]  # models first, then baselines
    cols = list(table["als"])
    assert cols == [
        "ndcg@10",
        "precision@10",
        "recall@10",
        "map@10",
        "mrr@10",
        "hit_rate@10",
        "coverage@10",
        "gini@10",
        "novelty@10",
        "ild@10",
        "rmse",
        "mae",
    ]
    assert table["als"]["ndcg@10"][0] == "0.4300 ± 0.0141"  # mean of 0.42, 0.44; sample std 0.02 / sqrt(2)
    assert "best" in table["als"]["ndcg@10"][1]
    assert "best" not in table["als_explicit"]["ndcg@10"][1]
    # gini: lower is better; random (a baseline) is lowest but the bold goes to the best model
    assert "best" in table["als"]["gini@10"][1] and "best" not in table["random"]["gini@10"][1]
    assert "beats" in table["random"]["gini@10"][1]
    assert table["als_explicit"]["rmse"][0] == "0.9200 ± 0.0141" and "best" in table["als_explicit"]["rmse"][1]
    assert table["als"]["rmse"][0] == "—"
    assert "baseline" in rendered.split("popularity", 1)[1][:200]


def test_flags_and_params_are_escaped(rendered: str) -> None:
    assert 'class="box warn"' in rendered
    assert "model &#x27;random&#x27; does not beat most-popular on ndcg@10 &lt;script&gt;" in rendered
    assert rendered.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") == 2  # the flag and the param
    assert "<script" not in rendered.lower()


def test_no_flags_says_every_model_beats_popularity(tmp_path: Path) -> None:
    evaluation = _evaluation()
    evaluation["flags"] = []
    text = render_report(evaluation, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="box ok"' in text and "Every model beats most-popular on ndcg@10" in text


def test_single_split_shows_plain_values(tmp_path: Path) -> None:
    text = render_report(_evaluation(n_splits=1), tmp_path / "r.html").read_text(encoding="utf-8")
    table = _headline(text)
    assert table["als"]["ndcg@10"][0] == "0.4200"
    assert "±" not in "".join(cell for row in table.values() for cell, _ in row.values())
    assert "Error bars" not in text


def test_missing_optional_metrics_and_sections(tmp_path: Path) -> None:
    evaluation = _evaluation()
    evaluation["results"] = [r for r in evaluation["results"] if r["metric"] not in ("ild", "rmse", "mae")]
    for key in ("popularity", "config", "input_versions", "flags"):
        del evaluation[key]
    text = render_report(evaluation, tmp_path / "r.html").read_text(encoding="utf-8")
    cols = list(_headline(text)["als"])
    assert "ild@10" not in cols and "rmse" not in cols and "mae" not in cols
    assert text.count("data:image/png;base64,") == 2  # the long-tail figure keeps its coverage panel
    assert "not recorded" in text


def test_headline_k_used_when_10_not_evaluated(tmp_path: Path) -> None:
    evaluation = _evaluation()
    evaluation["ks"] = [5, 20]
    evaluation["headline"] = {"metric": "recall", "k": 20}
    evaluation["results"] = [r for r in evaluation["results"] if r["k"] != 10]
    text = render_report(evaluation, tmp_path / "r.html").read_text(encoding="utf-8")
    cols = list(_headline(text)["als"])
    assert cols[0] == "ndcg@20" and "recall@20" in cols and not any(c.endswith("@10") for c in cols)


def test_downsampled_popularity_curve(tmp_path: Path) -> None:
    evaluation = _evaluation()
    counts = evaluation["popularity"]["item_counts_desc"]
    ranks = [1, *range(10, len(counts) + 1, 10)]
    evaluation["popularity"].update(item_counts_desc=[counts[r - 1] for r in ranks], item_rank=ranks)
    text = render_report(evaluation, tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 2 and "downsampled" in text


def test_head_items() -> None:
    assert head_items(np.full(10, 10.0), None) == (2.0, False)  # 20 of 100 interactions
    assert head_items(np.array([50.0, 30, 20]), None) == (1.0, False)
    assert head_items(np.array([10.0, 10, 10]), np.array([1.0, 5, 10])) == (2.0, True)  # interpolated


def test_format_value() -> None:
    assert [format_value(x) for x in (0.12345, 0.0, 0.00012345, 12.5, 123456.0)] == [
        "0.1235",
        "0.0000",
        "0.000123",
        "12.5000",
        "1.23e+05",
    ]


def test_malformed_results_are_rejected(tmp_path: Path) -> None:
    evaluation = copy.deepcopy(_evaluation())
    del evaluation["results"][3]["value"]
    with pytest.raises(ValueError, match=r"results'\]\[3\] lacks value"):
        render_report(evaluation, tmp_path / "r.html")
    with pytest.raises(ValueError, match="results"):
        render_report({"run_id": "x"}, tmp_path / "r.html")


def test_screenshot_without_chromium_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shots.shutil, "which", lambda name: None)
    html_path = render_report(_evaluation(), tmp_path / "r.html")
    with pytest.raises(RuntimeError, match="no headless browser found"):
        screenshot(html_path, tmp_path / "r.png")


@pytest.mark.skipif(shots.find_chromium() is None, reason="needs chromium/chromium-browser/google-chrome on PATH")
def test_screenshot(tmp_path: Path) -> None:
    from PIL import Image

    png = screenshot(render_report(_evaluation(), tmp_path / "r.html"), tmp_path / "r.png", width=1000)
    with Image.open(png) as image:
        assert image.width == 1000 and 1500 < image.height < 32000
