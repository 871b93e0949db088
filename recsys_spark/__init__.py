"""recsys-spark: a distributed batch recommender on Apache Spark.

Run a stage from Python as the CLI and ``jobs/`` do::

    import recsys_spark as rs

    cfg = rs.load_config("conf/local.toml", ["storage.root=data/warehouse"])
    spark = rs.build_session(cfg.spark, cfg.storage)
    ctx = rs.RunContext.new("ingest", cfg)
    print(rs.run_ingest(spark, cfg, ctx).render())

    recs = rs.Recommendations.open("data/warehouse")   # no Spark, no JVM
    recs.for_user("u00000042", k=10)

The names load on first use (PEP 562): a serving process that only reads the tables never
imports pyspark, and ``import recsys_spark`` costs nothing.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys_spark.config.loader import load_config
    from recsys_spark.config.schema import Config
    from recsys_spark.pipeline.candidates import run_candidates
    from recsys_spark.pipeline.evaluate import run_evaluate
    from recsys_spark.pipeline.generate import run_generate
    from recsys_spark.pipeline.ingest import run_ingest
    from recsys_spark.pipeline.refresh import run_refresh_users
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.pipeline.similarity import run_item_similarity
    from recsys_spark.pipeline.train import run_train_als
    from recsys_spark.serving.lookup import Recommendations
    from recsys_spark.session import build_session
    from recsys_spark.storage.store import TableStore

#: Each public name and the module that defines it.
_EXPORTS = {
    "Config": "recsys_spark.config.schema",
    "load_config": "recsys_spark.config.loader",
    "build_session": "recsys_spark.session",
    "RunContext": "recsys_spark.pipeline.runs",
    "run_generate": "recsys_spark.pipeline.generate",
    "run_ingest": "recsys_spark.pipeline.ingest",
    "run_train_als": "recsys_spark.pipeline.train",
    "run_item_similarity": "recsys_spark.pipeline.similarity",
    "run_candidates": "recsys_spark.pipeline.candidates",
    "run_refresh_users": "recsys_spark.pipeline.refresh",
    "run_evaluate": "recsys_spark.pipeline.evaluate",
    "TableStore": "recsys_spark.storage.store",
    "Recommendations": "recsys_spark.serving.lookup",
}

__all__ = [
    "Config",
    "Recommendations",
    "RunContext",
    "TableStore",
    "__version__",
    "build_session",
    "load_config",
    "run_candidates",
    "run_evaluate",
    "run_generate",
    "run_ingest",
    "run_item_similarity",
    "run_refresh_users",
    "run_train_als",
]

try:
    __version__ = version("recsys-spark")
except PackageNotFoundError:  # imported from the --py-files zip, not installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recsys_spark' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
