"""How a task type is benchmarked and which serving profile it is judged on: shared by every task type."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantgate.backends import Servable, get_runtime
from quantgate.bench import (
    ONNX_FP32,
    TORCH_FP32,
    BenchReport,
    BenchSettings,
    Request,
    ServingProfile,
    run_benchmark,
    torch_engine,
)
from quantgate.errors import ConfigError


def engines_for(fp32: Servable, candidates: dict[str, Servable], threads: int) -> list[Any]:
    """The ONNX FP32 baseline and every candidate, each by its own runtime."""
    return [
        get_runtime(s.runtime).engine(name, s.path, threads)
        for name, s in {ONNX_FP32: fp32, **candidates}.items()
    ]


# The serving profile a task type is judged on when nobody declared one: requests drawn from its held-out
# set at batch 1, judged on latency (what an online service lives with). A task type may declare its own
# `serving_default` (tabular models are mostly scored in batches: throughput).
DEFAULT_SERVING = ServingProfile()


def serving_settings(task: Any, settings: BenchSettings) -> BenchSettings:
    """The settings with the profile resolved: the one given, else the task type's default; an objective
    left open takes the task type's."""
    default: ServingProfile = getattr(task, "serving_default", DEFAULT_SERVING)
    profile = settings.profile or default
    if profile.objective is None:
        profile = profile.model_copy(update={"objective": default.objective or "latency"})
    return settings.model_copy(update={"profile": profile})


# The longest input a BERT-style model takes when its config does not say (position embeddings).
DEFAULT_MAX_POSITIONS = 512


def check_profile(task: Any, model_dir: Path, profile: ServingProfile | None) -> None:
    """A declared profile this model cannot serve is an error before any work: lengths past the model's
    maximum, or lengths and sample texts for a model that does not read text."""
    if profile is None:
        return
    reads_text = bool(getattr(task, "reads_text", False))
    if profile.source in ("lengths", "samples") and not reads_text:
        raise ConfigError(
            f"serving profile {profile.name!r} declares {profile.source}, which mean nothing to a "
            f"{task.name} model (its requests are rows or images): declare batch_sizes only"
        )
    if profile.lengths:
        config = model_dir / "config.json"
        limit = DEFAULT_MAX_POSITIONS
        if config.is_file():
            try:
                limit = int(json.loads(config.read_text()).get("max_position_embeddings", limit))
            except (ValueError, TypeError, AttributeError):
                limit = DEFAULT_MAX_POSITIONS
        limit = min(limit, DEFAULT_MAX_POSITIONS)
        if max(profile.lengths) > limit:
            raise ConfigError(
                f"serving profile {profile.name!r} has lengths up to {max(profile.lengths)} tokens, past the "
                f"model's maximum of {limit} (config.json max_position_embeddings): lower them"
            )


def benchmark_with_torch(
    build_torch: Callable[[], Any],
    model_dir: Path,
    fp32: Servable,
    candidates: dict[str, Servable],
    requests: list[Request],
    settings: BenchSettings,
) -> BenchReport:
    """PyTorch FP32 eager (the module `build_torch` makes), the ONNX FP32 baseline and every candidate on the
    same requests, in one interleaved round; PyTorch's thread count is put back afterwards."""
    import torch

    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size if weights.exists() else 0
    previous_threads = torch.get_num_threads()
    try:
        return run_benchmark(
            [
                torch_engine(TORCH_FP32, build_torch, settings.threads, size),
                *engines_for(fp32, candidates, settings.threads),
            ],
            settings,
            requests,
        )
    finally:
        torch.set_num_threads(previous_threads)
