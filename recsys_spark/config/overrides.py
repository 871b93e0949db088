"""``--set section.key=value`` overrides applied to a raw config dict, before validation.

Values are read as TOML literals first, so numbers, booleans, arrays and inline tables keep their
type; anything else is a bare string (paths, master URLs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tomllib
from pydantic import (
    BaseModel,
)

from recsys_spark.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: malformed key {key!r}")
    try:
        # TOML literal first, so numbers, booleans, arrays and inline tables keep their type;
        # anything else is taken as a bare string (paths, master URLs).
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], defaults: BaseModel) -> dict[str, Any]:
    """``data`` (a raw config dict) with each ``section.key=value`` override applied, in order.

    ``defaults`` (the default Config) tells sections from values and maps from sections.
    """
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        default: Any = defaults
        for i, p in enumerate(parts[:-1]):
            if isinstance(default, dict):
                # inside a map (spark.conf, event_weights) the rest of the key is one map key:
                # spark.conf.spark.eventLog.enabled sets "spark.eventLog.enabled"
                parts = [*parts[:i], ".".join(parts[i:])]
                break
            default = getattr(default, p, None) if isinstance(default, BaseModel) else None
            child = node.get(p)
            if child is None:
                # Overriding one key of a map (event_weights, spark.conf) keeps the other defaults;
                # a section starts empty so that presets still fill it.
                child = node[p] = dict(default) if isinstance(default, dict) else {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data
