"""Churn between two versions of the served lists, checked against a plain-Python reference of
Jaccard and rank-biased overlap, and its place in the gate and the report."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone

import pytest
from pyspark.sql import SparkSession

from recsys_spark.config.schema import GateConfig
from recsys_spark.evaluation.churn import churn_history, list_churn, rbo_weights
from recsys_spark.evaluation.gate import gate_checks
from recsys_spark.evaluation.report import render_html
from recsys_spark.storage.published import Publication

Lists = dict[int, list[int]]


def _rbo(a: list[int], b: list[int], depth: int, p: float) -> float:
    """Truncated RBO by its definition, sum over depths of p^(d-1) |A_d & B_d| / d, over its largest value."""
    total = sum(p ** (d - 1) * len(set(a[:d]) & set(b[:d])) / d for d in range(1, depth + 1))
    return total / sum(p ** (d - 1) for d in range(1, depth + 1))


def _reference(new: Lists, old: Lists, depth: int, p: float) -> dict[str, float]:
    users = sorted(set(new) | set(old))
    changed, jaccard, rbo = [], [], []
    for u in users:
        a, b = new.get(u, [])[:depth], old.get(u, [])[:depth]
        changed.append(a != b)
        union = set(a) | set(b)
        jaccard.append(len(set(a) & set(b)) / len(union) if union else 1.0)
        rbo.append(_rbo(a, b, depth, p))
    shown_new = {i for lst in new.values() for i in lst[:depth]}
    shown_old = {i for lst in old.values() for i in lst[:depth]}
    return {
        "users": len(users),
        "changed_users": sum(changed) / len(users),
        "mean_jaccard": sum(jaccard) / len(users),
        "mean_rbo": sum(rbo) / len(users),
        "items_entering": len(shown_new - shown_old),
        "items_leaving": len(shown_old - shown_new),
    }


def _frame(spark: SparkSession, lists: Lists, strategy: str = "als"):  # noqa: ANN202 - a DataFrame
    rows = [(strategy, u, i, r) for u, items in lists.items() for r, i in enumerate(items, start=1)]
    return spark.createDataFrame(rows, "strategy STRING, user_idx INT, item_idx INT, rank INT")


def test_identical_top_10s_have_an_rbo_of_one_and_disjoint_ones_of_zero() -> None:
    # the items of two identical top 10s are in both tops from their own rank on: the weights add up to 1
    assert sum(rbo_weights(10, 0.9)) == pytest.approx(1.0) == _rbo(list(range(10)), list(range(10)), 10, 0.9)
    assert _rbo(list(range(10)), list(range(10, 20)), 10, 0.9) == 0.0


def test_churn_matches_the_reference_on_random_lists(spark: SparkSession) -> None:
    rng = random.Random(7)
    old = {u: rng.sample(range(40), 12) for u in range(60)}
    new: Lists = {}
    for u, items in old.items():
        if u % 5 == 0:
            new[u] = list(items)  # unchanged
        elif u % 5 == 1:
            new[u] = items[1:2] + items[:1] + items[2:]  # the first two swapped
        elif u % 5 == 2:
            new[u] = rng.sample(range(40), 12)
        elif u % 5 == 3:
            new[u] = items[:5] + rng.sample(range(40, 60), 7)  # a new tail: items entering exposure
        # u % 5 == 4: gone from the new version
    new.update({u: rng.sample(range(40), 12) for u in range(60, 70)})  # new users
    got = list_churn(_frame(spark, new), _frame(spark, old), depth=10, p=0.9)
    want = _reference(new, old, 10, 0.9)
    assert set(got) == {"als"}
    assert got["als"] == pytest.approx(want)


def test_a_strategy_the_old_version_lacks_is_left_out(spark: SparkSession) -> None:
    new = _frame(spark, {1: [1, 2, 3]}, "als").unionByName(_frame(spark, {1: [1, 2, 3]}, "blend"))
    got = list_churn(new, _frame(spark, {1: [1, 2, 3]}, "als"))
    assert list(got) == ["als"] and got["als"]["changed_users"] == 0.0 and got["als"]["mean_rbo"] < 1.0


def test_the_gate_bounds_churn_only_when_asked() -> None:
    base = {"rows": 10, "users": 1, "items": 10, "bad_scores": 0, "seen_items": 0}
    now = {**base, "user_coverage": 1.0, "item_coverage": 0.5, "metric": 0.3}
    stats = {"als": {**now, "churn": {"changed_users": 0.9, "mean_rbo": 0.2}}}
    before = {"als": now}
    assert not [c for c in gate_checks(stats, before, GateConfig(), "ndcg@10") if not c.passed]
    strict = GateConfig(max_changed_users=0.5, min_mean_rbo=0.3)
    failed = [c for c in gate_checks(stats, before, strict, "ndcg@10") if not c.passed]
    assert sorted(c.name for c in failed) == ["changed users", "rank-biased overlap"]
    assert "90.0% of the users' top 10 changed (gate.max_changed_users = 50%)" in failed[0].render()


def test_the_report_plots_the_churn_of_recent_publications() -> None:
    when = datetime(2026, 12, 1, tzinfo=timezone.utc)
    figures = {"users": 5, "changed_users": 0.4, "mean_jaccard": 0.7, "mean_rbo": 0.8}
    published = [
        Publication(1, "r1", "publish", {}, {"als": {"rows": 1}}, "", when),
        Publication(2, "r2", "publish", {}, {"als": {"rows": 1, "churn": figures}}, "", when),
        Publication(3, "r3", "rollback", {}, {"als": {"rows": 1, "churn": {**figures, "mean_rbo": 0.5}}}, "", when),
    ]
    history = churn_history(published)
    assert [(r["seq"], r["mean_rbo"]) for r in history] == [(2, 0.8), (3, 0.5)]
    assert churn_history(published, last=1)[0]["seq"] == 3
    results = [{"split": "s", "model": "als", "metric": "ndcg", "k": 10, "value": 0.3}]
    with_churn = render_html({"results": results, "churn": history})
    section = with_churn.split("<h2>Churn</h2>", 1)[1]
    assert re.match(r'<figure><img src="data:image/png;base64,', section)
    without = render_html({"results": results})
    assert "No churn recorded yet" in without.split("<h2>Churn</h2>", 1)[1].split("<h2>", 1)[0]
