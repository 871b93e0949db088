"""recsys-spark."""
