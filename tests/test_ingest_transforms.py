"""Pure ingest transforms: timestamp parsing, validation reasons, weights, dedupe, ids, matrix."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recsys_spark.config.schema import IngestConfig, SourceConfig
from recsys_spark.ingest.sources import FIELDS
from recsys_spark.ingest.transforms import (
    accepted_events,
    assign_dense_ids,
    interaction_matrix,
    parse_timestamp,
    validate_events,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)
IMPLICIT = SourceConfig(
    preset="custom", event_type_col="type", value_col="v", timestamp_col="ts", timestamp_format="auto"
)
EXPLICIT = SourceConfig(
    preset="custom",
    value_col="r",
    timestamp_col="ts",
    timestamp_format="unix_s",
    feedback="explicit",
    default_event_type="rating",
)


def _raw(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    cols = ["source_file", "line_number", "raw_line", "parse_error", *FIELDS]
    data = [
        (
            r.get("source_file", "f.csv"),
            i + 1,
            r.get("raw_line", f"line{i}"),
            r.get("parse_error"),
            *[r.get(c) for c in FIELDS],
        )
        for i, r in enumerate(rows)
    ]
    return spark.createDataFrame(data, ", ".join(f"{c} {'LONG' if c == 'line_number' else 'STRING'}" for c in cols))


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("unix_s", "874724710", "1997-09-20T03:05:10"),
        ("unix_ms", "874724710500", "1997-09-20T03:05:10.500"),
        ("iso", "2026-09-01T12:34:56.789Z", "2026-09-01T12:34:56.789"),
        ("iso", "2026-09-01 12:34:56", "2026-09-01T12:34:56"),
        ("iso", "2026-09-01T14:34:56+02:00", "2026-09-01T12:34:56"),
        ("auto", "874724710", "1997-09-20T03:05:10"),
        ("auto", "874724710500", "1997-09-20T03:05:10.500"),
        ("auto", "-86400", "1969-12-31T00:00:00"),
        ("auto", "1969-07-20T20:17:00Z", "1969-07-20T20:17:00"),
        ("auto", "not a time", None),
        ("unix_s", "2026-09-01", None),
        ("auto", "1e300", None),
        ("auto", "NaN", None),
        # unix times are plain decimals too: Java's parseDouble would read all of these
        ("unix_s", "874724710d", None),
        ("unix_s", "0x1.a1p29", None),
        ("unix_s", "\uff18\uff17\uff14\uff17\uff12\uff14\uff17\uff11\uff10", None),
        ("unix_ms", "874724710500f", None),
        ("unix_ms", "874_724_710_500", None),
        ("auto", "874724710D", None),
        ("auto", "--874724710", None),
        ("unix_s", "+874724710", "1997-09-20T03:05:10"),
        ("unix_ms", "8.747247105E11", "1997-09-20T03:05:10.500"),
        ("auto", "8.7472471e8", "1997-09-20T03:05:10"),
        ("auto", "874724710\u00a0", "1997-09-20T03:05:10"),
    ],
)
def test_parse_timestamp(spark: SparkSession, fmt: str, text: str, expected: str | None) -> None:
    parsed = parse_timestamp(F.col("t"), fmt)
    row = spark.createDataFrame([(text,)], "t STRING").select(parsed.alias("p")).first()
    if expected is None:
        assert row.p is None
    else:
        assert row.p is not None
        want = datetime.fromisoformat(expected).replace(tzinfo=timezone.utc)
        assert row.p.replace(tzinfo=timezone.utc) == want


GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "view", "value": "1", "timestamp": "2026-09-01T00:00:00Z"}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({}, None),
        ({"event_type": " VIEW "}, None),
        ({"parse_error": "malformed_row"}, "malformed_row"),
        ({"parse_error": "invalid_encoding"}, "invalid_encoding"),
        ({"user_id": ""}, "missing_user_id"),
        ({"user_id": None}, "missing_user_id"),
        ({"item_id": "   "}, "missing_item_id"),
        ({"item_id": "x" * 300}, "oversize_field"),
        ({"user_id": "a\x00b"}, "invalid_id"),
        ({"item_id": "\x00<non-scalar>"}, "invalid_id"),
        ({"event_type": ""}, "missing_event_type"),
        ({"event_type": "hover"}, "unknown_event_type"),
        ({"timestamp": ""}, "missing_timestamp"),
        ({"timestamp": "yesterday"}, "unparsable_timestamp"),
        ({"timestamp": "1850-01-01T00:00:00Z"}, "timestamp_out_of_range"),
        ({"timestamp": "2099-01-01T00:00:00Z"}, "timestamp_out_of_range"),
        ({"timestamp": "1988-01-01T00:00:00Z"}, "timestamp_out_of_range"),
        ({"value": ""}, "missing_value"),
        ({"value": "lots"}, "unparsable_value"),
        ({"value": "NaN"}, "non_finite_value"),
        ({"value": "-Infinity"}, "non_finite_value"),
        ({"value": "-2"}, "negative_value"),
        ({"user_id": "12345678901234567890123456789"}, None),  # overflows int64: ids are strings
    ],
)
def test_validation_reasons(spark: SparkSession, change: dict, reason: str | None) -> None:
    raw = _raw(spark, [{**GOOD, **change}])
    got = validate_events(raw, IMPLICIT, IngestConfig(), NOW).first()
    assert got.reason == reason


def _validated(
    spark: SparkSession, rows: list[dict[str, Any]], source: SourceConfig = IMPLICIT, cfg: IngestConfig | None = None
) -> list[Row]:
    return validate_events(_raw(spark, rows), source, cfg or IngestConfig(), NOW).orderBy("line_number").collect()


def test_a_value_is_a_plain_decimal_number_or_it_is_rejected(spark: SparkSession) -> None:
    cases = {
        # Java's parseDouble (Spark's cast) reads the first three as 5, 5 and 8
        "5d": "unparsable_value",
        "5f": "unparsable_value",
        "0x1p3": "unparsable_value",
        "1,5": "unparsable_value",
        "1_000": "unparsable_value",
        "--5": "unparsable_value",
        "0b101": "unparsable_value",
        "5 5": "unparsable_value",
        "1e": "unparsable_value",
        ".": "unparsable_value",
        "5\n": "unparsable_value",
        "\uff15": "unparsable_value",
        "\u0665": "unparsable_value",
        "\u221e": "non_finite_value",
        "-\u221e": "non_finite_value",
        "inf": "non_finite_value",
        "+NaN": "non_finite_value",
        "INFINITY": "non_finite_value",
        "1e400": "non_finite_value",
        ".5": 0.5,
        "5.": 5.0,
        "+5": 5.0,
        "1e5": 1e5,
        "1E-3": 0.001,
        "-0": 0.0,
        "\u00a05\u3000": 5.0,
    }
    got = _validated(spark, [{**GOOD, "value": v} for v in cases])
    assert {v: r.reason or r.value_num for v, r in zip(cases, got)} == cases


def test_null_tokens_are_missing_in_every_field_and_a_null_event_id_is_no_id(spark: SparkSession) -> None:
    src = IMPLICIT.model_copy(update={"event_id_col": "id"})
    rows = [
        {**GOOD, "user_id": "NULL"},
        {**GOOD, "item_id": "\\N"},
        {**GOOD, "event_type": "None"},
        {**GOOD, "timestamp": "Null"},
        {**GOOD, "value": "null"},
        {**GOOD, "user_id": " NULL\u00a0"},
        {**GOOD, "user_id": "nULL"},
        {**GOOD, "event_id": "NULL"},
        {**GOOD, "event_id": "e1"},
    ]
    got = _validated(spark, rows, src)
    assert [r.reason for r in got] == [
        "missing_user_id",
        "missing_item_id",
        "missing_event_type",
        "missing_timestamp",
        "missing_value",
        "missing_user_id",
        None,
        None,
        None,
    ]
    events = accepted_events(validate_events(_raw(spark, rows[6:]), src, IngestConfig(), NOW), src, IngestConfig())
    keys = [r.event_key for r in events.collect()]
    assert len(keys) == 3 and [k for k in keys if k.startswith("id:")] == ["id:e1"]  # NULL is keyed by content
    # the tokens are configurable: [] makes "NULL" a user like any other
    assert [r.user_id for r in _validated(spark, rows[:1], src, IngestConfig(null_tokens=[]))] == ["NULL"]


def test_invisible_reordering_and_control_characters_make_an_id_invalid(spark: SparkSession) -> None:
    src = IMPLICIT.model_copy(update={"event_id_col": "id"})
    invalid = [
        "a\u0085b",
        "a\u0080",
        "a\u009f",
        "a\u2028b",
        "a\u2029b",
        "\u200ertl",
        "a\u200fb",
        "ab\u202ecd",
        "\u2066x\u2069",
        "a\u061cb",
        "zw\u200bsp",
        "wj\u2060x",
        "bom\ufeffx",
        "a\tb",
        "a\u0000",
    ]
    rows = (
        [{**GOOD, "user_id": u} for u in invalid]
        + [{**GOOD, "item_id": "i\u202a"}, {**GOOD, "event_id": "e\u0085"}]
        + [{**GOOD, "user_id": "\U0001f469\u200d\U0001f4bb"}, {**GOOD, "user_id": "\u0628\u200c\u0627"}]
    )
    got = _validated(spark, rows, src)
    assert [r.reason for r in got] == ["invalid_id"] * (len(invalid) + 2) + [None, None]  # ZWJ / ZWNJ inside are text


def test_ids_are_trimmed_of_unicode_spaces_and_nfc_normalized_so_one_name_is_one_user(spark: SparkSession) -> None:
    spelled = {
        "zo\u00eb": "zo\u00eb",
        "zoe\u0308": "zo\u00eb",
        "caf\u00e9": "caf\u00e9",
        "cafe\u0301": "caf\u00e9",
        "nb\u00a0": "nb",
        "\u2007nb\u202f": "nb",
        "\u200bzw": "zw",
        "zw\u200b\ufeff": "zw",
        "\u3000ideo\u2003": "ideo",
        "end\u200d": "end",
        "\uff5a\uff4f": "\uff5a\uff4f",
        "plain": "plain",
    }
    got = _validated(spark, [{**GOOD, "user_id": u, "item_id": u} for u in spelled])
    assert [(r.user_id, r.item_id, r.reason) for r in got] == [(v, v, None) for v in spelled.values()]
    # NFKC also folds compatibility forms (full-width letters); "none" keeps every spelling apart
    nfkc = _validated(spark, [{**GOOD, "user_id": "\uff5a\uff4fe\u0308"}], cfg=IngestConfig(id_normalization="NFKC"))
    assert nfkc[0].user_id == "zo\u00eb"
    raw = _validated(spark, [{**GOOD, "user_id": u} for u in spelled], cfg=IngestConfig(id_normalization="none"))
    assert [r.user_id for r in raw][:4] == ["zo\u00eb", "zoe\u0308", "caf\u00e9", "cafe\u0301"]
    assert [r.user_id for r in raw][4:6] == ["nb", "nb"]  # trimming does not depend on normalisation


def test_a_weight_beyond_float32_is_rejected_and_the_checked_weight_is_the_one_stored(spark: SparkSession) -> None:
    cfg = IngestConfig(event_weights={"view": 1.0, "purchase": 5.0})
    rows = [
        {**GOOD, "value": "1e308"},
        {**GOOD, "event_type": "purchase", "value": "1e38"},
        {**GOOD, "value": "3e38"},
        {**GOOD, "event_type": "purchase", "value": "2"},
    ]
    validated = validate_events(_raw(spark, rows), IMPLICIT, cfg, NOW)
    got = validated.orderBy("line_number").collect()
    assert [r.reason for r in got] == ["weight_out_of_range", "weight_out_of_range", None, None]
    assert {r.value: r.weight for r in accepted_events(validated, IMPLICIT, cfg).collect()} == {3e38: 3e38, 2.0: 10.0}
    # log1p tames the same value: the weight is checked after value_transform
    tamed = _validated(spark, rows[:1], cfg=cfg.model_copy(update={"value_transform": "log1p"}))
    assert tamed[0].reason is None and tamed[0].weight == pytest.approx(709.196, abs=1e-3)


def test_max_value_rejects_larger_implicit_values(spark: SparkSession) -> None:
    got = _validated(spark, [{**GOOD, "value": v} for v in ("1000", "1000.5")], cfg=IngestConfig(max_value=1000.0))
    assert [r.reason for r in got] == [None, "value_out_of_range"]


def test_explicit_ratings_range(spark: SparkSession) -> None:
    cfg = IngestConfig(min_rating=1.0, max_rating=5.0)
    rows = [{"user_id": "u", "item_id": "i", "value": v, "timestamp": "880000000"} for v in ("0.5", "3", "5", "6")]
    got = [r.reason for r in validate_events(_raw(spark, rows), EXPLICIT, cfg, NOW).orderBy("line_number").collect()]
    assert got == ["value_out_of_range", None, None, "value_out_of_range"]


def test_weights_dedupe_and_keys(spark: SparkSession) -> None:
    rows = [
        {**GOOD, "event_type": "purchase", "value": "2"},
        {**GOOD, "event_type": "purchase", "value": "2", "source_file": "b.csv"},  # exact duplicate
        {**GOOD, "event_type": "click"},
        {**GOOD, "user_id": ""},  # rejected, never an event
    ]
    cfg = IngestConfig(event_weights={"view": 1.0, "click": 2.0, "purchase": 5.0})
    events = accepted_events(validate_events(_raw(spark, rows), IMPLICIT, cfg, NOW), IMPLICIT, cfg)
    got = {(r.event_type, r.weight, r.source_file) for r in events.collect()}
    assert got == {("purchase", 10.0, "b.csv"), ("click", 2.0, "f.csv")} or got == {
        ("purchase", 10.0, "f.csv"),
        ("click", 2.0, "f.csv"),
    }
    assert events.count() == 2
    # keys are content hashes: the same event always gets the same key
    again = accepted_events(validate_events(_raw(spark, rows[::-1]), IMPLICIT, cfg, NOW), IMPLICIT, cfg)
    assert_df_equality(events.select("event_key", "weight"), again.select("event_key", "weight"), ignore_row_order=True)
    log1p = IngestConfig(event_weights={"view": 1.0, "click": 2.0, "purchase": 5.0}, value_transform="log1p")
    w = accepted_events(validate_events(_raw(spark, rows[:1]), IMPLICIT, log1p, NOW), IMPLICIT, log1p).first().weight
    assert w == pytest.approx(5.0 * 1.0986122886681098)


def test_event_id_is_the_dedupe_key_when_present(spark: SparkSession) -> None:
    src = IMPLICIT.model_copy(update={"event_id_col": "id"})
    rows = [{**GOOD, "event_id": "e1"}, {**GOOD, "event_id": "e1", "value": "3"}, {**GOOD, "event_id": "e2"}]
    events = accepted_events(validate_events(_raw(spark, rows), src, IngestConfig(), NOW), src, IngestConfig())
    assert sorted(r.event_key for r in events.collect()) == ["id:e1", "id:e2"]
    assert [r.value for r in events.where("event_key = 'id:e1'").collect()] == [1.0]  # smallest content wins


def test_dense_ids_are_stable_and_contiguous(spark: SparkSession) -> None:
    first = spark.createDataFrame([(x,) for x in ["b", "a", "10", "9", "a"]], "user_id STRING")
    ids = assign_dense_ids(first, None, "user_id", "user_idx")
    assert sorted((r.user_idx, r.user_id) for r in ids.collect()) == [(0, "9"), (1, "a"), (2, "b"), (3, "10")]
    second = spark.createDataFrame([(x,) for x in ["a", "c", "zz", "9"]], "user_id STRING")
    more = assign_dense_ids(second, ids, "user_id", "user_idx")
    assert sorted((r.user_idx, r.user_id) for r in more.collect()) == [(4, "c"), (5, "zz")]


def test_dense_ids_across_many_partitions(spark: SparkSession) -> None:
    ids = spark.range(0, 5000, numPartitions=7).select(F.concat(F.lit("u"), F.col("id")).alias("user_id"))
    out = assign_dense_ids(ids, None, "user_id", "user_idx")
    idx = sorted(r.user_idx for r in out.collect())
    assert idx == list(range(5000))
    assert out.schema["user_idx"].dataType.simpleString() == "int"


def test_interaction_matrix(spark: SparkSession) -> None:
    t = lambda d: datetime(2026, 9, d, tzinfo=timezone.utc)  # noqa: E731
    rows = [
        (0, 0, t(1), 1.0, 1.0, False),
        (0, 0, t(5), 1.0, 2.0, False),
        (0, 1, t(3), 4.0, 4.0, True),
        (0, 1, t(9), 2.0, 2.0, True),
        (1, 0, t(9), 1.0, 5.0, False),
    ]
    df = spark.createDataFrame(
        rows, "user_idx INT, item_idx INT, event_time TIMESTAMP, value DOUBLE, weight DOUBLE, is_rating BOOLEAN"
    )
    m = {(r.user_idx, r.item_idx): r for r in interaction_matrix(df, IngestConfig()).collect()}
    assert m[(0, 0)].confidence == 3.0 and m[(0, 0)].event_count == 2 and m[(0, 0)].rating is None
    assert m[(0, 1)].rating == 2.0  # the latest rating wins
    assert m[(0, 0)].last_event_time.replace(tzinfo=timezone.utc) == t(5)
    mx = {
        (r.user_idx, r.item_idx): r.confidence
        for r in interaction_matrix(df, IngestConfig(aggregation="max")).collect()
    }
    assert mx[(0, 0)] == 2.0
    decayed = {
        (r.user_idx, r.item_idx): r.confidence
        for r in interaction_matrix(df, IngestConfig(half_life_days=4.0)).collect()
    }
    # newest event is 2026-09-09: 8 days (two half-lives) before it counts a quarter
    assert decayed[(0, 0)] == pytest.approx(1.0 * 0.5**2 + 2.0 * 0.5**1)
    assert decayed[(1, 0)] == pytest.approx(5.0)
