"""Ingest transforms: validate, weight, deduplicate and index events (DataFrame in, DataFrame out).

No function here reads or writes a table; :mod:`recsys_spark.pipeline` does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType

from recsys_spark.config.schema import FLOAT32_MAX, IngestConfig, SourceConfig
from recsys_spark.errors import InputError

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
#: Reasons a row is quarantined, in the order they are checked (the first that applies wins).
REASONS = (
    "invalid_encoding",
    "oversize_line",
    "malformed_row",
    "duplicate_key",
    "missing_user_id",
    "missing_item_id",
    "oversize_field",
    "invalid_id",
    "missing_event_type",
    "unknown_event_type",
    "missing_timestamp",
    "unparsable_timestamp",
    "timestamp_out_of_range",
    "missing_value",
    "unparsable_value",
    "non_finite_value",
    "negative_value",
    "value_out_of_range",
    "weight_out_of_range",
)
# Unix times beyond this magnitude (in seconds) are nonsense and would overflow microseconds.
_MAX_ABS_SECONDS = 1e11
#: Trimmed from both ends of every field: Unicode whitespace (Spark's trim removes only ASCII
#: spaces, so a trailing NBSP made a second user) and zero-width characters. Controls are not
#: trimmed: a tab or NEL at the end of an id is corruption, not padding (invalid_id).
TRIM_CHARS = (
    " \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff"
)
#: Characters no id may hold anywhere: C0 and C1 controls and DEL, line and paragraph separators,
#: bidi controls (they reorder how the id and its neighbours display), and invisible characters
#: (an id that looks exactly like another). ZWJ / ZWNJ stay legal inside: emoji and Indic scripts use them.
_BAD_ID_CHAR = (
    r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}\x{061c}\x{200e}\x{200f}\x{202a}-\x{202e}"
    r"\x{2066}-\x{2069}\x{200b}\x{2060}-\x{2064}\x{feff}]"
)
_CONTROL = r"[\x00-\x1f\x7f]"
#: A plain decimal number: sign, digits, fraction, exponent ("+5", ".5", "5.", "1E-3"). Spark's cast
#: follows Java's parseDouble, which also reads "5d", "5f" and hex floats ("0x1p3" is 8). \z, not $:
#: $ would also match before a final line break.
_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\z"
#: Spellings of NaN and infinity: numbers, but not finite ones (non_finite_value, not unparsable).
_NON_FINITE = "^[+-]?((?i:nan|inf|infinity)|\u221e)\\z"


def _missing(c: Column) -> Column:
    return c.isNull() | (c == "")


def clean_field(c: Column, null_tokens: Sequence[str] = ()) -> Column:
    """A raw field trimmed of :data:`TRIM_CHARS` at both ends; null when it is one of ``null_tokens``."""
    text = F.trim(c, F.lit(TRIM_CHARS))
    return F.when(~text.isin(*null_tokens), text) if null_tokens else text


def parse_number(text: Column) -> Column:
    """A trimmed plain decimal number as a double, NaN for a NaN / infinity spelling, else null.

    Decimals too large for a double ("1e400") are infinite, so they are non-finite too.
    """
    return F.when(text.rlike(_DECIMAL), text.try_cast("double")).when(text.rlike(_NON_FINITE), F.lit(float("nan")))


def _normalizer(form: str) -> Callable[[Column], Column]:
    @F.arrow_udf("string")  # type: ignore[misc]
    def normalize(ids: pa.Array) -> pa.Array:
        return pc.utf8_normalize(ids, form)

    return normalize


def normalize_id(c: Column, form: str) -> Column:
    """``c`` in Unicode normalisation form ``form`` (NFC, NFKC); ``none`` leaves it as it is.

    Only non-ASCII ids (more bytes than characters) are sent to Python: an ASCII string is already
    in every normal form, and the UDF then receives nulls, which cost next to nothing to ship.
    """
    if form == "none":
        return c
    non_ascii = F.when(F.octet_length(c) != F.length(c), c)
    return F.coalesce(_normalizer(form)(non_ascii), c)


def parse_timestamp(ts: Column, fmt: str) -> Column:
    """The event time of a string column in ``fmt`` (unix_s, unix_ms, iso, auto); null when unparsable.

    Numbers are plain decimals (:func:`parse_number`) of unix seconds or milliseconds (negative
    before 1970); ``auto`` reads numbers at or above 1e11 as milliseconds, and anything else as ISO-8601.
    """
    text = F.trim(ts, F.lit(TRIM_CHARS))
    num = parse_number(text)
    if fmt == "unix_s":
        seconds = num
    elif fmt == "unix_ms":
        seconds = num / 1000.0
    elif fmt == "iso":
        seconds = F.lit(None).cast("double")
    else:  # auto: 1e11 s is the year 5138, 1e11 ms is 1973
        seconds = F.when(F.abs(num) >= 1e11, num / 1000.0).otherwise(num)
    finite = seconds.isNotNull() & ~F.isnan(seconds) & (F.abs(seconds) < _MAX_ABS_SECONDS)
    from_number = F.when(finite, F.timestamp_micros(F.round(seconds * 1e6).cast("long")))
    if fmt in ("unix_s", "unix_ms"):
        return from_number
    return F.when(num.isNotNull(), from_number).otherwise(_from_iso(text))


def _from_iso(ts: Column) -> Column:
    """An ISO-8601 string to a timestamp (no zone means UTC, the session time zone), or null.

    Spark's parser is lenient in ways that invent data: "12:00" becomes today at noon and "2026"
    New Year's Day. An instant must start with a full date; "t"/"z" and a zone after minutes
    ("T12:00Z"), which ISO-8601 allows, are normalised first.
    """
    text = F.trim(ts)
    text = F.regexp_replace(text, r"(\d)t(\d)", "$1T$2")
    text = F.regexp_replace(text, r"(\d)z$", "$1Z")
    text = F.regexp_replace(text, r"([T ]\d{1,2}:\d{2})(?=Z|[+-]|$)", "$1:00")
    return F.when(text.rlike(r"^[+-]?\d{4,}-\d{1,2}-\d{1,2}"), F.try_to_timestamp(text))


def validate_events(raw: DataFrame, source: SourceConfig, cfg: IngestConfig, now: datetime) -> DataFrame:
    """Parse and check raw rows; adds ``event_time``, ``value_num``, ``event_type``, ``weight`` and ``reason``.

    ``reason`` is null for a good row, else the first of :data:`REASONS` that applies. Every field
    is trimmed of Unicode whitespace and is missing when it is one of ``ingest.null_tokens``; user
    and item ids are then normalised (``ingest.id_normalization``).
    """
    fields = ("user_id", "item_id", "event_type", "value", "timestamp", "event_id")
    # Cleaned fields are columns of their own before anything reads them twice.
    raw = raw.select("*", *[clean_field(F.col(k), cfg.null_tokens).alias(f"_{k}") for k in fields])
    has_ts = source.timestamp_format != "none"
    user = normalize_id(F.col("_user_id"), cfg.id_normalization)
    item = normalize_id(F.col("_item_id"), cfg.id_normalization)
    etype = F.lower(F.col("_event_type")) if source.event_type_col else F.lit(source.default_event_type)
    # Spark's casts silently drop control bytes: a time holding one is corrupt, not a time.
    ts_text = F.when(~F.col("_timestamp").rlike(_CONTROL), F.col("_timestamp"))
    event_time = parse_timestamp(ts_text, source.timestamp_format) if has_ts else F.lit(None).cast("timestamp")
    value = parse_number(F.col("_value"))
    # -0 is 0: one spelling, so the same event never gets two content keys.
    value = F.when(value == 0, F.lit(0.0)).otherwise(value) if source.value_col else F.lit(1.0)
    # Parsed fields are columns of their own before the checks read them: inlined, each reference
    # in the reason chain below would parse the timestamp again (conditional branches are not
    # shared), which made ingest 3x slower.
    raw = raw.select(
        "*",
        user.alias("_user"),
        item.alias("_item"),
        etype.alias("_etype"),
        event_time.alias("_event_time"),
        value.alias("_value_num"),
    )
    # The weight is computed once, here: the reason chain checks the very column interactions store.
    raw = raw.withColumn("_weight", event_weight(cfg, F.col("_etype"), F.col("_value_num")))
    user, item, etype, value = F.col("_user"), F.col("_item"), F.col("_etype"), F.col("_value_num")
    event_time, weight, event_id = F.col("_event_time"), F.col("_weight"), F.col("_event_id")
    ts_ok = event_time.isNotNull() if has_ts else F.lit(True)

    lo = datetime.fromisoformat(cfg.min_event_time.replace("Z", "+00:00"))
    lo = lo if lo.tzinfo else lo.replace(tzinfo=timezone.utc)
    hi = now + timedelta(days=cfg.max_future_days)
    known = list(cfg.event_weights)
    rating_lo = cfg.min_rating if cfg.min_rating is not None else 0.0

    bad_id = user.rlike(_BAD_ID_CHAR) | item.rlike(_BAD_ID_CHAR)
    if source.event_id_col:
        # An event id is the dedupe key: a corrupt one (or a JSON array / boolean, marked by the
        # reader) would make unrelated events one.
        bad_id = bad_id | event_id.rlike(_BAD_ID_CHAR)
    reason = (
        F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
        .when(_missing(F.col("_user_id")), "missing_user_id")
        .when(_missing(F.col("_item_id")), "missing_item_id")
        .when((F.length(user) > cfg.max_id_length) | (F.length(item) > cfg.max_id_length), "oversize_field")
        .when(bad_id, "invalid_id")
    )
    if source.event_type_col:
        reason = reason.when(_missing(F.col("_event_type")), "missing_event_type")
    reason = reason.when(~etype.isin(known), "unknown_event_type")
    if has_ts:
        reason = (
            reason.when(_missing(F.col("_timestamp")), "missing_timestamp")
            .when(~ts_ok, "unparsable_timestamp")
            .when((event_time < F.lit(lo)) | (event_time > F.lit(hi)), "timestamp_out_of_range")
        )
    if source.value_col:
        reason = (
            reason.when(_missing(F.col("_value")), "missing_value")
            .when(value.isNull(), "unparsable_value")
            .when(F.isnan(value) | (F.abs(value) == float("inf")), "non_finite_value")
            .when(value < 0, "negative_value")
        )
        out_of_range = None
        if source.feedback == "explicit":
            out_of_range = value < rating_lo
            if cfg.max_rating is not None:
                out_of_range = out_of_range | (value > cfg.max_rating)
        elif cfg.max_value is not None:
            out_of_range = value > cfg.max_value
        if out_of_range is not None:
            reason = reason.when(out_of_range, "value_out_of_range")
    # A weight at most FLOAT32_MAX (~2^128) keeps every confidence finite in float64: a pair sums at
    # most 2^63 events (a long count), so at most 2^191, far below float64's 2^1024, and time decay
    # only shrinks weights. Whether 1 + als.alpha x confidence fits float32 is the ALS job's check.
    # "not <=" also catches NaN, which Spark orders above every number.
    reason = reason.when(~(weight <= FLOAT32_MAX), "weight_out_of_range")

    return raw.select(
        "source_file",
        "line_number",
        "raw_line",
        user.alias("user_id"),
        item.alias("item_id"),
        etype.alias("event_type"),
        event_time.alias("event_time"),
        value.alias("value_num"),
        weight.alias("weight"),
        event_id.alias("event_id"),
        reason.alias("reason"),
    )


def rejected_rows(validated: DataFrame, run_id: str, at: datetime) -> DataFrame:
    """Rows with a reason, in the shape of the ``rejected_interactions`` table."""
    return validated.where(F.col("reason").isNotNull()).select(
        "source_file",
        "line_number",
        "raw_line",
        "reason",
        F.lit(run_id).alias("run_id"),
        F.lit(at).cast("timestamp").alias("rejected_at"),
    )


def event_weight(cfg: IngestConfig, event_type: Column, value: Column) -> Column:
    """Confidence contributed by one event: weight of its type times its (transformed) value.

    Validation computes it (:func:`validate_events`' ``weight``), so that the row it checks and the
    row interactions stores carry the same number.
    """
    mapping = F.create_map(*[x for k, w in cfg.event_weights.items() for x in (F.lit(k), F.lit(float(w)))])
    v = F.log1p(value) if cfg.value_transform == "log1p" else value
    return mapping[event_type] * v


def accepted_events(validated: DataFrame, source: SourceConfig, cfg: IngestConfig) -> DataFrame:
    """Good rows, exact duplicates collapsed, with an ``event_key`` and ``weight``.

    The key is the event id when the source has one, else a SHA-256 of the event's content, so the
    same event re-sent (or re-ingested) always gets the same key. Among rows sharing a key the
    smallest (by content, then file) is kept, so the result does not depend on file order.
    """
    good = validated.where(F.col("reason").isNull())
    content = F.concat_ws(
        "\x1f",
        "user_id",
        "item_id",
        "event_type",
        F.coalesce(F.unix_micros("event_time").cast("string"), F.lit("")),
        F.col("value_num").cast("string"),
    )
    key = F.sha2(content, 256)
    if source.event_id_col:
        key = F.when(_missing(F.col("event_id")), key).otherwise(F.concat(F.lit("id:"), F.col("event_id")))
    cols = ["user_id", "item_id", "event_type", "event_time", "value_num", "weight", "source_file"]
    deduped = (
        good.withColumn("event_key", key)
        .groupBy("event_key")
        .agg(F.min(F.struct(*cols)).alias("e"))
        .select("event_key", "e.*")
    )
    return deduped.select(
        "event_key",
        "user_id",
        "item_id",
        "event_type",
        "event_time",
        F.col("value_num").alias("value"),
        "weight",
        F.lit(source.feedback == "explicit").alias("is_rating"),
        "source_file",
    )


def assign_dense_ids(ids: DataFrame, existing: DataFrame | None, id_col: str, idx_col: str) -> DataFrame:
    """New ``(id_col, idx_col)`` rows for ids not in ``existing``, numbered after its largest index.

    Existing ids keep their numbers. New ids are numbered in (length, value) order, so numeric ids
    keep their natural order, and numbering is deterministic. Scales without a single-partition
    window: ids are range-sorted, and per-partition counts give each partition's offset.
    """
    new = ids.select(id_col).distinct()
    start = 0
    if existing is not None:
        new = new.join(existing.select(id_col), id_col, "left_anti")
        start = (existing.agg(F.max(idx_col)).first()[0] or -1) + 1
    ordered = (
        new.orderBy(F.length(id_col), id_col)
        .withColumn("_pid", F.spark_partition_id())
        .withColumn("_mid", F.monotonically_increasing_id())
        .persist()
    )
    parts = ordered.groupBy("_pid").agg(F.count("*").alias("n"), F.min("_mid").alias("m")).collect()
    total = sum(r["n"] for r in parts)
    if start + total - 1 > INT32_MAX:
        raise InputError(f"{idx_col} would exceed {INT32_MAX} ({start + total} ids); ALS needs int32 indexes")
    offsets, acc = [], start
    for r in sorted(parts, key=lambda r: r["_pid"]):
        offsets.append((r["_pid"], acc - r["m"]))
        acc += r["n"]
    table = ordered.sparkSession.createDataFrame(offsets, "_pid INT, _shift LONG")
    # Checkpoint (to the always-set checkpoint dir, so losing an executor cannot lose it) before
    # releasing `ordered`, so later joins do not redo the sort.
    result = (
        ordered.join(F.broadcast(table), "_pid")
        .select(id_col, (F.col("_mid") + F.col("_shift")).cast(IntegerType()).alias(idx_col))
        .checkpoint(eager=True)
    )
    ordered.unpersist()
    log.info("%s: %d new ids numbered from %d", idx_col, total, start)
    return result


def with_dense_ids(events: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Events joined to their user_idx and item_idx, in the ``interactions`` table shape."""
    return (
        events.join(users.select("user_id", "user_idx"), "user_id")
        .join(items.select("item_id", "item_idx"), "item_id")
        .select(
            "event_key",
            "user_id",
            "item_id",
            "user_idx",
            "item_idx",
            "event_type",
            "event_time",
            "value",
            "weight",
            "is_rating",
            "source_file",
            F.to_date("event_time").alias("event_date"),
        )
    )


def interaction_matrix(interactions: DataFrame, cfg: IngestConfig) -> DataFrame:
    """One row per (user_idx, item_idx): confidence, latest rating, event count, last event time.

    With ``half_life_days`` an event's weight is halved for every half-life it is older than the
    newest event in the table (not the wall clock, so re-running gives the same matrix).
    """
    w = F.col("weight")
    if cfg.half_life_days:
        newest = interactions.agg(F.max("event_time")).first()[0]
        if newest is not None:
            age_days = (F.unix_micros(F.lit(newest).cast("timestamp")) - F.unix_micros("event_time")) / 86_400e6
            w = w * F.coalesce(F.pow(F.lit(0.5), age_days / cfg.half_life_days), F.lit(1.0))
    combine = F.sum if cfg.aggregation == "sum" else F.max
    rating_order = F.when(F.col("is_rating"), F.struct(F.col("event_time"), F.col("value")))
    return interactions.groupBy("user_idx", "item_idx").agg(
        combine(w).alias("confidence"),
        F.max_by(F.when(F.col("is_rating"), F.col("value")), rating_order).alias("rating"),
        F.count("*").alias("event_count"),
        F.max("event_time").alias("last_event_time"),
    )
