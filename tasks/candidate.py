"""Model stages: export to ONNX, quantize with a recipe, score both on the held-out set, benchmark.
Compute never retries: the same input would fail the same way."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from quantgate.bench import BenchReport, BenchSettings
from quantgate.export import OPSET, ExportResult
from quantgate.export_cache import cached_export
from quantgate.quantize import QuantizeResult, apply_recipe, get_recipe
from quantgate.tasktypes import Evaluation, TaskType


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
        cache_dir, key, lambda out: task_type.export(model_dir, out, heldout, atol, allow_pickle)
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


@task(name="quantize", cache_policy=NO_CACHE)
def quantize(recipe_name: str, fp32_path: Path, out_dir: Path) -> QuantizeResult:
    result = apply_recipe(get_recipe(recipe_name), fp32_path, out_dir)
    get_run_logger().info(
        "recipe %s: %.1f MB, %d MatMuls quantized, %d left in FP32",
        recipe_name,
        result.size_bytes / 1e6,
        result.quantized_matmuls,
        result.float_matmuls,
    )
    return result


@task(name="check-parity", cache_policy=NO_CACHE)
def check_parity(
    task_type: TaskType,
    fp32_path: Path,
    candidate: Path,
    tokenizer_dir: Path,
    heldout: pd.DataFrame,
    abs_tol: float,
    mean_tol: float,
) -> Evaluation:
    ev = task_type.evaluate(fp32_path, candidate, tokenizer_dir, heldout, abs_tol, mean_tol)
    get_run_logger().info(
        "%s FP32 %.4f -> INT8 %.4f; mean cosine %.4f; max abs diff %.4f",
        ev.task_metric,
        ev.task_metric_fp32,
        ev.task_metric_candidate,
        ev.parity.mean_cosine,
        ev.parity.max_abs_diff,
    )
    return ev


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(
    task_type: TaskType,
    model_dir: Path,
    fp32_path: Path,
    candidate: Path,
    tokenizer_dir: Path,
    heldout: pd.DataFrame,
    settings: BenchSettings,
    allow_pickle: bool,
) -> BenchReport:
    report = task_type.benchmark(
        model_dir, fp32_path, candidate, tokenizer_dir, heldout, settings, allow_pickle
    )
    for r in report.results:
        get_run_logger().info(
            "%-13s p50 %7.2f ms  p95 %7.2f ms  %6.1f MB", r.engine, r.p50_ms, r.p95_ms, r.size_mb
        )
    return report
