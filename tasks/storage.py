"""Storage stages: pull a registered version, look up a decision, promote, reject, keep the run report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate import lifecycle
from quantgate.errors import ConflictError
from quantgate.registry import Manifest, ModelRef, Outcome
from quantgate.settings import Settings
from quantgate.storage import ObjectStore
from tasks._common import STORAGE_TASK


@task(name="find-decision", cache_policy=NO_CACHE, **STORAGE_TASK)
def find_decision(ref: ModelRef, settings: Settings) -> Outcome | None:
    return lifecycle.decision_of(ObjectStore(settings), ref)


@task(name="find-undecided", cache_policy=NO_CACHE, **STORAGE_TASK)
def find_undecided(settings: Settings, max_failures: int) -> list[ModelRef]:
    store = ObjectStore(settings)
    pending = lifecycle.undecided(store, max_failures)
    get_run_logger().info(
        "%d registered version(s) without a decision: %s",
        len(pending),
        ", ".join(map(str, pending)) or "none",
    )
    return pending


@task(name="pull", cache_policy=NO_CACHE, **STORAGE_TASK)
def pull_version(ref: ModelRef, settings: Settings, dest: Path) -> lifecycle.PulledVersion:
    pulled = lifecycle.pull(ObjectStore(settings), ref, dest)
    get_run_logger().info(
        "pulled %s: %d model files, held-out %s (task %s)",
        ref,
        len(pulled.registration.files),
        pulled.registration.heldout.path,
        pulled.registration.task,
    )
    return pulled


@task(name="promote", cache_policy=NO_CACHE, **STORAGE_TASK)
def promote(
    settings: Settings, manifest: Manifest, files: dict[str, Path], report: dict[str, Any]
) -> str | None:
    """None when this run promoted; otherwise why not (a concurrent run decided first)."""
    try:
        final = lifecycle.promote(ObjectStore(settings), manifest, files, report, settings.actor)
    except ConflictError as exc:
        get_run_logger().warning("%s", exc)
        return str(exc)
    get_run_logger().info(
        "promoted %s@%s: %d files, manifest then current.json written last",
        final.model,
        final.version,
        len(final.files),
    )
    return None


@task(name="finish-promotion", cache_policy=NO_CACHE, **STORAGE_TASK)
def finish_promotion(ref: ModelRef, settings: Settings) -> bool:
    """Completes a promotion a killed run left between its manifest and its pointer; no-op otherwise."""
    finished = lifecycle.finish_promotion(ObjectStore(settings), ref, settings.actor)
    if finished:
        get_run_logger().warning("%s: finished an interrupted promotion (pointer and audit log)", ref)
    return finished


@task(name="record-rejection", cache_policy=NO_CACHE, **STORAGE_TASK)
def record_rejection(settings: Settings, ref: ModelRef, report: dict[str, Any]) -> str | None:
    """None when this run recorded the rejection; otherwise why not (a concurrent run decided first)."""
    from quantgate.report import RunReport, decision_plots

    parsed = RunReport.model_validate(report)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plots = decision_plots(parsed, Path(tmp))
            key = lifecycle.reject(ObjectStore(settings), ref, report, parsed.parity.model_dump(), plots)
    except ConflictError as exc:
        get_run_logger().warning("%s", exc)
        return str(exc)
    get_run_logger().info("rejected %s: report at s3://%s/%s; nothing promoted", ref, settings.bucket, key)
    return None


@task(name="save-run-report", cache_policy=NO_CACHE, **STORAGE_TASK)
def save_run_report(settings: Settings, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    return lifecycle.write_run_report(ObjectStore(settings), ref, run_id, report)
