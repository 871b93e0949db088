"""Lookups never answer a wrong question with popularity.

A strategy, neighbour method or popularity segment the tables do not hold (a typo, or a list that
was never built) is an error listing what is there, in the Python API, the CLI and its JSON mode;
so is a blank user id, and a table version that does not exist names the versions there are.
Unknown *users* still get the cold-start list: that is their right answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from recsys_spark import tables as T
from recsys_spark.cli import main
from recsys_spark.config.schema import Config
from recsys_spark.errors import RecsysError, StorageError
from recsys_spark.serving.lookup import Recommendations, UnknownMethodError, UnknownSegmentError, UnknownStrategyError
from recsys_spark.storage.store import CommitInfo, TableStore

COMMIT = CommitInfo("test", "run-lookups", "cfg")


@pytest.fixture
def warehouse(spark: SparkSession, cfg: Config) -> str:
    """Tiny lookup tables: strategies als and item_item, cosine neighbours, both popularity segments."""
    store = TableStore(spark, cfg.storage)
    cands = [
        (f"u{u}", u, r, f"i{r}", r, 1.0 / r, s, "v", s)
        for s in ("als", "item_item")
        for u in range(3)
        for r in range(1, 4)
    ]
    store.write(
        spark.createDataFrame(
            cands,
            "user_id STRING, user_idx INT, rank INT, item_id STRING, item_idx INT, "
            "score FLOAT, source STRING, model_version STRING, strategy STRING",
        ),
        T.USER_CANDIDATES,
        "overwrite",
        COMMIT,
        ["strategy"],
    )
    store.write(
        spark.createDataFrame(
            [("i1", 1, "i2", 2, 0.5, 1, 3, "cosine", "v")],
            "item_id STRING, item_idx INT, neighbor_id STRING, neighbor_idx INT, "
            "similarity DOUBLE, rank INT, cooccurrence LONG, method STRING, "
            "model_version STRING",
        ),
        T.ITEM_NEIGHBORS,
        "overwrite",
        COMMIT,
        ["method"],
    )
    store.write(
        spark.createDataFrame(
            [(s, 1, 7, "i7", 9.0, 9, "p") for s in ("overall", "recent")],
            "segment STRING, rank INT, item_idx INT, item_id STRING, score DOUBLE, users LONG, model_version STRING",
        ),
        T.POPULAR_ITEMS,
        "overwrite",
        COMMIT,
    )
    store.write(
        spark.createDataFrame([(f"i{i}", i) for i in range(8)], "item_id STRING, item_idx INT"),
        T.ITEMS,
        "overwrite",
        COMMIT,
    )
    return cfg.storage.root


@pytest.mark.parametrize("strategy", ["alss", "blend"])  # a typo, and a strategy that was never built
def test_an_unknown_or_unbuilt_strategy_is_an_error_listing_the_built_ones(warehouse: str, strategy: str) -> None:
    recs = Recommendations.open(warehouse, strategy=strategy)
    with pytest.raises(
        UnknownStrategyError,
        match=rf"unknown strategy '{strategy}': user_candidates version 0 "
        r"holds \['als', 'item_item'\]",
    ):
        recs.for_user("u1")
    with pytest.raises(UnknownStrategyError):
        recs.for_user("somebody new")  # not even an unknown user gets popularity from a wrong strategy
    assert [r.source for r in Recommendations.open(warehouse, strategy="als").for_user("u1")] == ["als"] * 3
    assert Recommendations.open(warehouse).strategies() == ["als", "item_item"]


def test_an_unknown_neighbor_method_or_segment_is_an_error(warehouse: str) -> None:
    recs = Recommendations.open(warehouse)
    with pytest.raises(UnknownMethodError, match=r"unknown method 'als': item_neighbors version 0 holds \['cosine'\]"):
        recs.similar_items("i1", method="als")
    with pytest.raises(
        UnknownSegmentError,
        match=r"unknown segment 'weekly': popular_items version 0 holds "
        r"\['overall', 'recent'\]",
    ):
        recs.popular(3, segment="weekly")
    with pytest.raises(UnknownSegmentError):  # the cold-start segment is checked the same way
        Recommendations.open(warehouse, cold_start_segment="recnet").for_user("somebody new")
    assert recs.neighbor_methods() == ["cosine"] and recs.segments() == ["overall", "recent"]
    assert [r.source for r in recs.for_user("somebody new")] == ["popular"]  # unknown users: the right answer


@pytest.mark.parametrize("user", ["", "   "])
def test_a_blank_user_id_is_an_error_not_an_unknown_user(warehouse: str, user: str) -> None:
    with pytest.raises(RecsysError, match="is blank"):
        Recommendations.open(warehouse).for_user(user)


def test_a_missing_pinned_version_names_the_versions_there_are(warehouse: str) -> None:
    with pytest.raises(StorageError, match=r"table 'user_candidates' has no version 99: it has version 0 only"):
        Recommendations.open(warehouse, versions={T.USER_CANDIDATES: 99})


def _cli(warehouse: str, *args: str) -> list[str]:
    return ["--set", f"storage.root={warehouse}", "lookup", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["user", "u1", "--strategy", "alss"],
            "unknown strategy 'alss': user_candidates version 0 holds ['als', 'item_item']",
        ),
        (["user", "u1", "--strategy", "alss", "--json"], "unknown strategy 'alss'"),
        (["user", "u1", "--strategy", "blend"], "unknown strategy 'blend'"),
        (["item", "i1", "--method", "als"], "unknown method 'als': item_neighbors version 0 holds ['cosine']"),
        (["user", ""], "user id '' is blank"),
        (["user", "u1", "--version", "99"], "table 'user_candidates' has no version 99: it has version 0 only"),
    ],
)
def test_the_lookup_cli_exits_2_naming_the_problem(
    warehouse: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli(warehouse, *args)) == 2
    out = capsys.readouterr()
    assert message in out.err and "Traceback" not in out.err
    assert out.out == ""  # nothing a script could take for an answer


def test_the_lookup_cli_json_still_answers_known_lists(warehouse: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_cli(warehouse, "user", "u1", "--strategy", "item_item", "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in got["rows"]] == ["item_item"] * 3 and got["version"] == 0


def test_vacuum_of_an_unknown_table_is_an_error_listing_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--set", f"storage.root={tmp_path}", "vacuum", "users", "nosuchtable"]) == 2
    err = capsys.readouterr().err
    assert "vacuum: unknown table 'nosuchtable'; the tables are ingested_files, interactions" in err
    assert main(["--set", f"storage.root={tmp_path}", "vacuum", "users"]) == 0
    assert "users: not written yet" in capsys.readouterr().out
