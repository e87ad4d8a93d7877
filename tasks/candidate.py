"""Model stages: export to ONNX, the FP32 reference, build and score one candidate, rank sensitive nodes,
benchmark.
Compute never retries: the same input would fail the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.bench import BenchReport, BenchSettings
from quantgate.export import OPSET, ExportResult
from quantgate.export_cache import cached_export
from quantgate.gates import GateThresholds
from quantgate.lifecycle import Champion
from quantgate.quantize import FusionResult, Recipe, apply_recipe, fuse_transformer
from quantgate.search import CandidateResult
from quantgate.sensitivity import NodeSensitivity, rank_nodes
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
    """Cached by the model's source checksum: a re-run skips the export (a verified cache entry only)."""
    key = f"{task_type.name}-{source_checksum[:32]}-opset{OPSET}-atol{atol:g}"
    result, hit = cached_export(
        cache_dir,
        key,
        lambda out: task_type.export(model_dir, out, heldout, atol, allow_pickle),
        source_checksum=source_checksum,
        atol=atol,
    )
    get_run_logger().info(
        "%s %s (%.1f MB, opset %d); max |ONNX - PyTorch| = %s",
        "export cache hit:" if hit else "exported",
        result.onnx_path.name,
        result.size_bytes / 1e6,
        result.opset,
        {k: f"{v:.2e}" for k, v in result.max_abs_diff_vs_torch.items()},
    )
    return result


@task(name="reference-outputs", cache_policy=NO_CACHE)
def reference(
    task_type: TaskType, fp32_path: Path, tokenizer_dir: Path, evaluation: pd.DataFrame, threads: int
) -> Reference:
    ref = task_type.reference(fp32_path, tokenizer_dir, evaluation, threads)
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
        ref, champion.version, champion.model_path, champion.tokenizer_dir, evaluation, threads
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
    task_type: TaskType, tokenizer_dir: Path, calibration: pd.DataFrame
) -> list[dict[str, np.ndarray]]:
    feeds = task_type.calibration_feeds(tokenizer_dir, calibration)
    get_run_logger().info("calibration split: %d rows -> %d batches", len(calibration), len(feeds))
    return feeds


@task(name="fuse-transformer", cache_policy=NO_CACHE)
def fuse(fp32_path: Path, model_dir: Path, out_dir: Path) -> FusionResult:
    config = json.loads((model_dir / "config.json").read_text())
    result = fuse_transformer(fp32_path, config, out_dir)
    logger = get_run_logger()
    logger.info("ORT transformer fusion: %s", result.fused_ops)
    if result.warning:
        logger.warning(result.warning)
    return result


@task(name="candidate", task_run_name="candidate-{recipe.name}", cache_policy=NO_CACHE)
def build_and_score(
    recipe: Recipe,
    task_type: TaskType,
    fp32_path: Path,
    fused: FusionResult | None,
    calibration: list[dict[str, np.ndarray]],
    out_dir: Path,
    ref: Reference,
    tokenizer_dir: Path,
    evaluation: pd.DataFrame,
    thresholds: GateThresholds,
    threads: int,
    deadline: float,
) -> CandidateResult:
    """Quantize with one recipe and score it on the evaluation split. A recipe that cannot be applied to
    this model is a failed candidate, not a failed run: the others still compete."""
    logger = get_run_logger()
    if time.monotonic() > deadline:
        logger.warning("candidate %s skipped: the search time budget is spent", recipe.name)
        return CandidateResult(recipe=recipe, status="skipped", note="search time budget spent")
    try:
        q = apply_recipe(recipe, fp32_path, out_dir / recipe.name, fused=fused, calibration=calibration)
    except Exception as exc:  # noqa: BLE001 - ORT's quantizers raise anything; the run goes on without it
        logger.warning("candidate %s failed to build: %s: %s", recipe.name, type(exc).__name__, exc)
        return CandidateResult(recipe=recipe, status="failed", note=f"{type(exc).__name__}: {exc}"[:500])
    ev = task_type.evaluate(
        ref, q.path, tokenizer_dir, evaluation, thresholds.abs_tol, thresholds.mean_tol, threads
    )
    logger.info(
        "candidate %-38s %5.1f MB  %s %.4f -> %.4f  mean cosine %.4f  neighbours %.3f",
        recipe.name,
        q.size_bytes / 1e6,
        ev.task_metric,
        ev.task_metric_fp32,
        ev.task_metric_candidate,
        ev.parity.mean_cosine,
        ev.parity.neighbour_agreement,
    )
    result = CandidateResult(
        recipe=recipe,
        status="evaluated",
        size_bytes=q.size_bytes,
        op_counts=q.op_counts,
        fused_ops=q.fused_ops,
        quantize_s=round(q.seconds, 2),
        evaluation=ev,
    )
    return result.judged(thresholds, None, 0)


@task(name="rank-sensitive-nodes", cache_policy=NO_CACHE)
def rank_sensitive_nodes(
    recipe: Recipe, source_path: Path, calibration: list[dict[str, np.ndarray]]
) -> list[NodeSensitivity]:
    ranking = rank_nodes(source_path, recipe, calibration)
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
    fp32_path: Path,
    candidates: dict[str, Path],
    tokenizer_dir: Path,
    heldout: pd.DataFrame,
    settings: BenchSettings,
    allow_pickle: bool,
) -> BenchReport:
    report = task_type.benchmark(
        model_dir, fp32_path, candidates, tokenizer_dir, heldout, settings, allow_pickle
    )
    for r in report.results:
        get_run_logger().info(
            "%-38s p50 %7.2f ms  p95 %7.2f ms  %6.1f MB", r.engine, r.p50_ms, r.p95_ms, r.size_mb
        )
    return report
