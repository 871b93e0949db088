"""Numpy kernels that run inside Spark tasks: per-row selection, blocked dense top-k, block-sparse cells."""
