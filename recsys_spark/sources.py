"""Reading raw interaction logs (CSV/TSV, JSON lines, Parquet) into one uniform shape.

Every format becomes a DataFrame of strings with the row's provenance, so that validation can
quarantine a bad row with its raw text, file and line number:

    source_file, line_number, raw_line, parse_error,
    user_id, item_id, event_type, value, timestamp, event_id

Text formats are read line by line with Spark's text reader and parsed with ``from_csv`` /
``from_json``, so a malformed line is kept rather than dropped. Line numbers are exact and
1-based: each file block's first row id and row count give the block's offset in its file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recsys_spark.config import SourceConfig
from recsys_spark.errors import InputError

log = logging.getLogger(__name__)

FIELDS = ("user_id", "item_id", "event_type", "value", "timestamp", "event_id")
#: Rejected rows keep at most this much of their raw text.
RAW_LINE_LIMIT = 4096


@dataclass(frozen=True)
class SourceFile:
    """One input file, identified for the ingest ledger by path, size and modification time."""

    path: str
    size: int
    mtime_ms: int


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path.replace("s3a://", "s3://"))
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def list_source_files(path: str) -> list[SourceFile]:
    """The files to ingest under ``path`` (a file, or a directory read recursively, hidden files skipped)."""
    fs, base = _fs(path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"ingest.source.path {path!r} does not exist")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if i.type == pafs.FileType.File and not _hidden(i.path[len(base):].lstrip("/"))]
        if not infos:
            raise InputError(f"ingest.source.path {path!r} is a directory with no input files in it")
    prefix = "" if isinstance(fs, pafs.LocalFileSystem) else path.split("://", 1)[0] + "://"
    return sorted(
        (SourceFile(prefix + i.path, int(i.size), int((i.mtime_ns or 0) // 1_000_000)) for i in infos),
        key=lambda f: f.path,
    )


def _spark_path(path: str) -> str:
    return path if "://" in path else "file://" + path


def _first_line(path: str, encoding: str) -> str:
    fs, p = _fs(path)
    compression = "gzip" if p.endswith(".gz") else None
    with fs.open_input_stream(p, compression=compression) as raw:
        head = raw.read(1 << 20)
    text = head.decode(encoding, errors="replace")
    return io.StringIO(text).readline().rstrip("\r\n").lstrip("\ufeff")


def _text_columns(source: SourceConfig, files: Sequence[SourceFile]) -> list[str]:
    """Column names of delimited files: the configured names, or the (identical) header of every file."""
    if not source.header:
        return list(source.field_names or [])
    headers: dict[str, list[str]] = {}
    for f in files:
        line = _first_line(f.path, source.encoding)
        if not line:
            continue  # an empty file has no header and no rows
        headers[f.path] = [h.strip().strip('"') for h in line.split(source.separator)]
    if not headers:
        return []
    first_path, first = next(iter(headers.items()))
    for path, cols in headers.items():
        if cols != first:
            raise InputError(f"header of {path} {cols} differs from the header of {first_path} {first}")
    return first


def _mapped(source: SourceConfig) -> dict[str, str | None]:
    return {"user_id": source.user_col, "item_id": source.item_col, "event_type": source.event_type_col,
            "value": source.value_col, "timestamp": source.timestamp_col, "event_id": source.event_id_col}


def _check_columns(source: SourceConfig, available: Sequence[str], where: str) -> None:
    missing = [f"{key} -> {col!r}" for key, col in _mapped(source).items() if col and col not in available]
    if missing:
        raise InputError(
            f"{where} has no column for {', '.join(missing)}; columns are {list(available)}. "
            "Fix ingest.source.*_col or the preset."
        )


def _line_numbers(lines: DataFrame, file_paths: dict[str, str]) -> DataFrame:
    """Attach source_file and an exact 1-based line_number to rows of Spark's text reader."""
    lines = lines.select(
        F.col("_metadata.file_path").alias("_fp"), F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_rid"), "value",
    )
    blocks = lines.groupBy("_fp", "_block").agg(F.min("_rid").alias("_first"), F.count("*").alias("_n")).collect()
    offsets = []
    done: dict[str, int] = {}
    for b in sorted(blocks, key=lambda r: (r["_fp"], r["_block"])):
        offsets.append((b["_fp"], b["_block"], b["_first"], done.get(b["_fp"], 0), _source_path(b["_fp"], file_paths)))
        done[b["_fp"]] = done.get(b["_fp"], 0) + b["_n"]
    schema = StructType([StructField("_fp", StringType()), StructField("_block", LongType()),
                         StructField("_first", LongType()), StructField("_offset", LongType()),
                         StructField("source_file", StringType())])
    table = lines.sparkSession.createDataFrame(offsets, schema)
    return (lines.join(F.broadcast(table), ["_fp", "_block"])
            .withColumn("line_number", F.col("_offset") + F.col("_rid") - F.col("_first") + 1)
            .drop("_fp", "_block", "_rid", "_first", "_offset"))


def _source_path(spark_file_path: str, file_paths: dict[str, str]) -> str:
    """Map Spark's URL-encoded file URI back to the path the user gave."""
    decoded = unquote(spark_file_path)
    for prefix in ("file://", "file:"):
        if decoded.startswith(prefix):
            decoded = decoded[len(prefix):]
            break
    return file_paths.get(decoded, decoded)


def _raw_line(col: Column) -> Column:
    return F.when(F.length(col) > RAW_LINE_LIMIT,
                  F.concat(F.substring(col, 1, RAW_LINE_LIMIT), F.lit("...[truncated]"))).otherwise(col)


def _read_text(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile], max_line_bytes: int) -> DataFrame:
    columns = _text_columns(source, files) if source.format != "json" else []
    if source.format != "json":
        if not columns:  # every file is empty
            return _empty(spark)
        _check_columns(source, columns, f"input {files[0].path}")
    lines = spark.read.text([_spark_path(f.path) for f in files])
    lines = _line_numbers(lines, {f.path: f.path for f in files})
    value = F.col("value")
    valid = F.is_valid_utf8(value)
    if source.encoding.upper().replace("-", "") not in ("UTF8",):
        # The text reader keeps the file's bytes; decode them with the configured charset.
        value, valid = F.decode(value.cast("binary"), source.encoding), F.lit(True)
    value = F.regexp_replace(value, r"^\x{FEFF}|\r$", "")  # BOM, and CR of CRLF files
    lines = lines.select("source_file", "line_number", value.alias("line"), valid.alias("_valid"))
    if source.format != "json" and source.header:
        lines = lines.where(F.col("line_number") > 1)
    lines = lines.where(F.trim(F.col("line")) != "")  # blank lines carry no event

    too_long = F.length("line") > max_line_bytes
    schema_cols = [f"`{c}` STRING" for c in columns] if columns else [
        f"`{c}` STRING" for c in dict.fromkeys(c for c in _mapped(source).values() if c)]
    ddl = ", ".join([*schema_cols, "`_corrupt` STRING"])
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"}
    if source.format == "json":
        parsed = F.from_json(F.when(~too_long, F.col("line")), ddl, opts)
    else:
        parsed = F.from_csv(F.when(~too_long, F.col("line")), ddl, {**opts, "sep": source.separator})
    lines = lines.withColumn("_p", parsed)
    error = (F.when(~F.col("_valid"), "invalid_encoding")
             .when(too_long, "oversize_line")
             .when(F.col("_p").isNull() | F.col("_p._corrupt").isNotNull(), "malformed_row"))
    out = [F.col("source_file"), F.col("line_number"), _raw_line(F.col("line")).alias("raw_line"),
           error.alias("parse_error")]
    for key, col in _mapped(source).items():
        field = F.col(f"_p.`{col}`") if col else F.lit(None).cast("string")
        if source.format == "json" and col:
            # A JSON array or object where an id or value belongs is not a scalar: mark it.
            field = F.when(field.rlike(r"^\s*[\[{]"), F.lit("\x00<non-scalar>")).otherwise(field)
        out.append(field.alias(key))
    return lines.select(*out)


def _read_parquet(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile]) -> DataFrame:
    columns: list[str] | None = None
    for f in files:
        fs, p = _fs(f.path)
        try:
            with fs.open_input_file(p) as fh:
                names = pq.read_schema(fh).names
        except Exception as exc:  # pyarrow raises several types for "not a Parquet file"
            raise InputError(f"{f.path} is not a readable Parquet file: {exc}") from None
        _check_columns(source, names, f"Parquet file {f.path}")
        columns = columns or names
    df = spark.read.parquet(*[_spark_path(f.path) for f in files])
    file_paths = {f.path: f.path for f in files}
    uris = [r[0] for r in df.select("_metadata.file_path").distinct().collect()]
    names = spark.createDataFrame([(u, _source_path(u, file_paths)) for u in uris], "_fp STRING, source_file STRING")
    data_cols = list(df.columns)
    df = (df.withColumn("_fp", F.col("_metadata.file_path")).withColumn("_row", F.col("_metadata.row_index"))
          .join(F.broadcast(names), "_fp"))
    out = [F.col("source_file"),
           (F.col("_row") + 1).alias("line_number"),
           _raw_line(F.to_json(F.struct(*[F.col(f"`{c}`") for c in data_cols]))).alias("raw_line"),
           F.lit(None).cast("string").alias("parse_error")]
    for key, col in _mapped(source).items():
        if not col:
            out.append(F.lit(None).cast("string").alias(key))
            continue
        dtype = df.schema[col].dataType.typeName()
        field = F.col(f"`{col}`")
        if key == "timestamp" and dtype in ("timestamp", "timestamp_ntz"):
            field = F.date_format(field, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
        elif dtype in ("float", "double"):
            field = F.when(F.isnan(field), "NaN").otherwise(field.cast("string"))
        out.append(field.cast("string").alias(key))
    return df.select(*out)


def _empty(spark: SparkSession) -> DataFrame:
    schema = StructType([StructField("source_file", StringType()), StructField("line_number", LongType()),
                         StructField("raw_line", StringType()), StructField("parse_error", StringType()),
                         *[StructField(k, StringType()) for k in FIELDS]])
    return spark.createDataFrame([], schema)


def read_source(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile],
                max_line_bytes: int) -> DataFrame:
    """All rows of ``files`` in the uniform raw shape (see module docstring)."""
    if not files:
        return _empty(spark)
    log.info("reading %d %s file(s) (%.1f MB) with preset %s", len(files), source.format,
             sum(f.size for f in files) / 1e6, source.preset)
    if source.format == "parquet":
        return _read_parquet(spark, source, files)
    return _read_text(spark, source, files, max_line_bytes)
