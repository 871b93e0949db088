"""The configuration: one typed, validated schema for every job, and its loader.

:mod:`.schema` holds the sections (a pydantic model each, a docstring per field),
:mod:`.overrides` the ``--set`` parser and :mod:`.loader` the TOML loader. The config needs no
Spark, so importing it is cheap.
"""

from recsys_spark.config.loader import DEFAULT_CONFIG, load_config
from recsys_spark.config.schema import Config

__all__ = ["DEFAULT_CONFIG", "Config", "load_config"]
