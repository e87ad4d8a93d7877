"""Storage stages: pull a registered version, look up a decision, promote, reject, keep the run report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate import lifecycle
from quantgate.registry import Manifest, ModelRef, Outcome
from quantgate.settings import Settings
from quantgate.storage import ObjectStore
from tasks._common import STORAGE_TASK


@task(name="find-decision", cache_policy=NO_CACHE, **STORAGE_TASK)
def find_decision(ref: ModelRef, settings: Settings) -> Outcome | None:
    return lifecycle.decision_of(ObjectStore(settings), ref)


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
) -> Manifest:
    final = lifecycle.promote(ObjectStore(settings), manifest, files, report)
    get_run_logger().info(
        "promoted %s@%s: %d files, manifest written last", final.model, final.version, len(final.files)
    )
    return final


@task(name="record-rejection", cache_policy=NO_CACHE, **STORAGE_TASK)
def record_rejection(
    settings: Settings, ref: ModelRef, report: dict[str, Any], parity: dict[str, Any]
) -> str:
    key = lifecycle.reject(ObjectStore(settings), ref, report, parity)
    get_run_logger().info("rejected %s: report at s3://%s/%s; nothing promoted", ref, settings.bucket, key)
    return key


@task(name="save-run-report", cache_policy=NO_CACHE, **STORAGE_TASK)
def save_run_report(settings: Settings, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    return lifecycle.write_run_report(ObjectStore(settings), ref, run_id, report)
