"""Candidate lists: every strategy's per-user top-k, made in one place for serving and evaluation."""
