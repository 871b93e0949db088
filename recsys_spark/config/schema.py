"""One typed, validated configuration schema for every job.

Configs are TOML files (``conf/local.toml`` is the default) plus ``--set
section.key=value`` overrides. Each section is a pydantic model with a
docstring per field; unknown keys, wrong types and out-of-range values are
errors that name the offending key.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import math
import posixpath
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from recsys_spark.config.overrides import apply_overrides
from recsys_spark.errors import ConfigError
from recsys_spark.uris import is_uri

#: The largest finite float32. MLlib's ALS (like any float32 ALS) holds ratings and confidences in
#: float32, so no event weight may exceed it.
FLOAT32_MAX = 3.4028234663852886e38


class _Section(BaseModel):
    # strict: a TOML string where a number is expected is an error, not a silent cast.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


def _check_path(value: str, key: str) -> str:
    if not value.strip():
        raise ValueError(f"{key} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{key} contains a NUL byte")
    return value


def _check_folder(value: str, key: str) -> str:
    """A local folder the jobs create and write into must not be (or lie under) an existing file."""
    _check_path(value, key)
    if is_uri(value):
        return value
    p = Path(value).expanduser()
    for candidate in (p, *p.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "" if candidate == p else f" ({candidate} is a file)"
                raise ValueError(f"{key} {value!r} must be a directory, but it is a file{where}")
            break
    return value


def _as_iso(value: Any) -> Any:
    """TOML has date-time literals: `min_event_time = 2020-01-01T00:00:00Z` means the ISO string."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


#: Charsets ingest can decode line by line (Spark's decode supports these ASCII-compatible ones).
_CHARSETS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8",
    "ascii": "US-ASCII",
    "latin-1": "ISO-8859-1",
    "iso8859-1": "ISO-8859-1",
}


def spark_charset(encoding: str) -> str:
    """The Spark charset name for ``ingest.source.encoding`` (any Python alias of a supported one)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        name = encoding
    if name not in _CHARSETS:
        raise ValueError(
            f"ingest.source.encoding {encoding!r} is not supported: ingest reads text line by line and "
            "decodes UTF-8, US-ASCII or ISO-8859-1 (latin-1). Convert other encodings first, e.g. "
            f"`iconv -f {encoding} -t UTF-8`"
        )
    return _CHARSETS[name]


class SparkConfig(_Section):
    master: str = "local[*]"
    """Spark master for local runs. Ignored under spark-submit, which sets the master itself."""

    app_name: str = "recsys-spark"
    """Application name shown in the Spark UI and history server."""

    driver_memory: str = "4g"
    """Driver heap for local runs (the driver is the only JVM in local mode). Ignored under spark-submit."""

    shuffle_partitions: int = Field(8, ge=1)
    """spark.sql.shuffle.partitions when spark-submit did not set it. Small is right for one machine."""

    checkpoint_dir: str = "data/checkpoints"
    """Checkpoint directory; always set, because long ALS lineages overflow the stack without one."""

    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    """Log level of Spark's own JVM logging (recsys-spark logs through Python logging)."""

    ui_enabled: bool = True
    """Start the Spark web UI (disable in tests to save start-up time and ports)."""

    conf: dict[str, str] = Field(default_factory=dict)
    """Extra Spark properties, e.g. {"spark.executor.memory" = "8g"}. spark-submit --conf wins over these."""

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint(cls, v: str) -> str:
        return _check_folder(v, "spark.checkpoint_dir")

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_scalars(cls, v: Any) -> Any:
        # Spark properties are strings, but `--set spark.conf.spark.eventLog.enabled=true` and
        # TOML `x = 4` parse as bool/int; write them the way Spark spells them.
        if not isinstance(v, dict):
            return v
        return {
            k: (str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x)
            for k, x in v.items()
        }


class StorageConfig(_Section):
    root: str = "data/warehouse"
    """Table root: every table lives at <root>/<table name>. A local path or a URI (s3://, abfss://, ...)."""

    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    """How Delta tables are written: native delta-spark when its jars are on the classpath ("auto"
    picks it then), else Spark writes Parquet and the deltalake package commits it ("delta-rs")."""

    vacuum_retention_hours: float = Field(168.0, ge=0)
    """Files removed from a table longer ago than this are deleted by `vacuum` (time travel window)."""

    max_commit_retries: int = Field(10, ge=0, le=100)
    """Retries of a Delta commit that lost a race to a concurrent append."""

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        _check_folder(v, "storage.root")
        # Spark treats these as glob characters in read paths.
        bad = set(v) & set("*?[]{}")
        if bad:
            raise ValueError(f"storage.root must not contain glob characters {''.join(sorted(bad))!r}")
        return v


FeedbackKind = Literal["implicit", "explicit"]
#: How a pair's confidence becomes a model's weight (recsys_spark/models/confidence.py).
ConfidenceTransform = Literal["binary", "linear", "log"]
#: Where EASE's top_n budget of weights is spent (recsys_spark/models/ease.py): per item, or over all of B.
EasePrune = Literal["item", "global", "score"]
#: The candidate lists (user_candidates partitions) the pipeline can build.
Strategy = Literal["als", "item_item", "ease", "rp3beta", "blend"]
SourceFormat = Literal["csv", "tsv", "json", "parquet"]
TimestampFormat = Literal["auto", "unix_s", "unix_ms", "iso", "none"]

#: Named readers for well-known public logs; any field set explicitly in a config wins.
SOURCE_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "format": "csv",
        "header": True,
        "user_col": "user_id",
        "item_col": "item_id",
        "event_type_col": "event_type",
        "value_col": "value",
        "timestamp_col": "timestamp",
        "event_id_col": "event_id",
        "timestamp_format": "iso",
        "feedback": "implicit",
    },
    "movielens-100k": {  # u.data / u1.base: user \t item \t rating \t unix seconds, no header
        "format": "tsv",
        "header": False,
        "field_names": ["user", "item", "rating", "timestamp"],
        "user_col": "user",
        "item_col": "item",
        "value_col": "rating",
        "timestamp_col": "timestamp",
        "timestamp_format": "unix_s",
        "feedback": "explicit",
        "default_event_type": "rating",
    },
    "movielens-csv": {  # ml-latest-small ratings.csv
        "format": "csv",
        "header": True,
        "user_col": "userId",
        "item_col": "movieId",
        "value_col": "rating",
        "timestamp_col": "timestamp",
        "timestamp_format": "unix_s",
        "feedback": "explicit",
        "default_event_type": "rating",
    },
    "lastfm-plays": {  # hetrec2011 user_artists.dat: play counts, no timestamps
        "format": "tsv",
        "header": True,
        "user_col": "userID",
        "item_col": "artistID",
        "value_col": "weight",
        "timestamp_format": "none",
        "feedback": "implicit",
        "default_event_type": "play",
    },
    "amazon-5core": {  # McAuley 2014 5-core JSON lines (gzipped is fine)
        "format": "json",
        "user_col": "reviewerID",
        "item_col": "asin",
        "value_col": "overall",
        "timestamp_col": "unixReviewTime",
        "timestamp_format": "unix_s",
        "feedback": "explicit",
        "default_event_type": "rating",
    },
}


#: Rating scales of the presets of rated data, applied to ingest.min_rating / max_rating unless set.
PRESET_RATING_RANGES: dict[str, tuple[float, float]] = {
    "movielens-100k": (1.0, 5.0),
    "movielens-csv": (0.5, 5.0),  # half stars
    "amazon-5core": (1.0, 5.0),
}


class SourceConfig(_Section):
    preset: Literal["custom", "synthetic", "movielens-100k", "movielens-csv", "lastfm-plays", "amazon-5core"] = (
        "synthetic"
    )
    """A named reader for a known log format (fills the fields below), or "custom"."""

    path: str = "data/raw/events"
    """A file, or a directory whose non-hidden files are all read (e.g. Spark output)."""

    format: SourceFormat = "csv"
    """csv, tsv, json (JSON lines, optionally .gz) or parquet."""

    delimiter: str | None = None
    """Field separator for csv/tsv; defaults to "," and "\\t"."""

    header: bool = True
    """Whether delimited files start with a header line naming the columns."""

    field_names: list[str] | None = None
    """Column names for delimited files without a header, in file order."""

    encoding: str = "UTF-8"
    """Text encoding of csv/tsv/json files (e.g. ISO-8859-1)."""

    user_col: str = "user_id"
    """Column holding the user id (any string or integer id)."""

    item_col: str = "item_id"
    """Column holding the item id (any string or integer id)."""

    event_type_col: str | None = None
    """Column holding the event type (view, click, ...); None means every row is `default_event_type`."""

    value_col: str | None = None
    """Column holding the rating (explicit) or event strength such as a play count (implicit); None means 1."""

    timestamp_col: str | None = None
    """Column holding the event time; None when the log has no times (time decay is then off)."""

    event_id_col: str | None = None
    """Column holding a unique event id; when present it is the deduplication key."""

    timestamp_format: TimestampFormat = "auto"
    """unix_s, unix_ms, iso (ISO-8601 string), auto (numbers >= 1e11 are ms, else s; other strings ISO), none."""

    feedback: FeedbackKind = "implicit"
    """implicit: events carry confidence; explicit: the value column is a rating kept as such."""

    default_event_type: str = "view"
    """Event type of rows without an event type column."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            preset = data.get("preset", "synthetic")
            if preset in SOURCE_PRESETS:
                return {**SOURCE_PRESETS[preset], **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.format in ("csv", "tsv") and not self.header and not self.field_names:
            raise ValueError("ingest.source.field_names is required for csv/tsv files without a header")
        if self.timestamp_format == "none" and self.timestamp_col:
            raise ValueError("ingest.source.timestamp_format is 'none' but timestamp_col is set")
        if self.timestamp_format != "none" and not self.timestamp_col:
            raise ValueError("ingest.source.timestamp_col is required unless timestamp_format = 'none'")
        if self.feedback == "explicit" and not self.value_col:
            raise ValueError("ingest.source.value_col (the rating) is required for explicit feedback")
        if self.delimiter is not None and len(self.delimiter) != 1:
            hint = (
                ' (for a tab write "\\t" as a TOML string: --set \'ingest.source.delimiter="\\t"\')'
                if self.delimiter == "\\t"
                else ""
            )
            raise ValueError(f"ingest.source.delimiter must be a single character, got {self.delimiter!r}{hint}")
        if self.delimiter is not None and self.delimiter in '"\r\n':
            raise ValueError(
                f"ingest.source.delimiter {self.delimiter!r} cannot separate fields (it is the quote or a line break)"
            )
        spark_charset(self.encoding)
        _check_path(self.path, "ingest.source.path")
        return self

    @property
    def separator(self) -> str:
        return self.delimiter or ("\t" if self.format == "tsv" else ",")


class IngestConfig(_Section):
    source: SourceConfig = Field(default_factory=SourceConfig)
    """Where the raw log is and how to read it."""

    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0,
            "click": 2.0,
            "add_to_cart": 3.0,
            "purchase": 5.0,
            "rating": 1.0,
            "play": 1.0,
        }
    )
    """Weight per event type; an event type not listed here is rejected as unknown_event_type."""

    value_transform: Literal["identity", "log1p"] = "identity"
    """Applied to the event value before weighting (log1p tames play counts in the 100,000s)."""

    aggregation: Literal["sum", "max"] = "sum"
    """How event weights of one (user, item) pair combine into its confidence."""

    half_life_days: float | None = Field(None, gt=0)
    """Time decay: an event this many days older than the newest event counts half. None: no decay."""

    min_event_time: str = "1990-01-01T00:00:00Z"
    """Events before this ISO-8601 instant are rejected (timestamp_out_of_range). Earlier dates,
    before 1970 too, are legal once this is lowered (e.g. "1900-01-01T00:00:00Z")."""

    max_future_days: float = Field(1.0, ge=0, le=1_000_000)
    """Events later than now + this many days are rejected (timestamp_out_of_range)."""

    min_rating: float | None = None
    """Explicit feedback: ratings below this are rejected (value_out_of_range). None: no lower bound but >= 0.
    The movielens-100k and amazon-5core presets set 1, movielens-csv 0.5, unless you set it."""

    max_rating: float | None = None
    """Explicit feedback: ratings above this are rejected (value_out_of_range). The movielens-100k,
    movielens-csv and amazon-5core presets set 5, unless you set it."""

    max_value: float | None = Field(None, gt=0)
    """Implicit feedback: values (play counts, quantities) above this are rejected (value_out_of_range),
    before value_transform. None: no bound, but an event whose weight is not finite or exceeds
    float32's largest value (3.4e38), which ALS cannot hold, is weight_out_of_range."""

    null_tokens: list[str] = Field(default_factory=lambda: ["NULL", "null", "Null", "\\N", "None"])
    """A field (id, event type, value, time or event id) equal to one of these after trimming is missing
    (missing_user_id, missing_value, ...; a missing event id means the event has none). SQL exports
    write NULL or \\N for missing values. Case-sensitive; [] makes every string a value."""

    id_normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalisation of user and item ids, so that one name typed as composed or decomposed
    characters ("zoë" as o + U+0308) is one user. NFKC also folds compatibility forms (full-width
    letters, ligatures); none keeps ids as written (ids are still trimmed)."""

    max_id_length: int = Field(256, ge=1)
    """Ids longer than this many characters are rejected (oversize_field)."""

    max_line_bytes: int = Field(65536, ge=16)
    """Input lines longer than this many bytes are rejected (oversize_line) without being parsed."""

    max_reject_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """If a larger share of the new rows is rejected, the job fails and commits nothing."""

    max_conflict_retries: int = Field(10, ge=0, le=1000)
    """Restarts of an ingest whose commits lost a race to a concurrent ingest into the same tables.
    Each restart re-reads the ledger and the tables and commits only what is still new on top of
    the winner; every lost race means the other run made progress, so a few suffice."""

    @model_validator(mode="before")
    @classmethod
    def _preset_rating_range(cls, data: Any) -> Any:
        # The presets fill SourceConfig, but the rating scale is validation's, so it is filled here;
        # a bound the user set wins, as with any preset field.
        if not isinstance(data, Mapping):
            return data
        source = data.get("source", {})
        preset = (
            source.preset
            if isinstance(source, SourceConfig)
            else (source.get("preset", "synthetic") if isinstance(source, Mapping) else None)
        )
        if preset not in PRESET_RATING_RANGES:
            return data
        lo, hi = PRESET_RATING_RANGES[preset]
        return {"min_rating": lo, "max_rating": hi, **data}

    @field_validator("min_rating", "max_rating", "max_value")
    @classmethod
    def _finite_bound(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"ingest.{info.field_name} must be a finite number, got {v}")
        return v

    @field_validator("null_tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        for token in v:
            # fields are compared after trimming, so a blank or padded token could never match
            if not token.strip() or token != token.strip():
                raise ValueError(
                    f"token {token!r} is blank or padded with spaces; list the "
                    "token itself (fields are trimmed before they are compared)"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.min_rating is not None and self.max_rating is not None and self.min_rating > self.max_rating:
            preset = self.source.preset
            origin = (
                f" (the {preset} preset sets {PRESET_RATING_RANGES[preset][0]:g} .. "
                f"{PRESET_RATING_RANGES[preset][1]:g} unless you set them)"
                if preset in PRESET_RATING_RANGES
                else ""
            )
            raise ValueError(
                f"ingest.min_rating = {self.min_rating:g} is above ingest.max_rating = "
                f"{self.max_rating:g}: no rating could pass{origin}"
            )
        if self.max_value is not None and self.source.feedback == "explicit":
            raise ValueError(
                "ingest.max_value bounds implicit values; ratings (ingest.source.feedback = "
                "'explicit') are bounded by ingest.min_rating / ingest.max_rating"
            )
        return self

    @field_validator("event_weights")
    @classmethod
    def _finite_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k, w in v.items():
            if not (w == w and abs(w) != float("inf")) or w < 0:
                raise ValueError(f"ingest.event_weights.{k} must be a finite number >= 0, got {w}")
            if w > FLOAT32_MAX:
                raise ValueError(
                    f"ingest.event_weights.{k} = {w:g} exceeds float32's largest value "
                    f"({FLOAT32_MAX:.4g}), which ALS holds weights in: every event would be "
                    "weight_out_of_range"
                )
        return v

    @field_validator("min_event_time", mode="before")
    @classmethod
    def _toml_datetime(cls, v: Any) -> Any:
        return _as_iso(v)

    @field_validator("min_event_time")
    @classmethod
    def _iso(cls, v: str) -> str:
        from datetime import datetime

        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ingest.min_event_time is not an ISO-8601 instant: {v!r}") from None
        return v


class GenerateConfig(_Section):
    output: str = "data/raw/events"
    """Directory the synthetic log is written to (replaced on every run)."""

    format: Literal["csv", "json", "parquet"] = "csv"
    """File format of the synthetic log."""

    num_events: int = Field(1_000_000, ge=100, le=2_000_000_000)
    """Approximate number of events to generate."""

    num_users: int = Field(50_000, ge=10)
    """Number of users; activity per user is heavy-tailed (log-normal)."""

    num_items: int = Field(20_000, ge=10)
    """Number of items; popularity follows a power law (Zipf)."""

    rank: int = Field(16, ge=1, le=256)
    """Dimension of the hidden user and item taste vectors that drive choices."""

    popularity_exponent: float = Field(0.9, ge=0.0, le=3.0)
    """Zipf exponent s of item popularity p(i) ~ 1/rank(i)^s."""

    activity_sigma: float = Field(1.2, ge=0.0, le=4.0)
    """Sigma of the log-normal user activity; larger means heavier power users."""

    affinity: float = Field(1.0, ge=0.0, le=20.0)
    """Strength of taste vs popularity inside a genre: choice probability there ~ popularity(item)
    * exp(affinity * <u, v>); 0 makes picks inside a genre follow popularity alone."""

    num_genres: int = Field(40, ge=1, le=10_000)
    """Number of latent genres (communities) the catalogue is split into; 1 means no genres."""

    genre_concentration: float = Field(2.0, gt=0.0, le=10_000.0)
    """Total concentration c of each user's Dirichlet(c * genre share) mix over genres: small c
    concentrates a user on a few genres, large c gives everyone the catalogue-wide mix."""

    mainstream_share: float = Field(0.3, ge=0.0, le=1.0)
    """Share of a user's genre mix that is the catalogue-wide mix (hits everyone sees) rather than
    the user's own genres."""

    days: int = Field(56, ge=1, le=3650)
    """Length of the time span the events cover."""

    start_date: str = "2026-09-01"
    """First day of the time span (ISO date)."""

    seed: int = 42
    """Seed: the same seed, sizes and partitions give byte-identical events."""

    partitions: int = Field(8, ge=1, le=100_000)
    """Spark partitions (and output files) to generate in parallel; part of the seed's identity."""

    duplicate_fraction: float = Field(0.002, ge=0.0, le=0.5)
    """Share of events emitted twice, as real trackers do; ingest must count them once."""

    corrupt_fraction: float = Field(0.0005, ge=0.0, le=0.5)
    """Share of malformed lines planted in the log, so the demo shows quarantine at work."""

    @field_validator("start_date")
    @classmethod
    def _date(cls, v: str) -> str:
        from datetime import date

        try:
            date.fromisoformat(v)
        except ValueError:
            raise ValueError(f"generate.start_date is not an ISO date: {v!r}") from None
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        return _check_path(v, "generate.output")

    @field_validator("start_date", mode="before")
    @classmethod
    def _toml_date(cls, v: Any) -> Any:
        return _as_iso(v)


class CosineConfig(_Section):
    """similarity.method = "cosine": exact cosine of interaction-matrix columns."""

    confidence: ConfidenceTransform = "binary"
    """How a pair's interaction_matrix.confidence v becomes its matrix entry r (the same r weighs
    the user's votes in candidates): binary r = 1, linear r = v, log r = log(1 + v / epsilon)."""

    epsilon: float = Field(1.0, gt=0.0)
    """The scale of confidence = "log": r = log(1 + v / epsilon)."""

    min_similarity: float = Field(0.0, ge=0.0, le=1.0)
    """Pairs below this (shrunk) cosine are dropped."""

    min_cooccurrence: int = Field(1, ge=1)
    """Pairs seen together by fewer users than this are dropped (a noise guard)."""

    shrink: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Shrinkage: similarity = r_i . r_j / (||r_i|| ||r_j|| + shrink), which pulls pairs that few
    users share toward 0 (Koren 2008). 0 is the exact cosine, under which two rare items one user
    shares score 1 and outvote everything else on sparse logs."""

    top_n: int | None = Field(None, ge=1, le=100_000)
    """Neighbours kept per item; None: similarity.top_n."""


class EaseConfig(_Section):
    """similarity.method = "ease": EASE (Steck 2019), B = I - P / diag(P) with P = (X'X + l2 I)^-1.

    Each item is a closed-form linear model of all others; X'X comes from the block-sparse
    products, and the solve runs densely on the driver. There is no min_similarity: the weights are
    regression coefficients of either sign, pruned by top_n alone."""

    confidence: ConfidenceTransform = "linear"
    """How a pair's confidence v becomes its entry of X (and its vote weight in candidates):
    binary r = 1, linear r = v, log r = log(1 + v / epsilon)."""

    epsilon: float = Field(1.0, gt=0.0)
    """The scale of confidence = "log"."""

    l2: float = Field(500.0, gt=0.0)
    """The L2 penalty lambda added to the Gram matrix's diagonal, in units of r squared (it
    scales with the confidence transform); chosen on validation data by the search."""

    max_items: int = Field(25_000, ge=2)
    """The largest catalogue solved densely on the driver. The solve holds one n x n float64 matrix,
    factored and inverted in place (8 n^2 bytes: 5 GB at 25,000 items), in the Python driver rather
    than the JVM heap; the need is estimated and logged first, and a larger catalogue is an error
    naming this option."""

    top_n: int | None = Field(None, ge=1, le=100_000)
    """Weights kept per item, the largest in absolute value (negative ones too: they lower a
    candidate's score); None: similarity.top_n. With prune = "global" it is the mean per item."""

    prune: EasePrune = "item"
    """Where the top_n budget is spent. "item": each item keeps its own top_n weights largest in
    |B|. "global": the n_items x top_n weights largest in |B| anywhere in B, so an item with strong
    associations keeps more and one with weak ones fewer (a row's length is then between 0 and
    n_items - 1). Same table size, closer to the unpruned model: on ml-latest-small (numpy EASE,
    linear, l2 3000, random 20% per user held out) NDCG@10 was 0.3193 unpruned, 0.3123 / 0.3159
    keeping 500 / 2,000 per item, and 0.3173 / 0.3190 keeping as many globally. "score": as
    "global", ranked by |B_ij| * sqrt(G_ii), how much dropping the weight moves the training scores
    XB (item i's column norm times the weight), so a rarely seen item's weights give way to a popular
    one's; there (l2 3000, the project's split) 500 per item on average scored 0.3361 against
    "global"'s 0.3338 and 0.3353 unpruned."""


class Rp3betaConfig(_Section):
    """similarity.method = "rp3beta": a three-step random walk user -> item -> user -> item
    (Paudel et al. 2017): W_ij = sum_u P(u|i)^alpha P(j|u)^alpha / popularity(j)^beta."""

    confidence: ConfidenceTransform = "binary"
    """How a pair's confidence v becomes the walk's edge weight (and the vote weight)."""

    epsilon: float = Field(1.0, gt=0.0)
    """The scale of confidence = "log"."""

    alpha: float = Field(1.0, ge=0.0, le=4.0)
    """Exponent on the transition probabilities (1 is a plain random walk)."""

    beta: float = Field(0.5, ge=0.0, le=2.0)
    """Popularity penalty: each target item's score is divided by its popularity^beta."""

    min_similarity: float = Field(0.0, ge=0.0)
    """Pairs below this weight are dropped."""

    top_n: int | None = Field(None, ge=1, le=100_000)
    """Neighbours kept per item; None: similarity.top_n."""


class FactorCosineConfig(_Section):
    """similarity.method = "als": cosine of ALS item factors (latent neighbours)."""

    min_similarity: float = Field(0.0, ge=0.0, le=1.0)
    """Pairs below this cosine are dropped."""

    top_n: int | None = Field(None, ge=1, le=100_000)
    """Neighbours kept per item; None: similarity.top_n."""


NeighborMethod = Literal["cosine", "als", "ease", "rp3beta"]
MethodConfig = CosineConfig | EaseConfig | Rp3betaConfig | FactorCosineConfig


class SimilarityConfig(_Section):
    method: NeighborMethod = "cosine"
    """What the item-similarity job computes into its partition of item_neighbors (each method
    replaces only its own, so all can be kept side by side): cosine, behavioural neighbours from
    the interaction matrix; als, latent neighbours from ALS item factors (run train-als first);
    ease, EASE's item weights; rp3beta, random-walk neighbours. Each has its own section below."""

    top_n: int = Field(50, ge=1, le=100_000)
    """Neighbours kept per item, unless the method's own top_n says otherwise."""

    max_user_items: int = Field(500, ge=2)
    """cosine, ease, rp3beta: a longer user history is cut to its strongest items before pairing
    (cost grows with its square)."""

    block_items: int = Field(32768, ge=1, le=1_000_000)
    """Items per target block. cosine, ease, rp3beta: one task holds the interaction columns of one
    target block and one (smaller) query block; als: one task holds two blocks of factors and a
    bounded score buffer. Either way memory does not grow with the catalogue."""

    cosine: CosineConfig = Field(default_factory=CosineConfig)
    """method cosine."""

    ease: EaseConfig = Field(default_factory=EaseConfig)
    """method ease."""

    rp3beta: Rp3betaConfig = Field(default_factory=Rp3betaConfig)
    """method rp3beta."""

    als: FactorCosineConfig = Field(default_factory=FactorCosineConfig)
    """method als."""

    tune: bool = False
    """Choose the method's settings (cosine: top_n and shrink; ease: l2 and confidence; rp3beta:
    alpha and beta) by the search ([tuning]) on a validation carve-out before the fit; recorded in
    the item_neighbors commit."""

    def params(self, method: NeighborMethod | None = None) -> MethodConfig:
        """The section of ``method`` (default: ``self.method``)."""
        return getattr(self, method or self.method)

    def top_n_of(self, method: NeighborMethod | None = None) -> int:
        """Neighbours kept per item by ``method``: its own top_n, else the shared one."""
        own = self.params(method).top_n
        return own if own is not None else self.top_n


class AlsConfig(_Section):
    feedback: FeedbackKind = "implicit"
    """implicit: fit preferences weighted by confidence (Hu, Koren, Volinsky); explicit: fit ratings."""

    rank: int = Field(32, ge=1, le=1024)
    """Number of latent factors."""

    max_iter: int = Field(10, ge=1, le=200)
    """Alternating least-squares sweeps."""

    reg_param: float = Field(0.05, ge=0.0)
    """L2 regularisation λ (scaled by each user's / item's number of ratings, as in MLlib, unless
    ``reg_scale = "none"``)."""

    reg_scale: Literal["count", "none"] = "count"
    """How λ applies to a row: count: λ x its number of pairs (MLlib's scheme); none: λ itself
    (the ``implicit`` library's). "none" needs ``engine = "blocks"``."""

    engine: Literal["mllib", "blocks"] = "mllib"
    """mllib: Spark MLlib's ALS (exact Cholesky solves in its own block layout); blocks: the
    project's engine (recsys_spark/models/als_blocks.py): the pairs cached as CSR blocks by user
    and by item, each half-iteration one Arrow task per block that solves all of its rows by
    ``solver`` (CG in a compiled loop, or exact solves in numpy)."""

    solver: Literal["cg", "cholesky"] = "cg"
    """blocks engine: cg: ``cg_steps`` conjugate-gradient steps per half-iteration, warm-started
    from the previous factors (as the implicit library does); cholesky: each row's exact solve."""

    cg_steps: int = Field(3, ge=1, le=256)
    """blocks engine, solver cg: conjugate-gradient steps per row and half-iteration."""

    exchange: Literal["auto", "barrier", "broadcast", "joined"] = "auto"
    """blocks engine: how each half-iteration's tasks get the fixed side's factors. barrier: the
    whole fit is one barrier stage whose tasks keep their blocks and, every half-iteration, swap
    their solved rows for the whole side through a relay on the driver; broadcast: a Spark job per
    half-iteration, the fixed side broadcast; joined: a job per half-iteration, the fixed vectors a
    block needs joined to it, so neither side has to fit in one executor. auto: barrier when both
    sides fit under ``broadcast_limit_mb`` and dynamic allocation is off (Spark refuses barrier
    stages under it); else broadcast while they fit, else joined."""

    broadcast_limit_mb: float = Field(512.0, gt=0.0)
    """blocks engine, exchange auto: the largest side's factors (rows x rank x 4 bytes) that may be
    held whole by the driver and every task (barrier, broadcast); above it the fixed side is
    joined to the blocks that need it."""

    alpha: float = Field(10.0, ge=0.0)
    """Implicit feedback: a pair weighs 1 + alpha * r, r the pair's confidence after ``confidence``."""

    confidence: ConfidenceTransform = "linear"
    """Implicit feedback: how interaction_matrix.confidence v becomes r: binary r = 1, linear r = v,
    log r = log(1 + v / epsilon) (see recsys_spark/models/confidence.py)."""

    epsilon: float = Field(1.0, gt=0.0)
    """The scale of confidence = "log": r = log(1 + v / epsilon)."""

    nonnegative: bool = False
    """Constrain factors to be non-negative."""

    num_user_blocks: int | None = Field(None, ge=1)
    """User blocks (parallelism of each half-step); None: Spark's default parallelism."""

    num_item_blocks: int | None = Field(None, ge=1)
    """Item blocks; None: Spark's default parallelism."""

    seed: int = 42
    """Seed of the factor initialisation."""

    checkpoint_interval: int = Field(5, ge=1)
    """Checkpoint every this many iterations, so long lineages do not overflow the stack."""

    tune: bool = False
    """Choose rank, reg_param, alpha and confidence by the search ([tuning]) on a validation
    carve-out before the fit; the choice and every trial are recorded in the models row."""

    @model_validator(mode="after")
    def _engine_options(self) -> AlsConfig:
        if self.engine == "mllib" and self.reg_scale != "count":
            raise ValueError('als.reg_scale = "none" needs als.engine = "blocks" (MLlib always scales λ by the count)')
        if self.engine == "blocks" and self.nonnegative:
            raise ValueError(
                'als.nonnegative = true needs als.engine = "mllib" (the blocks engine solves unconstrained)'
            )
        return self


class CandidatesConfig(_Section):
    strategies: list[Strategy] = Field(default_factory=lambda: ["als"], min_length=1)
    """Candidate lists to build, each into its own partition of user_candidates: als (factor
    scores), item_item (summed neighbour similarity of the user's recent items, method
    neighbor_method), ease and rp3beta (the votes of the user's history through those methods'
    item_neighbors), blend (a weighted sum of blend_weights' sources, each min-max scaled per user)."""

    k: int = Field(100, ge=1, le=10_000)
    """Candidates kept per user."""

    min_history: int = Field(3, ge=1)
    """Users with fewer distinct items than this are cold: they get the popularity list instead."""

    cold_start_segment: Literal["overall", "recent"] = "recent"
    """Which popularity list cold users get (and lookups return for unknown users)."""

    popularity_window_days: int = Field(7, ge=1)
    """The "recent" popularity list counts users active on an item in this many days before the
    newest interaction."""

    popular_k: int = Field(1000, ge=1)
    """Items kept per popularity list (popular_items table)."""

    recent_items: int = Field(20, ge=1)
    """item_item: how many of the user's most recent items vote for candidates."""

    neighbor_method: Literal["cosine", "als"] = "cosine"
    """item_item: which item_neighbors partition to use."""

    max_history_votes: int = Field(500, ge=1)
    """ease, rp3beta: at most this many of the user's most recent items vote. Both models score a
    user from the whole history; the cap only bounds the work of the heaviest users."""

    tune: bool = False
    """Choose blend_weights by the search ([tuning]) on a validation carve-out: each source is
    refitted on the rest of the data and the weights that rank the held-out items best win."""

    blend_weights: dict[str, float] = Field(default_factory=lambda: {"als": 0.5, "item_item": 0.5})
    """blend: source strategy -> weight; each source's scores are min-max scaled per user to [0, 1]
    and the weighted sum ranks the list. Chosen on validation data by the search (tuning.blend)."""

    user_block: int = Field(4096, ge=1)
    """als: users per block of the blocked top-k (one task holds one user block)."""

    item_block: int = Field(65536, ge=1)
    """als: items per block; larger catalogues are scored block by block and merged in a second
    pass. A task holds one block of item factors (65,536 x rank 32 floats = 8 MiB) and a 16 MiB
    score buffer whatever the block size, so one block up to this size avoids the merge shuffle."""

    exclude_items: str = ""
    """Item eligibility rules: a UTF-8 file of item ids no list may hold (one per line, optionally
    ``item_id,reason``; ``#`` comments). The items are removed before ranking, so lists stay k
    long; the commit records the file's SHA-256. Empty: every item is eligible."""

    rows_per_file: int = Field(2_000_000, ge=1000)
    """Lookup layout: rows per output file. Files are range-partitioned by user_id, so a key's
    min/max statistics select one file."""

    @field_validator("strategies")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"candidates.strategies lists a strategy twice: {v}")
        return v

    @field_validator("blend_weights")
    @classmethod
    def _blend_weights(cls, v: dict[str, float]) -> dict[str, float]:
        sources = [s for s in get_args(Strategy) if s != "blend"]
        unknown = sorted(set(v) - set(sources))
        if unknown:
            raise ValueError(f"candidates.blend_weights: unknown source(s) {unknown}; sources are {sources}")
        if any(not math.isfinite(w) or w < 0 for w in v.values()):
            raise ValueError(f"candidates.blend_weights must be finite and >= 0, got {v}")
        if not any(w > 0 for w in v.values()):
            raise ValueError(f"candidates.blend_weights needs a source with a positive weight, got {v}")
        return v


class EvaluationConfig(_Section):
    split: Literal["random", "time", "leave_last", "given", "served"] = "random"
    """random: per-user stratified by test_fraction; time: global cutoff; leave_last: each user's
    leave_last_n most recent items; given: separate train/test files (given_train, given_test);
    served: no fitting at all, the lists user_candidates serves now are scored against the
    given_test file(s), the training data being interaction_matrix (what they were built from)."""

    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """random: share of each user's items held out; time: share of pairs after the cutoff when
    time_cutoff is not set."""

    time_cutoff: str | None = None
    """time: ISO-8601 instant (e.g. "2026-09-01T00:00:00Z"); pairs last seen at or after it are test."""

    leave_last_n: int = Field(1, ge=1)
    """leave_last: how many of each user's most recent items are held out."""

    given_train: str = ""
    """given: train file(s), read with ingest.source's format; "{fold}" is replaced by each fold."""

    given_test: str = ""
    """given: test file(s), as given_train."""

    folds: list[str] = Field(default_factory=list)
    """given: fold names substituted for "{fold}" (e.g. ["u1", "u2", "u3", "u4", "u5"]); empty: one split."""

    seed: int = 42
    """Seed of the random split, the random baseline and the user sample."""

    max_users: int | None = Field(None, ge=1)
    """Evaluate at most this many users: a seeded hash sample of the users with relevant test
    items (models still train on the whole training part). None: every such user."""

    ks: list[int] = Field(default_factory=lambda: [5, 10, 20, 50, 100], min_length=1)
    """Cut-offs at which every metric is computed."""

    rating_threshold: float = 4.0
    """Explicit data: a held-out rating at or above this is relevant (and its grade feeds graded
    NDCG). Implicit data: every held-out interaction is relevant."""

    baselines: list[Literal["popularity", "random"]] = Field(default_factory=lambda: ["popularity", "random"])
    """Baselines scored beside every strategy of candidates.strategies (which are all evaluated,
    from lists made by the code that writes user_candidates): popularity is the most popular
    unseen training items, random is seeded uniformly random unseen items."""

    headline_metric: Literal["ndcg", "precision", "recall", "map", "mrr", "hit_rate"] = "ndcg"
    """The metric a model must beat most-popular on (else it is flagged in the report)."""

    headline_k: int = Field(10, ge=1)
    """The cut-off of the headline metric (must be one of ks)."""

    output_dir: str = "data/reports"
    """Where evaluation.json and report.html go (a folder per run, plus latest/)."""

    @field_validator("time_cutoff", mode="before")
    @classmethod
    def _toml_datetime(cls, v: Any) -> Any:
        return _as_iso(v)

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, v: str) -> str:
        return _check_folder(v, "evaluation.output_dir")

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationConfig:
        if self.headline_k not in self.ks:
            raise ValueError(f"evaluation.headline_k = {self.headline_k} must be one of evaluation.ks {self.ks}")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"evaluation.ks must be positive, got {self.ks}")
        if self.split == "given" and not (self.given_train and self.given_test):
            raise ValueError("evaluation.split = 'given' needs evaluation.given_train and evaluation.given_test")
        if self.split == "served" and not self.given_test:
            raise ValueError("evaluation.split = 'served' needs evaluation.given_test (the held-out file(s))")
        if self.time_cutoff is not None:
            try:
                datetime.fromisoformat(self.time_cutoff.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"evaluation.time_cutoff {self.time_cutoff!r} is not an ISO-8601 instant") from None
        return self


class TuningConfig(_Section):
    """The hyperparameter search: what it may choose, and its budget.

    Every search is judged on a validation carve-out of the training data it is given (never a
    test fold): each user's ``validation_fraction`` of items, by the evaluation's headline metric
    at its headline k. It runs when a stage asks for it: ``als.tune`` (train-als),
    ``similarity.tune`` (item-similarity), ``candidates.tune`` (the candidates stage's blend weights), and in
    ``evaluate`` on each split's training part for each of them that is set.
    """

    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of each user's training items carved off as the validation part."""

    seed: int = 7
    """Seed of the carve-out and of the random search."""

    max_seconds: float = Field(1800.0, gt=0.0)
    """Budget of one search: trials not started by then are skipped (and logged as such)."""

    als_trials: int = Field(12, ge=1, le=1000)
    """ALS: configurations drawn at random (log-uniform) from the ranges below for the first rung."""

    als_keep: float = Field(0.34, gt=0.0, le=1.0)
    """ALS, successive halving: share of the first rung's trials refitted with als.max_iter iterations."""

    als_short_iter: int = Field(5, ge=1, le=200)
    """ALS: iterations of the first rung (cheap fits that rank the configurations)."""

    als_rank: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=1)
    """ALS ranks to draw from."""

    als_reg_param: list[float] = Field(default_factory=lambda: [0.003, 3.0], min_length=2, max_length=2)
    """ALS regularisation range (log-uniform); MLlib scales it by each row's number of ratings."""

    als_alpha: list[float] = Field(default_factory=lambda: [0.1, 50.0], min_length=2, max_length=2)
    """ALS confidence weight alpha range (log-uniform)."""

    als_confidence: list[ConfidenceTransform] = Field(default_factory=lambda: ["binary", "linear", "log"], min_length=1)
    """ALS confidence transforms to draw from."""

    ease_l2: list[float] = Field(
        default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0], min_length=1
    )
    """EASE: L2 penalties tried (a log grid; units of r squared, so the right range moves with the transform)."""

    ease_confidence: list[ConfidenceTransform] = Field(default_factory=lambda: ["binary", "linear"], min_length=1)
    """EASE: confidence transforms tried (each needs its own Gram matrix)."""

    ease_top_n: list[Annotated[int, Field(ge=1, le=100_000)]] | None = Field(None, min_length=1)
    """EASE: weights kept per item tried (similarity.ease.top_n), each with every l2; None tries
    only the configured one. Each l2 is solved once and pruned to each top_n. The pruning moves the
    best l2: on ml-latest-small (a numpy EASE, random 20% per user held out), keeping 500 of 9,724
    weights cost 5% of NDCG@10 at l2 2000 and 1.6% at l2 5000, and keeping 2,000 cost 2.8% and 0.5%."""

    ease_prune: list[EasePrune] | None = Field(None, min_length=1)
    """EASE: pruning rules tried (similarity.ease.prune), each with every l2 and top_n; None tries
    only the configured one. Re-pruning reuses the solve, as for top_n."""

    cosine_shrink: list[float] = Field(default_factory=lambda: [0.0, 10.0, 50.0, 200.0], min_length=1)
    """Item-item cosine: shrink values tried (similarity.cosine.shrink; in units of the norms' product)."""

    cosine_top_n: list[int] = Field(default_factory=lambda: [100, 400], min_length=1)
    """Item-item cosine: neighbours kept per item tried (similarity.cosine.top_n), each with every
    shrink. The list is a model choice, not only a cost: on ML-100K u1.base's carve-out, 400
    neighbours scored NDCG@10 0.178 where 100 scored 0.169."""

    rp3_alpha: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0], min_length=1)
    """RP3beta: alpha values tried."""

    rp3_beta: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75], min_length=1)
    """RP3beta: beta values tried."""

    blend_steps: int = Field(4, ge=1, le=20)
    """Blend: weights are tried on a grid of 1 / blend_steps over the simplex of its sources."""

    @field_validator("als_reg_param", "als_alpha")
    @classmethod
    def _range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        lo, hi = v
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"tuning.{info.field_name} must be a range 0 < low <= high, got {list(v)}")
        return v


class ServeConfig(_Section):
    """``recsys-spark serve``: the HTTP lookup service over the precomputed tables."""

    host: str = "127.0.0.1"
    """Address the service listens on; loopback by default, so nothing is exposed by accident."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0: any free port, printed at start-up)."""

    refresh_seconds: float = Field(5.0, gt=0, le=86_400)
    """How often a background thread looks for new table versions and switches to them. Requests
    never wait for it: they are answered from the snapshot in place."""

    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the listening socket, each with its own reader and reloader: a
    process answers one request at a time on one core (the lookups are CPU-bound), so on a
    machine with spare cores more workers serve more requests. Each switches to a new table
    version on its own, within ``refresh_seconds`` of the others; every response still comes
    from one snapshot and names its versions."""

    max_k: int = Field(100, ge=1, le=10_000)
    """The largest ``k`` a request may ask for (a larger one is a 422 naming ``k``)."""

    max_batch: int = Field(1000, ge=1, le=100_000)
    """The most users one ``POST /v1/recommendations`` may name (more is a 422 naming ``user_ids``)."""

    max_exclude: int = Field(1000, ge=0, le=100_000)
    """The most item ids one request may exclude."""

    exclusions_table: str = Field("", pattern=r"^([a-z][a-z0-9_]{0,62})?$")
    """A Delta table under storage.root of (user_id, item_id) pairs no response may hold, on top
    of each request's ``exclude=``: what users bought or hid since the candidates run. Written by
    the team's own jobs, re-read like the lookup tables; sorting it by user_id makes a lookup read
    one row group. Empty: none."""


class GateConfig(_Section):
    """``recsys-spark publish`` and the nightly job's last stage: the checks new lists must pass
    before readers switch to them (see README, "Running it every night")."""

    max_drop: float = Field(0.1, ge=0, le=1)
    """The largest relative drop of each strategy's headline metric (``evaluation.headline_metric``
    at ``headline_k``, this night's evaluation) against the last published run's: 0.1 refuses a
    model whose NDCG@10 fell by more than 10%."""

    max_rows_change: float = Field(0.5, ge=0)
    """The largest relative change of a strategy's row count against the last published version
    (0.5: between half and one and a half times as many rows)."""

    min_user_coverage: float = Field(0.95, ge=0, le=1)
    """The least share of the users in ``users`` each strategy must hold a list for (cold users
    get the popularity list, so a complete run covers all of them)."""

    min_item_coverage: float = Field(0.0, ge=0, le=1)
    """The least share of the catalogue each strategy's lists must show at least once."""

    max_coverage_drop: float = Field(0.5, ge=0, le=1)
    """The largest relative drop of a strategy's item coverage against the last published version:
    lists collapsing onto a few items are a broken model even when the metric holds."""

    max_changed_users: float = Field(1.0, ge=0, le=1)
    """The largest share of users whose top 10 may differ from the publication in force (1: no
    bound). Lists that all change overnight on a day of ordinary traffic are a model gone astray,
    or a mapping of ids gone wrong."""

    min_mean_rbo: float = Field(0.0, ge=0, le=1)
    """The least mean rank-biased overlap (p = 0.9) of the users' top 10 with the publication in
    force (0: no bound)."""


class RefreshConfig(_Section):
    """``recsys-spark refresh-users`` and the nightly job's choice between folding in the users whose
    interactions changed and a full retrain (see README, "Running it every night")."""

    fold_in: bool = False
    """Let the nightly job fold in the changed users (fresh user factors against the fixed item
    factors, and their candidate rows alone) when every bound below holds; false: any change of
    the interaction data retrains. Off by default because it does not pay at the demo's size:
    with 10% of 50,000 users changed a refresh took 1.9x the time of train-als + candidates
    (BENCHMARKS.md, "Fold-in refresh"), the rewrite of every unchanged user's lists into the
    lookup layout costing as much as building them. Turn it on where training dominates."""

    max_changed_users: float = Field(0.2, ge=0, le=1)
    """The largest share of the users, counted since the last full training, whose interactions
    may have changed for a night to fold in: past it, the items' factors and neighbours have
    drifted from what the users now do, so the night retrains."""

    retrain_every_days: float = Field(7.0, gt=0, le=3650)
    """A full retrain once the last one is this many days old, however few users changed: new
    items only enter the models, and the neighbours, at a retrain."""

    max_new_items: float = Field(0.05, ge=0, le=1)
    """The largest share of the catalogue that may have arrived since the last full training
    (items without a factor, which fold-in cannot recommend) for a night to fold in."""


class ExportConfig(_Section):
    """``recsys-spark export redis``: the served lists bulk-loaded into Redis."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """The Redis server and database (``redis://[:password@]host:port/db``; ``rediss://`` for TLS).
    Every executor connects to it, so on a cluster it must be reachable from the workers."""

    redis_prefix: str = Field("recsys", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """Namespace of every key the export writes and deletes; two deployments sharing one Redis
    need two prefixes."""

    batch_size: int = Field(1000, ge=1, le=100_000)
    """Commands sent per round trip (pipelined, not a transaction)."""

    socket_timeout_s: float = Field(10.0, gt=0, le=3600)
    """How long one Redis command may take before the export fails (it can be re-run)."""

    grace_seconds: float = Field(10.0, ge=0, le=86_400)
    """How long the replaced version's keys stay after the switch, for readers still on it: a
    reader that follows the pointer more often than this (the Redis reader: every second) never
    finds its version gone."""

    strategies: list[str] = Field(default_factory=list)
    """user_candidates strategies to export; empty exports every one the table holds."""

    methods: list[str] = Field(default_factory=list)
    """item_neighbors methods to export; empty exports every one the table holds."""


class Config(_Section):
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    """Spark session settings."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Delta table storage."""

    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    """The bundled synthetic interaction log."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Raw log -> interactions, id maps and the interaction matrix."""

    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    """Item-item cosine neighbours."""

    als: AlsConfig = Field(default_factory=AlsConfig)
    """ALS matrix factorisation."""

    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    """Per-user top-k candidate lists and popularity lists."""

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Held-out evaluation of the models against baselines."""

    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """The hyperparameter search (on a validation carve-out of the training data)."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    """The HTTP lookup service (``recsys-spark serve``)."""

    export: ExportConfig = Field(default_factory=ExportConfig)
    """Bulk export of the served lists (``recsys-spark export redis``)."""

    gate: GateConfig = Field(default_factory=GateConfig)
    """The checks new lists must pass before they are published to readers."""

    refresh: RefreshConfig = Field(default_factory=RefreshConfig)
    """Fold-in refreshes between full retrains, and when the nightly job chooses one."""

    @model_validator(mode="after")
    def _paths_outside_table_root(self) -> Config:
        root = _location(self.storage.root)
        for key, value, why in self._paths_near_tables():
            if not value:
                continue
            relation = _relation(_location(value), root)
            if relation:
                resolved = root[1] if root[0] == "file" else root[0] + root[1]
                raise ValueError(
                    f"{key} {value!r} {relation} the table root (storage.root = {self.storage.root!r}, "
                    f"that is {resolved} once '..' is resolved); {why}. Use a folder outside the table root"
                )
        return self

    def _paths_near_tables(self) -> list[tuple[str, str, str]]:
        """(key, path, why it must not overlap the table root) for every path option besides storage.root."""
        among = "files there would sit among the tables, where vacuum deletes files no table knows"
        reads = "ingest would read the tables' own data files as raw input"
        return [
            ("generate.output", self.generate.output, "generate replaces that folder, tables included"),
            (
                "evaluation.output_dir",
                self.evaluation.output_dir,
                f"evaluation replaces the latest/ folder in it, and {among}",
            ),
            ("spark.checkpoint_dir", self.spark.checkpoint_dir, f"Spark checkpoints there, and {among}"),
            ("ingest.source.path", self.ingest.source.path, reads),
            ("evaluation.given_train", self.evaluation.given_train, reads),
            ("evaluation.given_test", self.evaluation.given_test, reads),
        ]

    def config_hash(self) -> str:
        """Short stable hash of the effective config, recorded in every commit."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: Iterable[str]) -> Config:
        """A copy with ``section.key=value`` overrides applied to the original input and re-validated
        (so that changing ``ingest.source.preset`` re-applies the new preset)."""
        overrides = list(overrides)
        return validated(apply_overrides(copy.deepcopy(self._raw), overrides, DEFAULTS), "--set " + " ".join(overrides))


def _location(value: str) -> tuple[str, str]:
    """(filesystem, absolute path with '..' and, locally, links resolved) of a local path or URI."""
    if is_uri(value):
        scheme, rest = value.split("://", 1)
        scheme = {"s3a": "s3", "s3n": "s3"}.get(scheme.lower(), scheme.lower())
        authority, _, path = rest.partition("/")
        if scheme != "file":
            return f"{scheme}://{authority}", posixpath.normpath("/" + path)
        value = "/" + path
    return "file", str(Path(value).expanduser().resolve())


def _relation(path: tuple[str, str], root: tuple[str, str]) -> str | None:
    """How ``path`` overlaps ``root``: "is", "is inside", "contains", or None when they are apart."""
    if path[0] != root[0]:
        return None
    a, b = PurePosixPath(path[1]), PurePosixPath(root[1])
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


DEFAULTS = Config()
"""Every section at its defaults: tells sections from values when ``--set`` overrides apply."""


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "value_error" and not e["loc"]:
            # a check across sections: its message names the keys itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "value_error":
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return f"invalid configuration in {origin}:\n" + "\n".join(lines)


def validated(data: dict[str, Any], origin: str) -> Config:
    """A Config from raw ``data``; a ConfigError naming every bad key, and ``origin``, otherwise."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None
    cfg._raw = copy.deepcopy(data)
    return cfg
