"""All Delta access: one :class:`TableStore` over the delta-spark and delta-rs engines.

Jobs read and write tables only through it; the no-JVM readers in :mod:`recsys_spark.serving`
open the same tables with deltalake alone.
"""
