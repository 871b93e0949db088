"""Ingest: raw interaction logs in, validated and deduplicated events out.

:mod:`.sources` reads the raw files with file and line provenance, :mod:`.transforms` validates,
weights, deduplicates and maps ids (pure DataFrame transforms), :mod:`.generate` writes the
synthetic log.
"""
