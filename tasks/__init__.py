"""Prefect tasks: one module per pipeline stage, each a thin wrapper that logs and calls the core."""
