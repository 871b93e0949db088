"""Ingest transforms: validate, weight, deduplicate and index events (DataFrame in, DataFrame out).

No function here reads or writes a table; :mod:`recsys_spark.pipeline` does the I/O.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType

from recsys_spark.config import IngestConfig, SourceConfig
from recsys_spark.errors import InputError

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
#: Reasons a row is quarantined, in the order they are checked (the first that applies wins).
REASONS = (
    "invalid_encoding", "oversize_line", "malformed_row",
    "missing_user_id", "missing_item_id", "oversize_field", "invalid_id",
    "missing_event_type", "unknown_event_type",
    "missing_timestamp", "unparsable_timestamp", "timestamp_out_of_range",
    "missing_value", "unparsable_value", "non_finite_value", "negative_value", "value_out_of_range",
)
# Unix times beyond this magnitude (in seconds) are nonsense and would overflow microseconds.
_MAX_ABS_SECONDS = 1e11


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def parse_timestamp(ts: Column, fmt: str) -> Column:
    """The event time of a string column in ``fmt`` (unix_s, unix_ms, iso, auto); null when unparsable.

    Numbers are unix seconds or milliseconds (negative before 1970); ``auto`` reads numbers at or
    above 1e11 as milliseconds, and anything else as ISO-8601.
    """
    num = F.trim(ts).try_cast("double")
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
    return F.when(num.isNotNull(), from_number).otherwise(_from_iso(ts))


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
    """Parse and check raw rows; adds ``event_time``, ``value_num``, ``event_type`` and ``reason``.

    ``reason`` is null for a good row, else the first of :data:`REASONS` that applies.
    """
    control = r"[\x00-\x1f\x7f]"
    user, item = F.trim("user_id"), F.trim("item_id")
    etype = F.lower(F.trim("event_type")) if source.event_type_col else F.lit(source.default_event_type)
    has_ts = source.timestamp_format != "none"
    # Spark's casts silently drop control bytes ("1\x00" would be 1.0): such a field is corrupt.
    ts_text = F.when(~F.col("timestamp").rlike(control), F.col("timestamp"))
    event_time = parse_timestamp(ts_text, source.timestamp_format) if has_ts else F.lit(None).cast("timestamp")
    value = F.when(~F.col("value").rlike(control), F.trim("value").try_cast("double"))
    # -0 is 0: one spelling, so the same event never gets two content keys.
    value = F.when(value == 0, F.lit(0.0)).otherwise(value) if source.value_col else F.lit(1.0)
    # Parsed fields are columns of their own before the checks read them: inlined, each reference
    # in the reason chain below would parse the timestamp again (conditional branches are not
    # shared), which made ingest 3x slower.
    raw = raw.select("*", user.alias("_user"), item.alias("_item"), etype.alias("_etype"),
                     event_time.alias("_event_time"), value.alias("_value"))
    user, item, etype, value = F.col("_user"), F.col("_item"), F.col("_etype"), F.col("_value")
    event_time = F.col("_event_time")
    ts_ok = event_time.isNotNull() if has_ts else F.lit(True)

    lo = datetime.fromisoformat(cfg.min_event_time.replace("Z", "+00:00"))
    lo = lo if lo.tzinfo else lo.replace(tzinfo=timezone.utc)
    hi = now + timedelta(days=cfg.max_future_days)
    known = list(cfg.event_weights)
    rating_lo = cfg.min_rating if cfg.min_rating is not None else 0.0

    reason = (
        F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
        .when(_blank(F.col("user_id")), "missing_user_id")
        .when(_blank(F.col("item_id")), "missing_item_id")
        .when((F.length(user) > cfg.max_id_length) | (F.length(item) > cfg.max_id_length), "oversize_field")
        .when(user.rlike(control) | item.rlike(control), "invalid_id")
    )
    if source.event_type_col:
        reason = reason.when(_blank(F.col("event_type")), "missing_event_type")
    reason = reason.when(~etype.isin(known), "unknown_event_type")
    if has_ts:
        reason = (reason.when(_blank(F.col("timestamp")), "missing_timestamp")
                  .when(~ts_ok, "unparsable_timestamp")
                  .when((event_time < F.lit(lo)) | (event_time > F.lit(hi)), "timestamp_out_of_range"))
    if source.value_col:
        reason = (reason.when(_blank(F.col("value")), "missing_value")
                  .when(value.isNull(), "unparsable_value")
                  .when(F.isnan(value) | (F.abs(value) == float("inf")), "non_finite_value")
                  .when(value < 0, "negative_value"))
        if source.feedback == "explicit":
            bad = value < rating_lo
            if cfg.max_rating is not None:
                bad = bad | (value > cfg.max_rating)
            reason = reason.when(bad, "value_out_of_range")

    return raw.select(
        "source_file", "line_number", "raw_line",
        user.alias("user_id"), item.alias("item_id"), etype.alias("event_type"),
        event_time.alias("event_time"), value.alias("value_num"), F.trim("event_id").alias("event_id"),
        reason.alias("reason"),
    )


def rejected_rows(validated: DataFrame, run_id: str, at: datetime) -> DataFrame:
    """Rows with a reason, in the shape of the ``rejected_interactions`` table."""
    return validated.where(F.col("reason").isNotNull()).select(
        "source_file", "line_number", "raw_line", "reason",
        F.lit(run_id).alias("run_id"), F.lit(at).cast("timestamp").alias("rejected_at"),
    )


def event_weight(cfg: IngestConfig, event_type: Column, value: Column) -> Column:
    """Confidence contributed by one event: weight of its type times its (transformed) value."""
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
        "\x1f", "user_id", "item_id", "event_type",
        F.coalesce(F.unix_micros("event_time").cast("string"), F.lit("")), F.col("value_num").cast("string"))
    key = F.sha2(content, 256)
    if source.event_id_col:
        key = F.when(_blank(F.col("event_id")), key).otherwise(F.concat(F.lit("id:"), F.col("event_id")))
    cols = ["user_id", "item_id", "event_type", "event_time", "value_num", "source_file"]
    deduped = (good.withColumn("event_key", key)
               .groupBy("event_key").agg(F.min(F.struct(*cols)).alias("e"))
               .select("event_key", "e.*"))
    return deduped.select(
        "event_key", "user_id", "item_id", "event_type", "event_time",
        F.col("value_num").alias("value"),
        event_weight(cfg, F.col("event_type"), F.col("value_num")).alias("weight"),
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
    ordered = (new.orderBy(F.length(id_col), id_col)
               .withColumn("_pid", F.spark_partition_id())
               .withColumn("_mid", F.monotonically_increasing_id())
               .persist())
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
    result = (ordered.join(F.broadcast(table), "_pid")
              .select(id_col, (F.col("_mid") + F.col("_shift")).cast(IntegerType()).alias(idx_col))
              .checkpoint(eager=True))
    ordered.unpersist()
    log.info("%s: %d new ids numbered from %d", idx_col, total, start)
    return result


def with_dense_ids(events: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    """Events joined to their user_idx and item_idx, in the ``interactions`` table shape."""
    return (events.join(users.select("user_id", "user_idx"), "user_id")
            .join(items.select("item_id", "item_idx"), "item_id")
            .select("event_key", "user_id", "item_id", "user_idx", "item_idx", "event_type", "event_time",
                    "value", "weight", "is_rating", "source_file",
                    F.to_date("event_time").alias("event_date")))


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
    return (interactions.groupBy("user_idx", "item_idx").agg(
        combine(w).alias("confidence"),
        F.max_by(F.when(F.col("is_rating"), F.col("value")), rating_order).alias("rating"),
        F.count("*").alias("event_count"),
        F.max("event_time").alias("last_event_time"),
    ))
