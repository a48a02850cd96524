"""Evaluation: metrics and per-loop diagnostics, cost accounting, post-hoc curves."""
