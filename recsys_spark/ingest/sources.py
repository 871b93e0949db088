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
Spark's reader ends a line at LF, CR or CRLF, so the driver, which reads line 1 as the header,
splits by the same rule: with any other rule a CR-only file's header would be the whole file.

Parquet columns are checked on the driver from the footers, before Spark reads a byte: Spark fails
a whole read on a type it cannot convert (and names neither file nor column), and reads some types
into text that means something else (a float id as "1.0", a list as "[a]"). Each mapped field
therefore accepts a fixed set of Arrow kinds (_READS) and refuses the rest with the fix.

Local input folders are walked here rather than by pyarrow, which follows a symbolic link back up
the tree some 40 levels deep before the OS stops it, and skips a dangling link without a word.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recsys_spark.config.schema import SourceConfig, spark_charset
from recsys_spark.errors import InputError
from recsys_spark.uris import absolute, filesystem, spark_uri

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
_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 32), 127])
_C1_BYTES = bytes(range(0x80, 0xA0))  # C1 controls: never in real ISO-8859-1 text
#: A JSON \uD800-\uDFFF escape that is not half of a surrogate pair: no UTF-8 text can hold it.
#: An escaped backslash before "u" ("\\ud800") is text, not an escape.
_LONE_SURROGATE = (
    r"(?<!\\)(?:\\\\)*(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


@dataclass(frozen=True)
class SourceFile:
    """One input file, identified for the ingest ledger by path, size and modification time."""

    path: str
    size: int
    mtime_ms: int


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


@dataclass(frozen=True)
class SourceScan:
    """What a scan of ``ingest.source.path`` found: the files to read, and the links it did not follow."""

    files: list[SourceFile]
    #: Symbolic links whose target does not exist (skipped, with a warning).
    dangling_links: list[str] = field(default_factory=list)
    #: Links to a directory that is already on the path from the input root (entering one would
    #: list the same files again, level after level), and links in a cycle of links; not entered.
    symlink_loops: list[str] = field(default_factory=list)


def _not_regular(path: str, option: str, root: str) -> InputError:
    return InputError(
        f"{path} (under {option} {root!r}) is not a regular file (a pipe, socket or device?); "
        "move it out of the input directory"
    )


def _walk_local(base: str, option: str, root: str) -> SourceScan:
    """Every non-hidden regular file under the local directory ``base``, following links.

    pyarrow's recursive listing follows a link back up the tree until the OS says ELOOP (about
    40 levels, each listing everything again) and drops a dangling link silently. This walk keeps
    the (st_dev, st_ino) of the directories on the current path, so a link to one of them is cut
    at once, and names what it skipped. A directory or file reached along two different paths is
    listed once per path: the path is the ledger's identity, and the dedupe keeps each event once.
    """
    files: list[SourceFile] = []
    dangling: list[str] = []
    loops: list[str] = []

    top = os.stat(base)
    todo: list[tuple[str, frozenset[tuple[int, int]]]] = [(base, frozenset({(top.st_dev, top.st_ino)}))]
    while todo:  # a stack, not recursion: a deep tree must not hit Python's recursion limit
        folder, on_path = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{folder} (under {option} {root!r}) cannot be listed: {exc.strerror}") from None
        for entry in entries:
            if entry.name.startswith(("_", ".")):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                if not entry.is_symlink():
                    raise InputError(
                        f"{entry.path} (under {option} {root!r}) disappeared while the input was "
                        "being listed; is another process moving files? Re-run when it is done"
                    ) from None
                log.warning(
                    "skipping %s: a symbolic link to %s, which does not exist", entry.path, os.readlink(entry.path)
                )
                dangling.append(entry.path)
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a -> b -> a: links that never reach a file
                    log.warning("skipping %s: a cycle of symbolic links that never reaches a file", entry.path)
                    loops.append(entry.path)
                    continue
                raise InputError(f"{entry.path} (under {option} {root!r}) cannot be read: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in on_path:
                    log.warning(
                        "not entering %s: a symbolic link to %s, a directory it is already inside (a loop)",
                        entry.path,
                        os.path.realpath(entry.path),
                    )
                    loops.append(entry.path)
                    continue
                todo.append((entry.path, on_path | {key}))
            elif stat.S_ISREG(st.st_mode):
                files.append(SourceFile(entry.path, int(st.st_size), int(st.st_mtime_ns // 1_000_000)))
            else:
                raise _not_regular(entry.path, option, root)
    return SourceScan(files, dangling, loops)


def scan_source_files(path: str, option: str = "ingest.source.path") -> SourceScan:
    """The files to ingest under ``path`` (a file, or a directory read recursively, hidden files
    skipped), and the symbolic links that were skipped.

    ``option`` is the config key ``path`` came from, so that errors name it. Local directories are
    walked here (see :func:`_walk_local`); remote ones are listed by pyarrow (object stores have no links).
    """
    fs, base = filesystem(absolute(path))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{option} {path!r} does not exist")
    prefix = "" if isinstance(fs, pafs.LocalFileSystem) else path.split("://", 1)[0] + "://"
    if info.type == pafs.FileType.File:
        scan = SourceScan([SourceFile(prefix + info.path, int(info.size), int((info.mtime_ns or 0) // 1_000_000))])
    elif info.type == pafs.FileType.Directory and isinstance(fs, pafs.LocalFileSystem):
        scan = _walk_local(base, option, path)
    elif info.type == pafs.FileType.Directory:
        listed = [
            i
            for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if not _hidden(i.path[len(base) :].lstrip("/"))
        ]
        odd = [i.path for i in listed if i.type not in (pafs.FileType.File, pafs.FileType.Directory)]
        if odd:
            raise _not_regular(prefix + odd[0], option, path)
        scan = SourceScan(
            [
                SourceFile(prefix + i.path, int(i.size), int((i.mtime_ns or 0) // 1_000_000))
                for i in listed
                if i.type == pafs.FileType.File
            ]
        )
    else:
        raise InputError(f"{option} {path!r} is neither a regular file nor a directory (a pipe, socket or device?)")
    if not scan.files:
        raise InputError(f"{option} {path!r} is a directory with no input files in it")
    files = sorted(scan.files, key=lambda f: f.path)
    for f in files:
        # Hadoop parses "a:b" in a path as a URI scheme, so Spark cannot open such a file at all.
        if ":" in f.path.split("://", 1)[-1]:
            raise InputError(f"{f.path}: Spark cannot read a file whose name contains ':'; rename it")
    return SourceScan(files, scan.dangling_links, scan.symlink_loops)


def list_source_files(path: str, option: str = "ingest.source.path") -> list[SourceFile]:
    """The files to ingest under ``path``: :func:`scan_source_files` without the skipped links."""
    return scan_source_files(path, option).files


def _spark_path(path: str) -> str:
    # Spark expands glob characters in read paths; escape them so that "ev[1].csv" or "q?.csv"
    # means that one file, never other files the pattern happens to match.
    escaped = re.sub(r"([\\\[\]{}*?])", r"\\\1", path)
    return spark_uri(escaped)


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


#: What ends a line for Spark's text reader (Hadoop's LineRecordReader without a custom
#: delimiter): LF, CR, or CRLF as one end. bytes.splitlines() splits at exactly these, so the
#: driver's line 1 is Spark's line 1 whatever the file's line endings.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _read_head(stream: pa.NativeFile, head: bytes, until_newline: int) -> bytes:
    """``head`` and what follows in ``stream``: at least SNIFF_BYTES, then up to a line end or
    ``until_newline`` bytes."""
    while True:
        chunk = stream.read(SNIFF_BYTES)
        head += chunk
        if not chunk or (len(head) >= SNIFF_BYTES and (_LINE_END.search(head) or len(head) > until_newline)):
            return head


def _sniff(f: SourceFile, source: SourceConfig, max_line_bytes: int) -> str | None:
    """Check that ``f`` is text of the configured kind; return its first line (None for an empty file).

    Raises InputError naming the file when it is compressed, binary, wide-encoded (UTF-16/32) or
    otherwise not what its name and the config say, before any Spark job reads it.
    """
    if f.size == 0:
        return None
    ext = _extension(f.path)
    if ext.lower() in _CODECS and ext != ext.lower():
        _check_codec_case(f, ext)
    if ext in _CODECS and _CODECS[ext] is None:
        if source.format != "json" and source.header:
            raise InputError(
                f"cannot read the header of {f.path}: ingest reads *.gz and *.bz2 compressed "
                f"text with a header, not *{ext}; recompress it with gzip"
            )
        return ""  # Spark decompresses it; the driver cannot look inside
    fs, p = filesystem(absolute(f.path))
    codec = _CODECS.get(ext)
    try:
        with fs.open_input_stream(p, compression=None) as raw:  # the default would guess by extension
            magic = raw.read(8)
            if codec:
                want = b"\x1f\x8b" if codec == "gzip" else b"BZh"
                if not magic.startswith(want):
                    raise InputError(f"{f.path} is named *{ext} but is not {codec} data; rename or recompress it")
            else:
                for prefix, kind, hint in _MAGIC:
                    if magic.startswith(prefix):
                        raise InputError(
                            f"{f.path} is {kind}, not {source.format} text "
                            f"(ingest.source.format = {source.format!r}): {hint}"
                        )
                head = _read_head(raw, magic, max_line_bytes)
    except (OSError, pa.ArrowException) as exc:  # vanished, unreadable, or a read error of the filesystem
        raise InputError(f"{f.path} could not be read: {exc}") from None
    if codec:
        try:
            with fs.open_input_stream(p, compression=codec) as stream:
                head = _read_head(stream, b"", max_line_bytes)
        except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
            raise InputError(
                f"{f.path} could not be decompressed ({codec}): {exc}. The file is truncated or "
                "corrupt; nothing was read from it"
            ) from None
    return _check_text(f.path, head, source, max_line_bytes)


def _check_codec_case(f: SourceFile, ext: str) -> None:
    """Refuse a compression extension that is not lower-case (``x.csv.GZ``).

    Hadoop picks the decompressor by a case-sensitive suffix, so Spark would read the compressed
    bytes of ``x.csv.GZ`` as text lines; no setting changes that without a codec class of our own.
    """
    fs, p = filesystem(absolute(f.path))
    renamed = f.path[: len(f.path) - len(ext)] + ext.lower()
    codec = _CODECS[ext.lower()]
    if codec:
        try:
            with fs.open_input_stream(p, compression=None) as raw:
                magic = raw.read(4)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{f.path} could not be read: {exc}") from None
        if not magic.startswith(b"\x1f\x8b" if codec == "gzip" else b"BZh"):
            raise InputError(f"{f.path} is named *{ext} but is not {codec} data; rename or recompress it")
    raise InputError(
        f"{f.path} ends in {ext!r}, but Spark decompresses a file only when its extension is "
        f"lower-case ({ext.lower()!r}); it would read the compressed bytes as text. "
        f"Rename it to {renamed}"
    )


def _check_text(path: str, head: bytes, source: SourceConfig, max_line_bytes: int) -> str | None:
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise InputError(
                f"{path} is {name} text (it starts with a {name} byte-order mark); ingest reads "
                f"UTF-8, US-ASCII or ISO-8859-1 line by line. Convert it, e.g. "
                f"`iconv -f {name} -t UTF-8`"
            )
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    encoding = spark_charset(source.encoding)
    if _is_binary(head[:SNIFF_BYTES], encoding):
        raise InputError(
            f"{path} is not text: its first bytes are mostly control characters or not valid "
            f"{encoding} (binary data, or a wide encoding such as UTF-16 without a byte-order mark)"
        )
    if not head.strip():
        return None
    end = _LINE_END.search(head)
    first = head if end is None else head[: end.start()]
    first_text = first.decode("utf-8" if encoding != "ISO-8859-1" else "latin-1", errors="replace")
    if source.format == "json":
        start = head.lstrip()[:1]
        if start == b"[":
            raise InputError(
                f"{path} holds a JSON array; ingest reads JSON lines (one object per line). "
                "Convert it, e.g. `jq -c '.[]'`"
            )
        if first_text.strip() == "{":
            raise InputError(
                f"{path} looks like pretty-printed JSON (line 1 is just '{{'); ingest reads JSON "
                "lines (one object per line). Convert it, e.g. `jq -c .`"
            )
        return first_text
    if source.header:
        if len(first) > max_line_bytes:
            raise InputError(
                f"line 1 of {path} (the header, ingest.source.header = true) is longer than "
                f"ingest.max_line_bytes = {max_line_bytes:,} bytes: is it the right file, and "
                "ingest.source.format / delimiter right?"
            )
        if not first_text.strip():
            raise InputError(f"line 1 of {path} should be the header (ingest.source.header = true) but is blank")
    return first_text


def _split_header(line: str, sep: str, path: str) -> list[str]:
    """The column names in line 1 of ``path``, by the same quoting rules as the rows (RFC 4180)."""
    if line.count('"') % 2:
        # A row like this is malformed_row; as the header it would leave every column misnamed.
        raise InputError(
            f"line 1 of {path} (the header) has an unbalanced quote: {_shown(line)}. Fix or remove "
            'the stray quote (a quote inside a quoted name is doubled: "a ""b""")'
        )
    try:
        fields = next(csv.reader([line], delimiter=sep, quotechar='"', doublequote=True), [])
    except csv.Error as exc:  # no case is known to reach this; a traceback must not, whatever the line
        raise InputError(f"line 1 of {path} (the header) cannot be parsed: {exc}: {_shown(line)}") from None
    names = [h.strip() for h in fields]
    # A tab is a delimiter in the wrong setting, which _check_columns explains better.
    bad = [i + 1 for i, n in enumerate(names) if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", n)]
    if bad:
        raise InputError(
            f"line 1 of {path} (the header) has control characters (NUL, ...) in column(s) {bad}: "
            f"{_shown(line)}. Is it the right file, and ingest.source.encoding right?"
        )
    return names


def _shown(line: str) -> str:
    return repr(line if len(line) <= 200 else line[:200] + "...")


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
        headers[f.path] = _split_header(line.lstrip("\ufeff"), source.separator, f.path)
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
    return {
        "user_id": source.user_col,
        "item_id": source.item_col,
        "event_type": source.event_type_col,
        "value": source.value_col,
        "timestamp": source.timestamp_col,
        "event_id": source.event_id_col,
    }


def _check_columns(source: SourceConfig, available: Sequence[str], where: str) -> None:
    missing = [f"{key} -> {col!r}" for key, col in _mapped(source).items() if col and col not in available]
    if not missing:
        return
    shown = list(available) if sum(len(c) for c in available) < 500 else [c[:40] + "..." for c in available[:10]]
    hint = "Fix ingest.source.*_col or the preset."
    if source.format != "parquet" and len(available) == 1:
        seps = [s for s in (",", "\t", ";", "|") if s in available[0] and s != source.separator]
        if seps:
            hint = (
                f"The header is one column but contains {seps[0]!r}: set ingest.source.delimiter = "
                f"{seps[0]!r} (or ingest.source.format = {'tsv' if seps[0] == chr(9) else 'csv'!r})."
            )
    raise InputError(f"{where} has no column for {', '.join(missing)}; columns are {shown}. {hint}")


def _line_numbers(lines: DataFrame, file_paths: dict[str, str], files: Sequence[SourceFile]) -> DataFrame:
    """Attach source_file and an exact 1-based line_number to rows of Spark's text reader."""
    lines = lines.select(
        F.col("_metadata.file_path").alias("_fp"),
        F.col("_metadata.file_block_start").alias("_block"),
        F.monotonically_increasing_id().alias("_rid"),
        "value",
    )
    with file_read_errors(files):
        blocks = lines.groupBy("_fp", "_block").agg(F.min("_rid").alias("_first"), F.count("*").alias("_n")).collect()
    offsets = []
    done: dict[str, int] = {}
    for b in sorted(blocks, key=lambda r: (r["_fp"], r["_block"])):
        offsets.append((b["_fp"], b["_block"], b["_first"], done.get(b["_fp"], 0), _source_path(b["_fp"], file_paths)))
        done[b["_fp"]] = done.get(b["_fp"], 0) + b["_n"]
    schema = StructType(
        [
            StructField("_fp", StringType()),
            StructField("_block", LongType()),
            StructField("_first", LongType()),
            StructField("_offset", LongType()),
            StructField("source_file", StringType()),
        ]
    )
    table = lines.sparkSession.createDataFrame(offsets, schema)
    return (
        lines.join(F.broadcast(table), ["_fp", "_block"])
        .withColumn("line_number", F.col("_offset") + F.col("_rid") - F.col("_first") + 1)
        .drop("_fp", "_block", "_rid", "_first", "_offset")
    )


def _source_path(spark_file_path: str, file_paths: dict[str, str]) -> str:
    """Map Spark's URL-encoded file URI back to the path the user gave."""
    decoded = unquote(spark_file_path)
    for prefix in ("file://", "file:"):
        if decoded.startswith(prefix):
            decoded = decoded[len(prefix) :]
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
        raise InputError(
            f"{path} could not be read: {cause}. It is truncated, corrupt or not the format "
            "its name says; nothing was committed"
        ) from None


def _raw_line(col: Column) -> Column:
    return F.when(
        F.length(col) > RAW_LINE_LIMIT, F.concat(F.substring(col, 1, RAW_LINE_LIMIT), F.lit("...[truncated]"))
    ).otherwise(col)


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


def _read_text(
    spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile], max_line_bytes: int
) -> DataFrame:
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
    lines = lines.select(
        "source_file", "line_number", value.alias("line"), valid.alias("_valid"), too_long.alias("_long")
    )
    if source.format != "json" and source.header:
        lines = lines.where(F.col("line_number") > 1)
    lines = lines.where(F.trim(F.col("line")) != "")  # blank lines carry no event

    too_long = F.col("_long")
    schema_cols = (
        [f"{_ddl_name(c)} STRING" for c in columns]
        if columns
        else [f"{_ddl_name(c)} STRING" for c in dict.fromkeys(c for c in _mapped(source).values() if c)]
    )
    ddl = ", ".join([*schema_cols, "`_corrupt` STRING"])
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"}
    line = F.col("line")
    if source.format == "json":
        parsed = F.from_json(F.when(~too_long, line), ddl, opts)
        # from_json reads the first JSON value and ignores whatever follows it; a line must be one
        # object and nothing else, or '{..}{..}' would silently lose its second event.
        plain = F.regexp_replace(line, r"[+-]?\b(NaN|Infinity|INF)\b", "0")  # non-standard numbers from_json allows
        broken = ~too_long & (
            (F.coalesce(F.json_array_length(F.concat(F.lit("["), plain, F.lit("]"))), F.lit(0)) != 1)
            | ~F.rtrim(line).endswith("}")
        )
        # The JSON type of each field (a boolean is no id; the string parse renders true as "true").
        # The VARIANT parse fails where a field holds a lone surrogate escape, which the string
        # parse would store as "?".
        kinds_ddl = ", ".join([*(c.replace(" STRING", " VARIANT") for c in schema_cols), "`_corrupt` STRING"])
        kinds = F.from_json(F.when(~too_long, line), kinds_ddl, opts)
        keys = F.json_object_keys(F.when(~too_long, line))
        lines = lines.withColumn("_k", kinds).withColumn(
            "_dup", F.size(keys) != F.size(F.array_distinct(keys))
        )  # from_json keeps the last, silently
    else:
        # RFC 4180: a quote inside a quoted field is doubled. Every complete one-line record has an
        # even number of quotes; an odd count is a field cut by a line break or a stray quote.
        parsed = F.from_csv(F.when(~too_long, line), ddl, {**opts, "sep": source.separator, "escape": '"'})
        broken = ((F.length(line) - F.length(F.replace(line, F.lit('"'), F.lit("")))) % 2) == 1
    lines = lines.withColumn("_p", parsed)
    error = F.when(~F.col("_valid"), "invalid_encoding").when(too_long, "oversize_line")
    if source.format == "json":
        error = error.when(F.col("_k._corrupt").isNotNull() & line.rlike(_LONE_SURROGATE), "invalid_encoding")
    error = error.when(F.col("_p").isNull() | F.col("_p._corrupt").isNotNull() | broken, "malformed_row")
    if source.format == "json":
        error = error.when(F.col("_dup"), "duplicate_key")
    out = [F.col("source_file"), F.col("line_number"), _raw_line(line).alias("raw_line"), error.alias("parse_error")]
    for key, col in _mapped(source).items():
        field = F.col("_p").getField(col) if col else F.lit(None).cast("string")
        if source.format == "json" and col:
            # A JSON array or object where an id or value belongs is not a scalar: mark it.
            field = F.when(field.rlike(r"^\s*[\[{]"), F.lit("\x00<non-scalar>")).otherwise(field)
            # from_json renders the bare NaN / Infinity it accepts as quoted strings; unquote them
            # so that they are rejected as non_finite_value, like "NaN" in any other format.
            field = F.regexp_replace(field, r'^"([+-]?(NaN|Infinity))"$', "$1")
            if key in ("user_id", "item_id", "event_id"):
                field = F.when(
                    F.schema_of_variant(F.col("_k").getField(col)) == "BOOLEAN", F.lit("\x00<boolean>")
                ).otherwise(field)
        out.append(field.alias(key))
    return lines.select(*out)


#: The option that maps each field, for messages.
_OPTION = {
    "user_id": "user_col",
    "item_id": "item_col",
    "event_type": "event_type_col",
    "value": "value_col",
    "timestamp": "timestamp_col",
    "event_id": "event_id_col",
}
_ROLE = {
    "user_id": "user id",
    "item_id": "item id",
    "event_type": "event type",
    "value": "value",
    "timestamp": "event time",
    "event_id": "event id",
}
_ID_KINDS = frozenset({"int", "integer decimal", "string", "binary"})
#: The kinds of Arrow type (see _arrow_kind) each field reads correctly; anything else is refused
#: up front, because Spark would either fail mid-read or turn it into text that means something else.
_READS = {
    "user_id": _ID_KINDS,
    "item_id": _ID_KINDS,
    "event_type": _ID_KINDS,
    "event_id": _ID_KINDS | {"null"},  # a column of no ids at all: events are keyed by content
    "value": _ID_KINDS | {"decimal", "float32", "float64"},
    # float32 steps by 128 s around today's unix times: it cannot hold an event time
    "timestamp": _ID_KINDS | {"decimal", "float64", "date", "timestamp"},
}
#: What to tell the user when a kind cannot be a field (``{role}`` is filled in).
_KIND_FIX = {
    "float32": "write it as int64 or string: a float id reads as '1.0', which never matches the id '1' of "
    "another file (pandas makes an int column with missing values float64; use its 'Int64' dtype)",
    "float64": "write it as int64 or string: a float id reads as '1.0', which never matches the id '1' of "
    "another file (pandas makes an int column with missing values float64; use its 'Int64' dtype)",
    "decimal": "write it as int64 or string: a decimal with a fraction is not an id",
    "bool": "a boolean is not a {role}; write it as a number (1 / 0) or a string, or map another column",
    "fixed_binary": "write it as a string (a UUID in its 36-character text form)",
    "date": "a date is not a {role}; is ingest.source.{option} the right column?",
    "timestamp": "a time is not a {role}; is ingest.source.{option} the right column?",
    "duration": "write it as a plain number in the unit you mean (e.g. seconds)",
    "nested": "a list, struct or map is not a {role}; flatten it to one scalar column",
    "null": "the column holds no values at all (Arrow type null), so every row would be rejected; is "
    "ingest.source.{option} the right column?",
    "other": "write it as a string or a number",
}
_TIME_FIX = {
    "float32": "float32 cannot hold a unix time (its steps are 128 s around today's times); write it as int64 "
    "or float64",
    "duration": "a duration is not a point in time; write the event time as a timestamp or as unix seconds",
}


def _arrow_kind(t: pa.DataType) -> str:
    """The kind of an Arrow type, as far as reading a field from it goes."""
    if pa.types.is_dictionary(t):  # pandas categoricals: Parquet stores the values
        return _arrow_kind(t.value_type)
    if isinstance(t, pa.ExtensionType):
        return _arrow_kind(t.storage_type)
    checks = (
        (pa.types.is_null, "null"),
        (pa.types.is_boolean, "bool"),
        (pa.types.is_integer, "int"),
        (pa.types.is_float16, "float16"),
        (pa.types.is_float32, "float32"),
        (pa.types.is_float64, "float64"),
        (pa.types.is_string, "string"),
        (pa.types.is_large_string, "string"),
        (pa.types.is_string_view, "string"),
        (pa.types.is_binary, "binary"),
        (pa.types.is_large_binary, "binary"),
        (pa.types.is_binary_view, "binary"),
        (pa.types.is_fixed_size_binary, "fixed_binary"),
        (pa.types.is_date, "date"),
        (pa.types.is_timestamp, "timestamp"),
        (pa.types.is_time, "time"),
        (pa.types.is_duration, "duration"),
        (pa.types.is_nested, "nested"),
    )
    if pa.types.is_decimal(t):
        return "integer decimal" if t.scale == 0 else "decimal"
    return next((kind for check, kind in checks if check(t)), "other")


def _spark_unreadable(column: pq.ColumnSchema) -> str | None:
    """What to do about a Parquet column Spark 4 cannot read at all (it fails on the footer), or None."""
    logical = column.logical_type.type
    if logical == "FLOAT16":
        return "Spark cannot read float16; cast it to float32 or float64, or drop the column"
    if logical == "TIME":
        return "Spark cannot read a time of day; write it as a string, or drop the column"
    if logical == "UUID":
        return "Spark cannot read the Parquet UUID type; write it as a string, or drop the column"
    if logical == "DECIMAL" and column.precision > 38:
        return (
            f"Spark reads decimals of at most 38 digits, this one has {column.precision}; cast it to float64 "
            "or a smaller decimal, or drop the column"
        )
    return None


def _is_nanos(column: pq.ColumnSchema) -> bool:
    """INT64 TIMESTAMP(NANOS): pandas' datetime64[ns], which Spark reads as bigint nanoseconds
    (spark.sql.legacy.parquet.nanosAsLong, set by the session; without it the read fails)."""
    if column.physical_type != "INT64" or column.logical_type.type != "TIMESTAMP":
        return False
    return json.loads(column.logical_type.to_json()).get("timeUnit") == "nanoseconds"


def _top_level(leaf_path: str, names: Sequence[str]) -> str:
    # Leaf paths join nested names with '.', and a top-level name may itself hold a '.'.
    return max((n for n in names if leaf_path == n or leaf_path.startswith(n + ".")), key=len, default=leaf_path)


def _check_parquet_field(source: SourceConfig, key: str, col: str, t: pa.DataType, path: str) -> None:
    kind = _arrow_kind(t)
    role, option = _ROLE[key], _OPTION[key]
    where = f"column {col!r} of {path} (the {role}, ingest.source.{option})"
    if kind not in _READS[key]:
        fix = (_TIME_FIX.get(kind) if key == "timestamp" else None) or _KIND_FIX.get(kind, _KIND_FIX["other"])
        raise InputError(
            f"{where} is {t}, which ingest does not read as a {role}: " + fix.format(role=role, option=option)
        )
    if key != "timestamp" or kind in ("string", "binary"):
        return
    fmt = source.timestamp_format
    if kind in ("date", "timestamp") and fmt not in ("auto", "iso"):
        raise InputError(
            f"{where} is {t}, a native time, but ingest.source.timestamp_format = {fmt!r} reads "
            "numbers; set it to 'auto' (or 'iso')"
        )
    if kind not in ("date", "timestamp") and fmt == "iso":
        raise InputError(
            f"{where} is {t}, a number, but ingest.source.timestamp_format = 'iso' reads ISO-8601 "
            "strings; set it to 'unix_s', 'unix_ms' or 'auto'"
        )


def _parquet_schemas(source: SourceConfig, files: Sequence[SourceFile]) -> tuple[list[str], set[str]]:
    """Column names of the Parquet files and which of them hold nanosecond timestamps, after checking
    that each file is Parquet, that Spark can read every column, that each mapped column has a type
    its field reads correctly (see _READS), and the same type in every file (Spark cannot read a mix)."""
    columns: list[str] | None = None
    nanos: set[str] = set()
    types: dict[str, tuple[str, str]] = {}  # column -> (type, first file with it)
    for f in files:
        fs, p = filesystem(absolute(f.path))
        try:
            with fs.open_input_file(p) as fh:
                parquet = pq.ParquetFile(fh)
                schema, leaves, rows = parquet.schema_arrow, parquet.schema, parquet.metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for "not a Parquet file"
            raise InputError(f"{f.path} is not a readable Parquet file: {exc}") from None
        for i in range(len(leaves)):
            leaf = leaves.column(i)
            fix = _spark_unreadable(leaf)
            if fix:
                top = _top_level(leaf.path, schema.names)
                inner = f" (its field {leaf.path!r})" if leaf.path != top else ""
                raise InputError(f"column {top!r} of {f.path} is {schema.field(top).type}{inner}: {fix}")
            if _is_nanos(leaf) and leaf.path in schema.names:
                nanos.add(leaf.path)
        _check_columns(source, schema.names, f"Parquet file {f.path}")
        columns = columns or schema.names
        for key, col in _mapped(source).items():
            if not col:
                continue
            t = schema.field(col).type
            if rows:  # a file without rows has nothing to misread (pandas types its empty columns null)
                _check_parquet_field(source, key, col, t, f.path)
            kind = str(t.value_type if pa.types.is_dictionary(t) else t)
            seen = types.setdefault(col, (kind, f.path))
            if seen[0] != kind:
                raise InputError(
                    f"column {col!r} is {kind} in {f.path} but {seen[0]} in {seen[1]}; Spark cannot "
                    "read Parquet files whose column types differ. Ingest them separately"
                )
    return columns or [], nanos


def _nanos_to_timestamp(name: str) -> Column:
    """A bigint of nanoseconds since 1970 as a timestamp, truncated to microseconds (Spark's unit).

    Integer arithmetic only (a double has 53 bits, nanoseconds since 1970 need 61), and floored,
    so that 1969-12-31T23:59:59.9999995 is ...59.999999, not ...00.000000: `div` truncates toward
    zero and `%` takes the dividend's sign, so a negative remainder takes one microsecond off.
    """
    c = _ddl_name(name)
    return F.expr(f"timestamp_micros(({c} div 1000) - CASE WHEN {c} % 1000 < 0 THEN 1 ELSE 0 END)")


def _read_parquet(spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile]) -> DataFrame:
    _, nanos = _parquet_schemas(source, files)
    df = spark.read.parquet(*[_spark_path(f.path) for f in files])
    file_paths = {f.path: f.path for f in files}
    with file_read_errors(files):
        uris = [r[0] for r in df.select("_metadata.file_path").distinct().collect()]
    names = spark.createDataFrame([(u, _source_path(u, file_paths)) for u in uris], "_fp STRING, source_file STRING")
    data_cols = list(df.columns)
    df = (
        df.withColumn("_fp", F.col("_metadata.file_path"))
        .withColumn("_row", F.col("_metadata.row_index"))
        .join(F.broadcast(names), "_fp")
    )

    def column(name: str) -> Column:
        return _nanos_to_timestamp(name) if name in nanos else F.col(_ddl_name(name))

    not_utf8: Column = F.lit(False)
    fields = []
    for key, col in _mapped(source).items():
        if not col:
            fields.append(F.lit(None).cast("string").alias(key))
            continue
        dtype = df.schema[col].dataType.typeName()
        field = column(col)
        if col in nanos or dtype in ("timestamp", "timestamp_ntz"):
            # the same ISO string for every Parquet time type; a zone-less one (NTZ) is UTC, the session zone
            field = F.date_format(field, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
        elif dtype in ("float", "double"):
            field = F.when(F.isnan(field), "NaN").otherwise(field.cast("string"))
        elif dtype == "binary":
            # Strings written without the UTF8 annotation (older Hive / Impala exports): text when
            # they are UTF-8, else the row is invalid_encoding, as a text line would be.
            text = field.cast("string")
            valid = F.is_valid_utf8(text)
            not_utf8 = not_utf8 | (field.isNotNull() & ~valid)
            field = F.when(valid, text).otherwise(F.decode(field, "ISO-8859-1"))
        fields.append(field.cast("string").alias(key))
    out = [
        F.col("source_file"),
        (F.col("_row") + 1).alias("line_number"),
        _raw_line(F.to_json(F.struct(*[column(c).alias(c) for c in data_cols]))).alias("raw_line"),
        F.when(not_utf8, F.lit("invalid_encoding")).cast("string").alias("parse_error"),
        *fields,
    ]
    return df.select(*out)


def _empty(spark: SparkSession) -> DataFrame:
    schema = StructType(
        [
            StructField("source_file", StringType()),
            StructField("line_number", LongType()),
            StructField("raw_line", StringType()),
            StructField("parse_error", StringType()),
            *[StructField(k, StringType()) for k in FIELDS],
        ]
    )
    return spark.createDataFrame([], schema)


def read_source(
    spark: SparkSession, source: SourceConfig, files: Sequence[SourceFile], max_line_bytes: int
) -> DataFrame:
    """All rows of ``files`` in the uniform raw shape (see module docstring)."""
    if not files:
        return _empty(spark)
    log.info(
        "reading %d %s file(s) (%.1f MB) with preset %s",
        len(files),
        source.format,
        sum(f.size for f in files) / 1e6,
        source.preset,
    )
    if source.format == "parquet":
        return _read_parquet(spark, source, files)
    return _read_text(spark, source, files, max_line_bytes)
