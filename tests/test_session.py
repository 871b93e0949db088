"""released_caches: what a block of model fits leaves behind is freed when the block ends; whole_waves:
task counts that fill every core."""

from __future__ import annotations

import gc
import math
import weakref
from typing import TYPE_CHECKING

import pytest

from recsys_spark.session import released_caches, whole_waves

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_rdds_persisted_inside_the_block_are_unpersisted_and_earlier_ones_kept(spark: SparkSession) -> None:
    before = spark.sparkContext.parallelize(range(10)).persist()
    before.count()
    with released_caches(spark):
        inside = spark.range(100).persist()
        inside.count()
        assert inside.is_cached
        rdd_ids = set(spark.sparkContext._jsc.getPersistentRDDs().keys())
        assert len(rdd_ids) >= 2
    after = set(spark.sparkContext._jsc.getPersistentRDDs().keys())
    assert after == {before.id()}
    before.unpersist()


def test_jvm_objects_held_only_by_python_reference_cycles_are_released(spark: SparkSession) -> None:
    """With Python's automatic collector off, a py4j proxy inside a cycle survives the block's body
    and is collected when the block ends (py4j then drops the JVM object)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with released_caches(spark):
            proxy = spark._jvm.java.util.ArrayList()
            cycle: list = [proxy]
            cycle.append(cycle)
            alive = weakref.ref(proxy)
            del proxy, cycle
            assert alive() is not None  # only a cycle holds it, and nothing has collected cycles yet
        assert alive() is None
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("n_rows", [0, 1, 999, 5_000_000, 4_999_800, 123_456_789])
def test_whole_waves_fill_every_core_and_hold_at_most_rows_per_task(spark: SparkSession, n_rows: int) -> None:
    cores = spark.sparkContext.defaultParallelism
    tasks = whole_waves(spark, n_rows, 2_000_000)
    assert tasks % cores == 0 and tasks >= cores
    assert n_rows / tasks <= 2_000_000  # no task above its size
    fewest = max(1, math.ceil(n_rows / 2_000_000))
    assert tasks <= fewest + cores - 1  # and less than a wave of tasks beyond the fewest
