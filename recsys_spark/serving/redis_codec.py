"""The Redis key layout and value encoding of an exported version, shared by the export job and
the Redis reader.

Keys (``prefix`` is ``export.redis_prefix``, default ``recsys``):

* ``{prefix}:current``: the tag of the version being served, the one pointer readers follow;
* ``{prefix}:{tag}:meta``: JSON, the source table versions, strategies, methods, segments, counts;
* ``{prefix}:{tag}:u:{strategy}:{user_id}``: a user's list of one strategy;
* ``{prefix}:{tag}:i:{method}:{item_id}``: an item's neighbours of one method;
* ``{prefix}:{tag}:p:{segment}``: a popularity list;
* ``{prefix}:{tag}:items``: a set of every catalogue item id (an unknown item is an error, an item
  without neighbours an empty list, as in the Delta reader).

A value is one list, little-endian, sized for one GET and one numpy pass::

    u8   format (2)
    u16  n, the list's length (ranks 1..n in order)
    u8   len(source), then source in UTF-8 (a user's list: als, blend, popular, ...; else empty)
    u8   flags: bit 0 set when the explanations follow the ids
    n x i32  item_idx
    n x f64  score (similarity for neighbours)
    n x u16  UTF-8 length of each item id, then the ids back to back
    explanations (a user's list, when the table has them):
    n x f32  because_share (NaN: none)
    n x u16  UTF-8 length of each because_item_id (0: none), then the ids back to back

100 candidates with 9-character ids take 2,308 bytes, 3,808 with explanations; the same list as
JSON takes about 7 kB. Format 1 (no flags byte, no explanations) is still read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["FORMAT", "ExportedList", "RedisKeys", "decode_list", "encode_list"]

FORMAT = 2
_HEAD = struct.Struct("<BHB")
_EXPLAINED = 1


@dataclass(frozen=True)
class ExportedList:
    """One decoded value."""

    source: str
    item_idx: list[int]
    score: list[float]
    item_id: list[str]
    because_item_id: list[str | None] | None = None
    """None: the list carries no explanations (neighbours, popularity, older tables)."""
    because_share: list[float | None] | None = None


def encode_list(
    source: str,
    item_idx: list[int],
    score: list[float],
    item_id: list[str],
    because_item_id: list[str | None] | None = None,
    because_share: list[float | None] | None = None,
) -> bytes:
    """One list as the bytes of its Redis value (see the module docstring); the explanations are
    written when ``because_item_id`` is given."""
    n = len(item_idx)
    if not (n == len(score) == len(item_id)) or n > 0xFFFF:
        raise ValueError(f"a list of {n} items with {len(score)} scores and {len(item_id)} ids cannot be encoded")
    src = source.encode()
    ids = [i.encode() for i in item_id]
    if len(src) > 0xFF or any(len(i) > 0xFFFF for i in ids):
        raise ValueError("a source of more than 255 bytes or an id of more than 65,535 bytes cannot be encoded")
    parts = [
        _HEAD.pack(FORMAT, n, len(src)),
        src,
        bytes([_EXPLAINED if because_item_id is not None else 0]),
        np.asarray(item_idx, "<i4").tobytes(),
        np.asarray(score, "<f8").tobytes(),
        np.asarray([len(i) for i in ids], "<u2").tobytes(),
        *ids,
    ]
    if because_item_id is not None:
        shares = because_share if because_share is not None else [None] * n
        if not (n == len(because_item_id) == len(shares)):
            raise ValueError(f"a list of {n} items with {len(because_item_id)} explanations cannot be encoded")
        why = [(b or "").encode() for b in because_item_id]
        if any(len(b) > 0xFFFF for b in why):
            raise ValueError("an id of more than 65,535 bytes cannot be encoded")
        parts += [
            np.asarray([np.nan if v is None else v for v in shares], "<f4").tobytes(),
            np.asarray([len(b) for b in why], "<u2").tobytes(),
            *why,
        ]
    return b"".join(parts)


def _strings(value: bytes, at: int, n: int) -> tuple[list[str], int]:
    lengths = np.frombuffer(value, "<u2", n, at).tolist()
    at += 2 * n
    out = []
    for length in lengths:
        out.append(value[at : at + length].decode())
        at += length
    return out, at


def decode_list(value: bytes) -> ExportedList:
    """The inverse of :func:`encode_list` (and the reader of format 1 values)."""
    fmt, n, src_len = _HEAD.unpack_from(value, 0)
    if fmt not in (1, FORMAT):
        raise ValueError(f"value format {fmt} is not {FORMAT}: the export and this reader disagree")
    at = _HEAD.size
    source = value[at : at + src_len].decode()
    at += src_len
    flags = 0
    if fmt >= 2:
        flags = value[at]
        at += 1
    idx = np.frombuffer(value, "<i4", n, at).tolist()
    at += 4 * n
    score = np.frombuffer(value, "<f8", n, at).tolist()
    at += 8 * n
    ids, at = _strings(value, at, n)
    if not flags & _EXPLAINED:
        return ExportedList(source, idx, score, ids)
    raw = np.frombuffer(value, "<f4", n, at)
    at += 4 * n
    shares = [None if np.isnan(v) else float(v) for v in raw.tolist()]
    why, at = _strings(value, at, n)
    return ExportedList(source, idx, score, ids, [b or None for b in why], shares)


@dataclass(frozen=True)
class RedisKeys:
    """The key names of one prefix."""

    prefix: str

    @property
    def current(self) -> str:
        return f"{self.prefix}:current"

    def meta(self, tag: str) -> str:
        return f"{self.prefix}:{tag}:meta"

    def user(self, tag: str, strategy: str, user_id: str) -> str:
        return f"{self.prefix}:{tag}:u:{strategy}:{user_id}"

    def item(self, tag: str, method: str, item_id: str) -> str:
        return f"{self.prefix}:{tag}:i:{method}:{item_id}"

    def popular(self, tag: str, segment: str) -> str:
        return f"{self.prefix}:{tag}:p:{segment}"

    def items(self, tag: str) -> str:
        return f"{self.prefix}:{tag}:items"

    def of_tag(self, tag: str) -> str:
        """A SCAN pattern of every key of ``tag``."""
        return f"{self.prefix}:{tag}:*"
