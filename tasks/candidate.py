"""Model stages: export to ONNX, the FP32 reference, the champion, calibration data, each backend's shared
preparation, build and score one candidate, rank sensitive nodes, benchmark. Each task logs and calls one
core function. Compute never retries: the same input would fail the same way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.backends import Servable
from quantgate.bench import BenchReport, BenchSettings
from quantgate.export import OPSET, ExportResult, external_data_min_bytes, uses_external_data
from quantgate.export_cache import cached_export
from quantgate.lifecycle import Champion
from quantgate.quantize import Recipe
from quantgate.search import CandidateResult, Dispatch
from quantgate.search_driver import (
    ScoreJob,
    SharedJob,
    load_shared_job,
    prepare_backends,
    rank_nodes_of,
    score_candidate,
    worker_id,
)
from quantgate.sensitivity import NodeSensitivity
from quantgate.settings import ExportSettings
from quantgate.tasktypes import Reference, TaskType


@task(name="export-onnx", cache_policy=NO_CACHE)
def export(
    task_type: TaskType,
    model_dir: Path,
    heldout: pd.DataFrame,
    cache_dir: Path,
    source_checksum: str,
    atol: float,
    allow_pickle: bool,
) -> ExportResult:
    """Cached by the model's source checksum: a re-run skips the export (a verified cache entry only).
    An export made with allow_pickle has its own entry: a run without it never reuses what was loaded on
    the word of another run's user (a tabular export keeps a loadable copy of the model)."""
    vouched = "-allow-pickle" if allow_pickle else ""
    # A forced external-data layout (QUANTGATE_EXTERNAL_DATA_MIN_BYTES) is an entry of its own: a cached
    # one-file export would otherwise be handed to a run that asked for external data.
    threshold = external_data_min_bytes()
    layout = (
        ""
        if threshold == ExportSettings.model_fields["external_data_min_bytes"].default
        else (f"-ext{threshold}")
    )
    key = f"{task_type.name}-{source_checksum[:32]}-opset{OPSET}-atol{atol:g}{vouched}{layout}"
    result, hit = cached_export(
        cache_dir,
        key,
        lambda out: task_type.export(model_dir, out, heldout, atol, allow_pickle),
        source_checksum=source_checksum,
        atol=atol,
    )
    get_run_logger().info(
        "%s %s%s (%.1f MB, opset %d); max |ONNX - PyTorch| = %s",
        "export cache hit:" if hit else "exported",
        result.onnx_path.name,
        " with external data" if uses_external_data(result.onnx_path) else "",
        result.size_bytes / 1e6,
        result.opset,
        {k: f"{v:.2e}" for k, v in result.max_abs_diff_vs_torch.items()},
    )
    return result


@task(name="reference-outputs", cache_policy=NO_CACHE)
def reference(
    task_type: TaskType, fp32: Servable, assets: Path, evaluation: pd.DataFrame, threads: int
) -> Reference:
    ref = task_type.reference(fp32, assets, evaluation, threads)
    get_run_logger().info(
        "FP32 reference on %d evaluation rows: task metric %.4f (%.1f s)",
        len(evaluation),
        ref.task_metric,
        ref.seconds,
    )
    return ref


@task(name="score-champion", cache_policy=NO_CACHE)
def score_champion(
    task_type: TaskType, ref: Reference, champion: Champion, evaluation: pd.DataFrame, threads: int
) -> Reference:
    scored = task_type.score_champion(
        ref, champion.version, champion.servable, champion.tokenizer_dir, evaluation, threads
    )
    get_run_logger().info(
        "champion @%s on the same %d evaluation rows: task metric %.4f",
        champion.version,
        len(evaluation),
        scored.champion_metric,
    )
    return scored


@task(name="calibration-data", cache_policy=NO_CACHE)
def calibration_data(
    task_type: TaskType, assets: Path, calibration: pd.DataFrame
) -> list[dict[str, np.ndarray]]:
    feeds = task_type.calibration_feeds(assets, calibration)
    get_run_logger().info("calibration split: %d rows -> %d batches", len(calibration), len(feeds))
    return feeds


@task(name="prepare-backends", cache_policy=NO_CACHE)
def prepare(
    recipes: list[Recipe], fp32: Path, model_dir: Path, out_dir: Path
) -> tuple[dict[str, Any], list[str]]:
    prepared, warnings = prepare_backends(recipes, fp32, model_dir, out_dir)
    logger = get_run_logger()
    for backend, value in prepared.items():
        if value is not None:
            logger.info("%s prepared: %s", backend, getattr(value, "fused_ops", value))
    for warning in warnings:
        logger.warning(warning)
    return prepared, warnings


@task(name="candidate", task_run_name="candidate-{recipe.name}", cache_policy=NO_CACHE)
def build_and_score(recipe: Recipe, job: ScoreJob, threads: int) -> CandidateResult:
    if time.monotonic() > job.deadline:
        get_run_logger().warning("candidate %s skipped: the search time budget is spent", recipe.name)
    return _logged(score_candidate(recipe, job, threads))


@task(name="candidate", task_run_name="candidate-{recipe.name}", cache_policy=NO_CACHE)
def build_and_score_shared(recipe: Recipe, job: SharedJob, threads: int) -> CandidateResult:
    """The same step in a Dask worker process: it receives the job's path and wall-clock deadline (a few
    hundred bytes), reads the job from the run's work folder, and says where it ran."""
    local = load_shared_job(job)
    if time.monotonic() > local.deadline:
        get_run_logger().warning("candidate %s skipped: the search time budget is spent", recipe.name)
    result = _logged(score_candidate(recipe, local, threads))
    return result.model_copy(update={"dispatch": Dispatch(worker=worker_id(), task_bytes=0)})


def _logged(result: CandidateResult) -> CandidateResult:
    logger = get_run_logger()
    if result.status == "failed":
        logger.warning("candidate %s failed to build: %s", result.name, result.note)
    elif result.evaluation is not None:
        ev = result.evaluation
        logger.info(
            "candidate %-38s %5.1f MB%s  %s %.4f -> %.4f  %s",
            result.name,
            (result.size_bytes or 0) / 1e6,
            " (build cache hit)" if result.build_cached else "",
            ev.task_metric,
            ev.task_metric_fp32,
            ev.task_metric_candidate,
            "  ".join(f"{k} {v:.4f}" for k, v in ev.extra.items()),
        )
    return result


@task(name="rank-sensitive-nodes", cache_policy=NO_CACHE)
def rank_sensitive_nodes(
    recipe: Recipe, source_path: Path, calibration: list[dict[str, np.ndarray]]
) -> list[NodeSensitivity]:
    ranking = rank_nodes_of(recipe, source_path, calibration)
    get_run_logger().info(
        "most sensitive nodes for %s: %s",
        recipe.name,
        ", ".join(f"{s.node} ({s.sqnr_db:.1f} dB)" for s in ranking[:6]),
    )
    return ranking


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(
    task_type: TaskType,
    model_dir: Path,
    fp32: Servable,
    candidates: dict[str, Servable],
    assets: Path,
    heldout: pd.DataFrame,
    settings: BenchSettings,
    allow_pickle: bool,
) -> BenchReport:
    report = task_type.benchmark(model_dir, fp32, candidates, assets, heldout, settings, allow_pickle)
    for r in report.results:
        get_run_logger().info(
            "%-38s p50 %7.2f ms  p95 %7.2f ms  %6.1f MB", r.engine, r.p50_ms, r.p95_ms, r.size_mb
        )
    return report
