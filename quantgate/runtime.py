"""How an artifact is opened for inference: one ONNX Runtime session factory for the parity check, the
sensitivity ranking, the benchmark and the people who serve the promoted model.

Some speed lives in session settings, not in the graph. ORT 1.32 fuses a residual Add + LayerNormalization
that follows an INT8 MatMul into SkipLayerNormalization, whose CPU kernel is far slower than the two ops
it replaces (MiniLM b1/s128/1 thread: 6 nodes, 1.16 ms against 0.18 ms; whole model 6.9 -> 6.3 ms of
kernel time, see benchmarks/profile_ops.py). ORT cannot be told so from inside the ONNX file, so a
recipe's session settings are written beside its artifact (`model.int8.session.json`), promoted with it,
and applied by `inference_session()` wherever the artifact is opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quantgate.errors import ConfigError

OPTIMIZER_NAME = r"^[A-Z][A-Za-z0-9]{2,79}$"


class SessionSettings(BaseModel):
    """What ORT must be told when it opens the artifact. ORT ignores optimizer names it does not know, so
    a misspelt one only costs speed, which the benchmark shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    disabled_optimizers: list[str] = Field(
        default_factory=list,
        description="ORT graph optimizers to switch off, e.g. SkipLayerNormFusion",
    )

    @field_validator("disabled_optimizers")
    @classmethod
    def _optimizer_names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.match(OPTIMIZER_NAME, n)]
        if bad:
            raise ValueError(
                f"{bad} are not ORT optimizer names: give the graph transformer's class name, "
                "e.g. SkipLayerNormFusion"
            )
        return names


def settings_path(model_path: Path) -> Path:
    """model.int8.onnx -> model.int8.session.json"""
    return model_path.with_suffix(".session.json")


def write_settings(model_path: Path, settings: SessionSettings) -> Path:
    path = settings_path(model_path)
    path.write_text(json.dumps(settings.model_dump(), indent=2) + "\n")
    return path


def read_settings(model_path: Path) -> SessionSettings:
    """The settings beside an artifact; an artifact without them (the FP32 export) gets ORT's defaults."""
    path = settings_path(model_path)
    if not path.exists():
        return SessionSettings()
    try:
        return SessionSettings.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise ConfigError(
            f"{path} is not valid session settings ({exc}): restore it from the promoted artifact's folder"
        ) from None


def inference_session(
    path: Path, threads: int, *, optimized_path: Path | None = None, profile_prefix: Path | None = None
) -> Any:
    """An ORT CPU session for an artifact, with the session settings promoted beside it. optimized_path
    saves the graph ORT actually runs after its fusions; profile_prefix turns ORT's profiler on
    (benchmarks/profile_ops.py, tests)."""
    import onnxruntime as ort

    from quantgate.export import check_external_data

    check_external_data(path)
    settings = read_settings(path)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if threads > 1:
        # Idle worker threads spin by default and steal the core from whatever runs next: in an
        # interleaved benchmark that is the other engines (measured: 2-thread INT8 13.1 -> 5.0 ms p50).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(
        str(path),
        opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=settings.disabled_optimizers or None,
    )
