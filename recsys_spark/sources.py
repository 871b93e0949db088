"""Reading raw interaction logs (CSV/TSV, JSON lines, Parquet) into one uniform shape.

Before Spark reads anything, the driver looks at the first bytes of every text file: a file that is
compressed, binary, UTF-16/32, a JSON array, or otherwise not what its name and the config say
stops the run with an error naming it (Spark would fail mid-read, or read garbage as rows).

Every format becomes a DataFrame of strings with the row's provenance, so that validation can
quarantine a bad row with its raw text, file and line number:

    source_file, line_number, raw_line, parse_error,
    user_id, item_id, event_type, value, timestamp, event_id

Text formats are read line by line with Spark's text reader and parsed with ``from_csv`` /
``from_json``, so a malformed line is kept rather than dropped. Line numbers are exact and
1-based: each file block's first row id and row count give the block's offset in its file.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recsys_spark.config import SourceConfig, spark_charset
from recsys_spark.errors import InputError

log = logging.getLogger(__name__)

FIELDS = ("user_id", "item_id", "event_type", "value", "timestamp", "event_id")
#: Rejected rows keep at most this much of their raw text.
RAW_LINE_LIMIT = 4096
#: Bytes of each text file read on the driver to check it is what it claims (and find its header).
SNIFF_BYTES = 64 * 1024
#: Above this share of control (or undecodable) bytes in its first SNIFF_BYTES a file is not text.
BINARY_FRACTION = 0.2
#: Compressions Spark (Hadoop) picks by file extension, and whether the driver can read them too.
_CODECS = {".gz": "gzip", ".bz2": "bz2", ".deflate": None, ".lz4": None, ".snappy": None, ".zst": None}
#: Leading bytes of formats that are not text, with what to tell the user.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data", "name it *.gz so that it is decompressed"),
    (b"BZh", "bzip2-compressed data", "name it *.bz2 so that it is decompressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress it first"),
    (b"PK\x03\x04", "a zip archive", "unpack it first"),
    (b"PAR1", "a Parquet file", "set ingest.source.format = 'parquet'"),
    (b"\x89PNG", "a PNG image", "remove it from the input"),
    (b"\xff\xd8\xff", "a JPEG image", "remove it from the input"),
    (b"%PDF", "a PDF document", "remove it from the input"),
    (b"\x7fELF", "an executable", "remove it from the input"),
)
#: Byte-order marks of encodings whose newline is not the byte 0x0A: they cannot be read line by line.
_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
              (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
_C1_BYTES = bytes(range(0x80, 0xA0))  # C1 controls: never in real ISO-8859-1 text
#: A JSON \uD800-\uDFFF escape that is not half of a surrogate pair: no UTF-8 text can hold it.
#: An escaped backslash before "u" ("\\ud800") is text, not an escape.
_LONE_SURROGATE = (r"(?<!\\)(?:\\\\)*(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                   r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})")


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


def list_source_files(path: str, option: str = "ingest.source.path") -> list[SourceFile]:
    """The files to ingest under ``path`` (a file, or a directory read recursively, hidden files skipped).

    ``option`` is the config key ``path`` came from, so that errors name it.
    """
    fs, base = _fs(path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{option} {path!r} does not exist")
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        listed = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                  if not _hidden(i.path[len(base):].lstrip("/"))]
        odd = [i.path for i in listed if i.type not in (pafs.FileType.File, pafs.FileType.Directory)]
        if odd:
            raise InputError(f"{odd[0]} (under {option} {path!r}) is not a regular file (a pipe, socket or "
                             "device?); move it out of the input directory")
        infos = [i for i in listed if i.type == pafs.FileType.File]
        if not infos:
            raise InputError(f"{option} {path!r} is a directory with no input files in it")
    else:
        raise InputError(f"{option} {path!r} is neither a regular file nor a directory (a pipe, socket or device?)")
    prefix = "" if isinstance(fs, pafs.LocalFileSystem) else path.split("://", 1)[0] + "://"
    files = sorted(
        (SourceFile(prefix + i.path, int(i.size), int((i.mtime_ns or 0) // 1_000_000)) for i in infos),
        key=lambda f: f.path,
    )
    for f in files:
        # Hadoop parses "a:b" in a path as a URI scheme, so Spark cannot open such a file at all.
        if ":" in f.path.split("://", 1)[-1]:
            raise InputError(f"{f.path}: Spark cannot read a file whose name contains ':'; rename it")
    return files


def _spark_path(path: str) -> str:
    # Spark expands glob characters in read paths; escape them so that "ev[1].csv" or "q?.csv"
    # means that one file, never other files the pattern happens to match.
    escaped = re.sub(r"([\\\[\]{}*?])", r"\\\1", path)
    return escaped if "://" in path else "file://" + escaped


def _extension(path: str) -> str:
    # Case-sensitive, as Hadoop's codec lookup is: "X.GZ" is not decompressed by Spark.
    return Path(path.split("://", 1)[-1]).suffix


def _is_binary(sample: bytes, encoding: str) -> bool:
    """Whether ``sample`` looks like binary data rather than text in ``encoding``."""
    if not sample:
        return False
    bad = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if encoding == "ISO-8859-1":
        bad += len(sample) - len(sample.translate(None, _C1_BYTES))
    else:
        bad += sample.decode("utf-8", errors="replace").count("\ufffd")
    return bad > BINARY_FRACTION * len(sample)


def _read_head(stream: pa.NativeFile, head: bytes, until_newline: int) -> bytes:
    """``head`` and what follows in ``stream``: at least SNIFF_BYTES, then up to a newline or ``until_newline`` bytes."""
    while True:
        chunk = stream.read(SNIFF_BYTES)
        head += chunk
        if not chunk or (len(head) >= SNIFF_BYTES and (b"\n" in head or len(head) > until_newline)):
            return head


def _sniff(f: SourceFile, source: SourceConfig, max_line_bytes: int) -> str | None:
    """Check that ``f`` is text of the configured kind; return its first line (None for an empty file).

    Raises InputError naming the file when it is compressed, binary, wide-encoded (UTF-16/32) or
    otherwise not what its name and the config say, before any Spark job reads it.
    """
    if f.size == 0:
        return None
    ext = _extension(f.path)
    if ext in _CODECS and _CODECS[ext] is None:
        if source.format != "json" and source.header:
            raise InputError(f"cannot read the header of {f.path}: ingest reads *.gz and *.bz2 compressed "
                             f"text with a header, not *{ext}; recompress it with gzip")
        return ""  # Spark decompresses it; the driver cannot look inside
    fs, p = _fs(f.path)
    codec = _CODECS.get(ext)
    with fs.open_input_stream(p, compression=None) as raw:  # the default would guess by extension
        magic = raw.read(8)
        if codec:
            want = b"\x1f\x8b" if codec == "gzip" else b"BZh"
            if not magic.startswith(want):
                raise InputError(f"{f.path} is named *{ext} but is not {codec} data; rename or recompress it")
        else:
            for prefix, kind, hint in _MAGIC:
                if magic.startswith(prefix):
                    raise InputError(f"{f.path} is {kind}, not {source.format} text "
                                     f"(ingest.source.format = {source.format!r}): {hint}")
            head = _read_head(raw, magic, max_line_bytes)
    if codec:
        try:
            with fs.open_input_stream(p, compression=codec) as stream:
                head = _read_head(stream, b"", max_line_bytes)
        except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
            raise InputError(f"{f.path} could not be decompressed ({codec}): {exc}. The file is truncated or "
                             "corrupt; nothing was read from it") from None
    return _check_text(f.path, head, source, max_line_bytes)


def _check_text(path: str, head: bytes, source: SourceConfig, max_line_bytes: int) -> str | None:
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise InputError(f"{path} is {name} text (it starts with a {name} byte-order mark); ingest reads "
                             f"UTF-8, US-ASCII or ISO-8859-1 line by line. Convert it, e.g. "
                             f"`iconv -f {name} -t UTF-8`")
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    encoding = spark_charset(source.encoding)
    if _is_binary(head[:SNIFF_BYTES], encoding):
        raise InputError(f"{path} is not text: its first bytes are mostly control characters or not valid "
                         f"{encoding} (binary data, or a wide encoding such as UTF-16 without a byte-order mark)")
    if not head.strip():
        return None
    newline = head.find(b"\n")
    first = head if newline < 0 else head[:newline]
    first_text = first.decode("utf-8" if encoding != "ISO-8859-1" else "latin-1", errors="replace").rstrip("\r")
    if source.format == "json":
        start = head.lstrip()[:1]
        if start == b"[":
            raise InputError(f"{path} holds a JSON array; ingest reads JSON lines (one object per line). "
                             "Convert it, e.g. `jq -c '.[]'`")
        if first_text.strip() == "{":
            raise InputError(f"{path} looks like pretty-printed JSON (line 1 is just '{{'); ingest reads JSON "
                             "lines (one object per line). Convert it, e.g. `jq -c .`")
        return first_text
    if source.header:
        if len(first) > max_line_bytes:
            raise InputError(f"line 1 of {path} (the header, ingest.source.header = true) is longer than "
                             f"ingest.max_line_bytes = {max_line_bytes:,} bytes: is it the right file, and "
                             "ingest.source.format / delimiter right?")
        if not first_text.strip():
            raise InputError(f"line 1 of {path} should be the header (ingest.source.header = true) but is blank")
    return first_text


def _split_header(line: str, sep: str) -> list[str]:
    # The same quoting rules as the rows (RFC 4180: quotes doubled inside quoted fields).
    fields = next(csv.reader([line], delimiter=sep, quotechar='"', doublequote=True), [])
    return [h.strip() for h in fields]


def _text_columns(source: SourceConfig, files: Sequence[SourceFile], firsts: dict[str, str | None]) -> list[str]:
    """Column names of delimited files: the configured names, or the (identical) header of every file."""
    if not source.header:
        columns = list(source.field_names or [])
        _check_names(columns, "ingest.source.field_names")
        return columns
    headers: dict[str, list[str]] = {}
    for f in files:
        line = firsts.get(f.path)
        if line is None:
            continue  # an empty file has no header and no rows
        headers[f.path] = _split_header(line.lstrip("\ufeff"), source.separator)
    if not headers:
        return []
    first_path, first = next(iter(headers.items()))
    for path, cols in headers.items():
        if cols != first:
            raise InputError(f"header of {path} {cols} differs from the header of {first_path} {first}")
    _check_names(first, f"the header of {first_path}")
    return first


def _check_names(columns: Sequence[str], where: str) -> None:
    blank = [i + 1 for i, c in enumerate(columns) if not c]
    if blank:
        raise InputError(f"{where} has no name for column(s) {blank}; columns are {list(columns)}")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise InputError(f"{where} names column(s) {dupes} more than once; columns are {list(columns)}")


def _mapped(source: SourceConfig) -> dict[str, str | None]:
    return {"user_id": source.user_col, "item_id": source.item_col, "event_type": source.event_type_col,
            "value": source.value_col, "timestamp": source.timestamp_col, "event_id": source.event_id_col}


def _check_columns(source: SourceConfig, available: Sequence[str], where: str) -> None:
    missing = [f"{key} -> {col!r}" for key, col in _mapped(source).items() if col and col not in available]
    if not missing:
        return
    shown = list(available) if sum(len(c) for c in available) < 500 else [c[:40] + "..." for c in available[:10]]
    hint = "Fix ingest.source.*_col or the preset."
    if source.format != "parquet" and len(available) == 1:
        seps = [s for s in (",", "\t", ";", "|") if s in available[0] and s != source.separator]
        if seps:
            hint = (f"The header is one column but contains {seps[0]!r}: set ingest.source.delimiter = "
                    f"{seps[0]!r} (or ingest.source.format = {'tsv' if seps[0] == chr(9) else 'csv'!r}).")
    raise InputError(f"{where} has no column for {', '.join(missing)}; columns are {shown}. {hint}")


def _line_numbers(lines: DataFrame, file_paths: dict[str, str], files: Sequence[SourceFile]) -> DataFrame:
    """Attach source_file and an exact 1-based line_number to rows of Spark's text reader."""
    lines = lines.select(
        F.col("_metadata.file_path").alias("_fp"), F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_rid"), "value",
    )
    with file_read_errors(files):
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


_READ_FAILURE = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)")


@contextmanager
def file_read_errors(files: Sequence[SourceFile]) -> Iterator[None]:
    """Turn Spark's failure to read one of ``files`` (a truncated gzip, a corrupt Parquet page) into
    an InputError naming the file and the cause, instead of a JVM stack trace."""
    try:
        yield
    except Exception as exc:  # Py4JJavaError or a captured SparkException: both carry the text below
        text = str(exc)
        found = _READ_FAILURE.search(text)
        if not found:
            raise
        path = _source_path(found.group(1), {f.path: f.path for f in files})
        causes = re.findall(r"Caused by: ([\w.$]+(?:Exception|Error)[^\n]*)", text)
        cause = causes[-1].strip() if causes else text.strip().splitlines()[0]
        raise InputError(f"{path} could not be read: {cause}. It is truncated, corrupt or not the format "
                         "its name says; nothing was committed") from None


def _raw_line(col: Column) -> Column:
    return F.when(F.length(col) > RAW_LINE_LIMIT,
                  F.concat(F.substring(col, 1, RAW_LINE_LIMIT), F.lit("...[truncated]"))).otherwise(col)


def _ddl_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _decoded(value: Column, charset: str) -> tuple[Column, Column]:
    """(text, valid) of a raw line from Spark's text reader, whose string holds the file's bytes."""
    if charset == "UTF-8":
        valid = F.is_valid_utf8(value)
        # A line that is not UTF-8 is kept as ISO-8859-1, which maps every byte to one character:
        # the quarantined raw text stays valid UTF-8 (readable by any Delta reader) and loses nothing.
        return F.when(valid, value).otherwise(F.decode(value.cast("binary"), "ISO-8859-1")), valid
    if charset == "US-ASCII":
        valid = F.is_valid_utf8(value) & ~value.rlike(r"[^\x{00}-\x{7F}]")
        return F.when(valid, value).otherwise(F.decode(value.cast("binary"), "ISO-8859-1")), valid
    return F.decode(value.cast("binary"), charset), F.lit(True)


def _read_text(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile], max_line_bytes: int) -> DataFrame:
    firsts = {f.path: _sniff(f, source, max_line_bytes) for f in files}
    columns = _text_columns(source, files, firsts) if source.format != "json" else []
    if source.format != "json":
        if not columns:  # every file is empty
            return _empty(spark)
        _check_columns(source, columns, f"input {files[0].path}")
    lines = spark.read.text([_spark_path(f.path) for f in files])
    lines = _line_numbers(lines, {f.path: f.path for f in files}, files)
    value, valid = _decoded(F.col("value"), spark_charset(source.encoding))
    too_long = F.octet_length(F.col("value")) > max_line_bytes
    value = F.regexp_replace(value, r"^\x{FEFF}|\r$", "")  # BOM, and CR of CRLF files
    lines = lines.select("source_file", "line_number", value.alias("line"), valid.alias("_valid"),
                         too_long.alias("_long"))
    if source.format != "json" and source.header:
        lines = lines.where(F.col("line_number") > 1)
    lines = lines.where(F.trim(F.col("line")) != "")  # blank lines carry no event

    too_long = F.col("_long")
    schema_cols = [f"{_ddl_name(c)} STRING" for c in columns] if columns else [
        f"{_ddl_name(c)} STRING" for c in dict.fromkeys(c for c in _mapped(source).values() if c)]
    ddl = ", ".join([*schema_cols, "`_corrupt` STRING"])
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"}
    line = F.col("line")
    if source.format == "json":
        parsed = F.from_json(F.when(~too_long, line), ddl, opts)
        # from_json reads the first JSON value and ignores whatever follows it; a line must be one
        # object and nothing else, or '{..}{..}' would silently lose its second event.
        plain = F.regexp_replace(line, r"[+-]?\b(NaN|Infinity|INF)\b", "0")  # non-standard numbers from_json allows
        broken = ~too_long & ((F.coalesce(F.json_array_length(F.concat(F.lit("["), plain, F.lit("]"))), F.lit(0)) != 1)
                              | ~F.rtrim(line).endswith("}"))
        # The JSON type of each field (a boolean is no id; the string parse renders true as "true").
        # The VARIANT parse fails where a field holds a lone surrogate escape, which the string
        # parse would store as "?".
        kinds_ddl = ", ".join([*(c.replace(" STRING", " VARIANT") for c in schema_cols), "`_corrupt` STRING"])
        kinds = F.from_json(F.when(~too_long, line), kinds_ddl, opts)
        keys = F.json_object_keys(F.when(~too_long, line))
        lines = lines.withColumn("_k", kinds).withColumn(
            "_dup", F.size(keys) != F.size(F.array_distinct(keys)))  # from_json keeps the last, silently
    else:
        # RFC 4180: a quote inside a quoted field is doubled. Every complete one-line record has an
        # even number of quotes; an odd count is a field cut by a line break or a stray quote.
        parsed = F.from_csv(F.when(~too_long, line), ddl, {**opts, "sep": source.separator, "escape": '"'})
        broken = ((F.length(line) - F.length(F.replace(line, F.lit('"'), F.lit("")))) % 2) == 1
    lines = lines.withColumn("_p", parsed)
    error = (F.when(~F.col("_valid"), "invalid_encoding")
             .when(too_long, "oversize_line"))
    if source.format == "json":
        error = error.when(F.col("_k._corrupt").isNotNull() & line.rlike(_LONE_SURROGATE), "invalid_encoding")
    error = error.when(F.col("_p").isNull() | F.col("_p._corrupt").isNotNull() | broken, "malformed_row")
    if source.format == "json":
        error = error.when(F.col("_dup"), "duplicate_key")
    out = [F.col("source_file"), F.col("line_number"), _raw_line(line).alias("raw_line"),
           error.alias("parse_error")]
    for key, col in _mapped(source).items():
        field = F.col("_p").getField(col) if col else F.lit(None).cast("string")
        if source.format == "json" and col:
            # A JSON array or object where an id or value belongs is not a scalar: mark it.
            field = F.when(field.rlike(r"^\s*[\[{]"), F.lit("\x00<non-scalar>")).otherwise(field)
            # from_json renders the bare NaN / Infinity it accepts as quoted strings; unquote them
            # so that they are rejected as non_finite_value, like "NaN" in any other format.
            field = F.regexp_replace(field, r'^"([+-]?(NaN|Infinity))"$', "$1")
            if key in ("user_id", "item_id", "event_id"):
                field = F.when(F.schema_of_variant(F.col("_k").getField(col)) == "BOOLEAN",
                               F.lit("\x00<boolean>")).otherwise(field)
        out.append(field.alias(key))
    return lines.select(*out)


def _parquet_schemas(source: SourceConfig, files: Sequence[SourceFile]) -> list[str]:
    """Column names of the Parquet files, after checking each is Parquet with the mapped columns
    and that a mapped column has the same type in every file (Spark cannot read a mix)."""
    columns: list[str] | None = None
    types: dict[str, tuple[str, str]] = {}  # column -> (type, first file with it)
    for f in files:
        fs, p = _fs(f.path)
        try:
            with fs.open_input_file(p) as fh:
                schema = pq.read_schema(fh)
        except Exception as exc:  # pyarrow raises several types for "not a Parquet file"
            raise InputError(f"{f.path} is not a readable Parquet file: {exc}") from None
        _check_columns(source, schema.names, f"Parquet file {f.path}")
        columns = columns or schema.names
        for col in filter(None, _mapped(source).values()):
            kind = str(schema.field(col).type)
            seen = types.setdefault(col, (kind, f.path))
            if seen[0] != kind:
                raise InputError(f"column {col!r} is {kind} in {f.path} but {seen[0]} in {seen[1]}; Spark cannot "
                                 "read Parquet files whose column types differ. Ingest them separately")
    return columns or []


def _read_parquet(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile]) -> DataFrame:
    _parquet_schemas(source, files)
    df = spark.read.parquet(*[_spark_path(f.path) for f in files])
    file_paths = {f.path: f.path for f in files}
    with file_read_errors(files):
        uris = [r[0] for r in df.select("_metadata.file_path").distinct().collect()]
    names = spark.createDataFrame([(u, _source_path(u, file_paths)) for u in uris], "_fp STRING, source_file STRING")
    data_cols = list(df.columns)
    df = (df.withColumn("_fp", F.col("_metadata.file_path")).withColumn("_row", F.col("_metadata.row_index"))
          .join(F.broadcast(names), "_fp"))
    out = [F.col("source_file"),
           (F.col("_row") + 1).alias("line_number"),
           _raw_line(F.to_json(F.struct(*[F.col(_ddl_name(c)) for c in data_cols]))).alias("raw_line"),
           F.lit(None).cast("string").alias("parse_error")]
    for key, col in _mapped(source).items():
        if not col:
            out.append(F.lit(None).cast("string").alias(key))
            continue
        dtype = df.schema[col].dataType.typeName()
        field = F.col(_ddl_name(col))
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
