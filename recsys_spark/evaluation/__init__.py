"""Evaluation: splits, metrics, baselines, the scoring of served strategies, and the HTML report."""
