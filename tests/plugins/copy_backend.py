"""A second backend, added the way a team would add one: its own recipe class, a `Quantizer` that
copies the FP32 model unchanged and says it quantized nothing, served by the ONNX Runtime runtime. One
module; nothing in quantgate's shared modules or flows is edited for it (tests/integration/test_seams.py).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quantgate.backends import AccuracyTarget, Quantizer
from quantgate.recipe import QuantizeResult, Recipe


class CopyRecipe(Recipe):
    backend: Literal["copy-fp32"] = "copy-fp32"
    note: str = ""

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def artifact_name(self) -> str:
        return "model.copy.onnx"

    @property
    def kind(self) -> str:
        return "copy"


class CopyFp32(Quantizer):
    name = "copy-fp32"
    recipe_type = CopyRecipe
    runtime = "onnxruntime"

    def catalogue(self) -> list[Recipe]:
        return [CopyRecipe(name="copy-fp32")]

    def build(
        self,
        recipe: Recipe,
        fp32: Path,
        out_dir: Path,
        *,
        prepared: Any = None,
        calibration: list[dict[str, np.ndarray]] | None = None,
        target: AccuracyTarget | None = None,
    ) -> QuantizeResult:
        start = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / recipe.artifact_name
        shutil.copyfile(fp32, path)
        return QuantizeResult(
            path=path,
            recipe=recipe,
            size_bytes=path.stat().st_size,
            op_counts={},
            quantized_matmuls=0,
            float_matmuls=0,
            seconds=time.perf_counter() - start,
        )
