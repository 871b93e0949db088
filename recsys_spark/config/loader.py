"""Loading a config: a TOML file (``conf/local.toml`` by default) plus ``--set`` overrides, validated."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomllib

from recsys_spark.config.overrides import apply_overrides
from recsys_spark.config.schema import DEFAULTS, Config, validated
from recsys_spark.errors import ConfigError

DEFAULT_CONFIG = Path("conf/local.toml")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (default ``conf/local.toml`` when it exists), apply overrides, validate.

    Raises:
        ConfigError: naming the file and each offending key.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory, not a TOML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        origin = str(p)
    overrides = list(overrides)
    if overrides:
        origin += " with --set " + " ".join(overrides)
    return validated(apply_overrides(data, overrides, DEFAULTS), origin)
