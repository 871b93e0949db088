"""A writer process for the crash-safety tests: it commits a table, or runs an ingest, and can be
made to die by SIGKILL at a chosen point (nothing can be cleaned up after SIGKILL: that is the point).

    python -m tests._crash_writer ROOT POINT VERSION [RAW]

POINT:
  none            commit normally
  during-write    write slowly, so that the test can SIGKILL the process group mid Parquet write
  before-commit   die once every Parquet file is written, before the Delta commit
  after-commit    die right after the Delta commit landed, before the job returns
  ingest-after-N  run the ingest job on RAW and die just before its (N+1)-th table commit
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

USERS = 40
K = 10


def candidates(spark: SparkSession, version: int, slow: bool = False) -> DataFrame:
    """A small user_candidates table whose scores say which version wrote it (version * 1000 + rank)."""
    from pyspark.sql import functions as F

    rows = [
        (
            f"u{u:03d}",
            u,
            r,
            f"i{(u + r) % 97:03d}",
            (u + r) % 97,
            float(version * 1000 + r),
            "als",
            f"v{version}",
            "als",
        )
        for u in range(USERS)
        for r in range(1, K + 1)
    ]
    df = spark.createDataFrame(
        rows,
        "user_id STRING, user_idx INT, rank INT, item_id STRING, item_idx INT, "
        "score DOUBLE, source STRING, model_version STRING, strategy STRING",
    )
    if slow:
        # a Parquet write that lasts several seconds: 4 tasks on one core, each sleeping first
        @F.pandas_udf("double")
        def _slow(score: pd.Series) -> pd.Series:
            time.sleep(2.0)
            return score

        df = df.repartition(4).withColumn("score", _slow("score"))
    return df


def _die(*_: Any, **__: Any) -> None:
    print("dying", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def main(root: str, point: str, version: int, raw: str | None) -> None:
    from recsys_spark import tables as T
    from recsys_spark.config.loader import load_config
    from recsys_spark.pipeline.runs import RunContext
    from recsys_spark.session import build_session
    from recsys_spark.storage import delta_rs
    from recsys_spark.storage import store as storage

    cfg = load_config(
        None,
        [
            "spark.master=local[1]",
            "spark.ui_enabled=false",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=1g",
            f"storage.root={root}",
            f"spark.checkpoint_dir={root}-checkpoints",
        ]
        + ([f"ingest.source.path={raw}", "ingest.source.preset=synthetic"] if raw else []),
    )
    spark = build_session(cfg.spark, cfg.storage, app_name=f"crash-writer {point}")
    store = storage.TableStore(spark, cfg.storage)
    ctx = RunContext.new("crash-test", cfg)
    if point == "before-commit":
        delta_rs.DeltaTable.create_write_transaction = _die  # type: ignore[method-assign]
        delta_rs.create_table_with_add_actions = _die  # type: ignore[assignment]
    elif point == "after-commit":
        delta_rs.version_of = _die  # type: ignore[assignment]
    elif point.startswith("ingest-after-"):
        from recsys_spark.pipeline.ingest import run_ingest

        allowed = int(point.rsplit("-", 1)[1])
        write = storage.TableStore.write

        def counting(self: storage.TableStore, *args: Any, **kwargs: Any) -> storage.WriteResult:
            nonlocal allowed
            if allowed == 0:
                _die()
            allowed -= 1
            return write(self, *args, **kwargs)

        storage.TableStore.write = counting  # type: ignore[method-assign]
        run_ingest(spark, cfg, ctx)
        print("ingested", flush=True)
        return
    print("writing", flush=True)
    store.write(
        candidates(spark, version, slow=point == "during-write"),
        T.USER_CANDIDATES,
        "overwrite",
        ctx.commit(),
        partition_by=["strategy"],
    )
    print("committed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
