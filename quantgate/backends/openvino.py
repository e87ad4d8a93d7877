"""OpenVINO: a second engine beside ONNX Runtime. Candidates are built with NNCF post-training INT8
(`nncf.quantize` on the FP32 ONNX export, with the TRANSFORMER preset's SmoothQuant and fast bias
correction as recipe fields, and the sensitive-node ranking's nodes kept in FP32 as NNCF's ignored scope),
or served as FP32 weights with BF16 inference (`INFERENCE_PRECISION_HINT=bf16`) where the CPU has BF16.

The artifact is what OpenVINO serves: the IR (`model.<precision>.xml` + `.bin`) and its runtime settings
(`.ov.json`: precision hint), listed together by `OpenVino.files`. A machine without the `openvino` /
`nncf` packages, or a CPU without BF16, skips these candidates with the reason in the candidate table.
Nothing outside this module imports OpenVINO or NNCF.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from quantgate.backends import Quantizer, Runtime, Session
from quantgate.errors import CandidateUnavailable, ConfigError
from quantgate.recipe import QuantizeResult, Recipe

BACKEND = "openvino"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise CandidateUnavailable(
            "OpenVINO is not installed here (pip install openvino nncf): its candidates are skipped"
        ) from None
    return openvino


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run natively here (BF16, INT8, ...); [] without OpenVINO."""
    try:
        return list(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except CandidateUnavailable:
        return []


class OvRecipe(Recipe):
    backend: Literal["openvino"] = "openvino"
    method: Literal["nncf-int8", "bf16"] = "nncf-int8"
    preset: Literal["transformer", "default"] = Field(
        "transformer", description="NNCF model type: transformer enables SmoothQuant and its ignored patterns"
    )
    smooth_quant: bool = Field(True, description="transformer preset: apply SmoothQuant")
    fast_bias_correction: bool = True
    subset_size: int = Field(300, ge=1, le=10_000, description="calibration samples NNCF reads")

    @property
    def precision(self) -> str:
        return "int8" if self.method == "nncf-int8" else "bf16"

    @property
    def artifact_name(self) -> str:
        return f"model.ov-{self.precision}.xml"

    @property
    def kind(self) -> str:
        return f"openvino-{self.precision}"

    # The sensitive-node fallback ranks ONNX nodes with ORT; mapping them to NNCF's ignored scope on the
    # OpenVINO graph is not done yet, so OpenVINO candidates do not fall back.


def settings_file(xml: Path) -> Path:
    return xml.with_suffix(".ov.json")


class OpenVino(Runtime):
    """OpenVINO's CPU plugin, with the precision hint stored beside the IR (threads per session)."""

    name = BACKEND

    def session(self, path: Path, threads: int) -> Session:
        ov = _openvino()
        settings = json.loads(settings_file(path).read_text()) if settings_file(path).is_file() else {}
        config = {
            "INFERENCE_NUM_THREADS": threads,
            # FP32 unless the artifact asks for BF16: on a BF16 CPU the plugin's default is BF16.
            "INFERENCE_PRECISION_HINT": settings.get("precision_hint", "f32"),
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        return _OvSession(compiled)

    def files(self, path: Path) -> list[Path]:
        sidecars = [settings_file(path)] if settings_file(path).is_file() else []
        return [path, path.with_suffix(".bin"), *sidecars]


class _OvSession:
    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in compiled.outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = {i.get_any_name() for i in self.compiled.inputs}
        result = self.request.infer({k: v for k, v in feeds.items() if k in names})
        by_name = {k.get_any_name(): v for k, v in result.items()}
        return [np.asarray(by_name[n]) for n in (output_names or self.outputs)]


def _quiet_nncf() -> Any:
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


class OpenVinoQuantizer(Quantizer):
    name = BACKEND
    recipe_type = OvRecipe
    runtime = BACKEND

    def catalogue(self) -> list[Recipe]:
        return [
            OvRecipe(name="ov-nncf-int8-transformer"),
            OvRecipe(name="ov-nncf-int8-transformer-no-smoothquant", smooth_quant=False),
            OvRecipe(name="ov-nncf-int8-default", preset="default"),
            OvRecipe(name="ov-bf16", method="bf16"),
        ]

    def build(
        self,
        recipe: Recipe,
        fp32: Path,
        out_dir: Path,
        *,
        prepared: Any = None,
        calibration: list[dict[str, np.ndarray]] | None = None,
    ) -> QuantizeResult:
        if not isinstance(recipe, OvRecipe):
            raise ConfigError(f"recipe {recipe.name!r} is not an OpenVINO recipe")
        ov = _openvino()
        start = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        model = ov.Core().read_model(str(fp32))
        if recipe.method == "bf16":
            if "BF16" not in cpu_capabilities():
                raise CandidateUnavailable("this CPU has no BF16 (OpenVINO's CPU plugin lists none): skipped")
            hint = "bf16"
        else:
            model = self._quantize(recipe, model, calibration)
            hint = "f32"
        xml = out_dir / recipe.artifact_name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        settings_file(xml).write_text(json.dumps({"precision_hint": hint}))
        counts = dict(Counter(op.get_type_name() for op in model.get_ordered_ops()))
        quantized = counts.get("FakeQuantize", 0)
        return QuantizeResult(
            path=xml,
            recipe=recipe,
            size_bytes=sum(f.stat().st_size for f in OpenVino().files(xml)),
            op_counts=counts,
            quantized_matmuls=quantized,
            float_matmuls=counts.get("MatMul", 0),
            seconds=time.perf_counter() - start,
        )

    @staticmethod
    def _quantize(recipe: OvRecipe, model: Any, calibration: list[dict[str, np.ndarray]] | None) -> Any:
        if not calibration:
            raise ConfigError(
                f"recipe {recipe.name!r} needs calibration data: the held-out set's calibration split is "
                "empty"
            )
        nncf = _quiet_nncf()
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        advanced = None
        if recipe.preset == "transformer" and not recipe.smooth_quant:
            advanced = AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)
            )
        ignored = (
            nncf.IgnoredScope(names=recipe.nodes_to_exclude, validate=False)
            if recipe.nodes_to_exclude
            else None
        )
        return nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER if recipe.preset == "transformer" else None,
            subset_size=recipe.subset_size,
            fast_bias_correction=recipe.fast_bias_correction,
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )
