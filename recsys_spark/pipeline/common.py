"""What every stage job shares: the writable table store, and the row-group size of served tables."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from recsys_spark.config.schema import Config
from recsys_spark.storage.store import TableStore

log = logging.getLogger(__name__)

#: Row groups of lookup tables: small enough that a key lookup on sorted data decodes one group.
#: A lookup's cost is mostly decoding that group: on 1M users x 100 candidates, groups of 1 MiB
#: (18k rows) took 0.99 ms a read and groups of 256 KiB (4.5k rows) 0.41 ms. With the explanation
#: columns a whole for_user took 1.18 ms at 256 KiB and 0.82 ms at 64 KiB (about 1k rows, ten
#: users); the footers grow to about 1.4 MB a file, read once per table version.
LOOKUP_ROW_GROUP_BYTES = 1 << 16


def writable_store(spark: SparkSession, cfg: Config) -> TableStore:
    """The job's table store, checked up front to be writable (see ``TableStore.check_writable``)."""
    store = TableStore(spark, cfg.storage)
    store.check_writable()
    return store
