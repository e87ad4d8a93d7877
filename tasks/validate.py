"""Held-out validation with Great Expectations: a set that fails stops the run before any model work."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.heldout import ValidationOutcome, require_valid, validate_heldout
from quantgate.tasktypes import TaskType


@task(name="validate-heldout", cache_policy=NO_CACHE)
def validate(
    path: Path, task_type: TaskType, model_dir: Path, docs_dir: Path
) -> tuple[pd.DataFrame, ValidationOutcome]:
    """Runs the GX suite and renders its Data Docs; does not stop the run (`require` does, once the
    Data Docs are stored, so a failed set's report links to what failed)."""
    df = task_type.read_heldout(path)
    schema = task_type.heldout_schema(model_dir)
    outcome = validate_heldout(df, schema, name=task_type.name, docs_dir=docs_dir)
    get_run_logger().info(
        "held-out %s: %d rows, %d/%d expectations met",
        path.name,
        outcome.rows,
        outcome.statistics.get("successful_expectations", 0),
        outcome.statistics.get("evaluated_expectations", 0),
    )
    return df, outcome


@task(name="require-valid-heldout", cache_policy=NO_CACHE)
def require(outcome: ValidationOutcome, filename: str) -> None:
    require_valid(outcome, filename)
