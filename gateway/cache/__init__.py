"""Semantic prompt cache: Redis store, in-process mirror, verified adaptive thresholds."""
