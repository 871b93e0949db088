"""released_caches: what a block of model fits leaves behind is freed when the block ends."""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING

from recsys_spark.session import released_caches

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
