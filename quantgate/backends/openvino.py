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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from quantgate.backends import AccuracyTarget, Quantizer, Runtime, Servable, Session
from quantgate.errors import CandidateUnavailable, ConfigError
from quantgate.recipe import QuantizeResult, Recipe
from quantgate.sensitivity import NodeSensitivity

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
    symmetric_activations: bool = Field(
        False, description="NNCF's PERFORMANCE preset (symmetric activations) instead of MIXED (asymmetric)"
    )
    subset_size: int = Field(300, ge=1, le=10_000, description="calibration samples NNCF reads")
    accuracy_control: bool = Field(
        False,
        description="nncf.quantize_with_accuracy_control: revert the layers that cost most of the run's task "
        "metric to FP32 until its drop is within max_drop",
    )
    max_drop: float | None = Field(
        None, ge=0, description="accuracy control's allowed task-metric drop; None = the run's limit"
    )
    max_iterations: int = Field(8, ge=1, le=100, description="accuracy control: at most this many reverts")
    shape_buckets: list[int] | None = Field(
        None,
        description="serving setting: one compiled static shape per bucket (batch 1, tokens padded to the "
        "next bucket); inputs past the last bucket, or batches above 1, run on the dynamic model",
    )

    @property
    def precision(self) -> str:
        return "int8" if self.method == "nncf-int8" else "bf16"

    @property
    def artifact_name(self) -> str:
        return f"model.ov-{self.precision}.xml"

    @property
    def kind(self) -> str:
        return f"openvino-{self.precision}"

    @property
    def calibrated(self) -> bool:
        return self.method == "nncf-int8"

    @property
    def can_fall_back(self) -> bool:
        # The sensitive-node fallback's nodes become NNCF's ignored scope (OpenVINO's frontend keeps the ONNX
        # node names); accuracy control reverts layers itself.
        return self.method == "nncf-int8" and not self.accuracy_control

    @model_validator(mode="after")
    def _consistent(self) -> OvRecipe:
        if self.shape_buckets is not None and (
            not self.shape_buckets
            or self.shape_buckets != sorted(set(self.shape_buckets))
            or not 1 <= self.shape_buckets[0] <= self.shape_buckets[-1] <= 512
        ):
            raise ValueError(
                "shape_buckets must be distinct increasing token counts within 1..512, got "
                f"{self.shape_buckets}"
            )
        if self.method == "bf16" and (self.accuracy_control or self.nodes_to_exclude):
            raise ValueError(
                "a bf16 recipe quantizes nothing: accuracy_control and nodes_to_exclude are for INT8"
            )
        return self


@dataclass(frozen=True)
class _RankedAs:
    """How NNCF quantizes weights (INT8 symmetric, per output channel), as the SQNR ranking reads it."""

    nodes_to_exclude: list[str]
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False


DEFAULT_SEARCH = ("ov-nncf-int8-transformer-symmetric", "ov-nncf-int8-transformer", "ov-bf16")


def settings_file(xml: Path) -> Path:
    return xml.with_suffix(".ov.json")


class OpenVino(Runtime):
    """OpenVINO's CPU plugin, with the precision hint stored beside the IR (threads per session)."""

    name = BACKEND
    packages = ("openvino",)

    def session(self, path: Path, threads: int) -> Session:
        ov = _openvino()
        settings = json.loads(settings_file(path).read_text()) if settings_file(path).is_file() else {}
        config = {
            "INFERENCE_NUM_THREADS": threads,
            # FP32 unless the artifact asks for BF16: on a BF16 CPU the plugin's default is BF16.
            "INFERENCE_PRECISION_HINT": settings.get("precision_hint", "f32"),
            "PERFORMANCE_HINT": "LATENCY",
        }
        core = ov.Core()
        compiled = core.compile_model(str(path), "CPU", config)
        buckets = settings.get("shape_buckets") or []
        # Token inputs only (rank 2: batch x tokens); an image model's pixels keep the dynamic model.
        if not buckets or any(i.get_partial_shape().rank.get_length() != 2 for i in compiled.inputs):
            return _OvSession(compiled)
        static = {}
        for length in buckets:
            model = core.read_model(str(path))
            model.reshape({i.get_any_name(): [1, length] for i in model.inputs})
            static[length] = _OvSession(core.compile_model(model, "CPU", config))
        return _BucketedSession(_OvSession(compiled), static)

    def files(self, path: Path) -> list[Path]:
        sidecars = [settings_file(path)] if settings_file(path).is_file() else []
        return [path, path.with_suffix(".bin"), *sidecars]


class _Live(Runtime):
    """A model NNCF has compiled, held for one call of its validation function: lets the task type score it
    through the same `open_session` every servable goes through."""

    name = "openvino-live"
    compiled: ClassVar[dict[str, Any]] = {}

    def session(self, path: Path, threads: int) -> Session:
        return _OvSession(self.compiled[str(path)])

    def files(self, path: Path) -> list[Path]:
        return []


def _score_compiled(target: AccuracyTarget, compiled: Any) -> float:
    key = f"nncf-validation-{id(compiled)}"
    _Live.compiled[key] = compiled
    try:
        return target.metric(Servable(Path(key), _Live.name))
    finally:
        del _Live.compiled[key]


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


class _BucketedSession:
    """Static shapes where the traffic fits them: a batch-1 request is padded (input ids, mask and token
    types with 0: masked out) to the next bucket and run on the model compiled for that shape; outputs
    with a token axis are cut back to the request's length. Anything else runs on the dynamic model."""

    def __init__(self, dynamic: _OvSession, static: dict[int, _OvSession]) -> None:
        self.dynamic, self.static = dynamic, static
        # Outputs whose second axis is dynamic in the exported model carry tokens (a pooled embedding or
        # the class logits do not).
        self.per_token = {
            o.get_any_name()
            for o in dynamic.compiled.outputs
            if o.get_partial_shape().rank.get_length() >= 2 and o.get_partial_shape()[1].is_dynamic
        }

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        first = next(iter(feeds.values()))
        batch, width = first.shape[0], first.shape[-1]
        bucket = next((b for b in sorted(self.static) if b >= width), None)
        if batch != 1 or bucket is None or any(v.ndim != 2 for v in feeds.values()):
            return self.dynamic.run(output_names, feeds)
        padded = {k: np.pad(v, ((0, 0), (0, bucket - width))) for k, v in feeds.items()}
        names = output_names or self.dynamic.outputs
        out = self.static[bucket].run(names, padded)
        return [
            o[:, :width] if n in self.per_token and o.ndim >= 2 and o.shape[1] == bucket else o
            for n, o in zip(names, out, strict=True)
        ]


def _quiet_nncf() -> Any:
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


class OpenVinoQuantizer(Quantizer):
    name = BACKEND
    recipe_type = OvRecipe
    runtime = BACKEND
    packages = ("openvino", "nncf")

    def catalogue(self) -> list[Recipe]:
        return [
            OvRecipe(name="ov-nncf-int8-transformer"),
            OvRecipe(name="ov-nncf-int8-transformer-no-smoothquant", smooth_quant=False),
            OvRecipe(name="ov-nncf-int8-transformer-symmetric", symmetric_activations=True),
            OvRecipe(name="ov-nncf-int8-default", preset="default"),
            OvRecipe(name="ov-nncf-int8-accuracy-control", accuracy_control=True),
            OvRecipe(name="ov-bf16", method="bf16"),
            # Static shapes for short traffic (issue #21): at 12 tokens a fixed shape ran ~30 % faster than
            # varied shapes on OpenVINO's CPU plugin; the serving profile's benchmark says whether the
            # padding to the next bucket pays.
            OvRecipe(name="ov-nncf-int8-transformer-buckets", shape_buckets=[16, 32, 64, 128]),
        ]

    def default_search(self) -> list[str]:
        # NNCF's TRANSFORMER preset with symmetric and with asymmetric (NNCF's default) activations: on
        # MiniLM they tie (benchmarks/peers.py) and which passes the gates depends on the model; BF16 where
        # the CPU has it.
        return list(DEFAULT_SEARCH)

    def build_inputs(self, recipe: Recipe, prepared: Any) -> list[Path] | None:
        """Accuracy control tunes against the run's own metric and limit: never taken from the cache."""
        return None if isinstance(recipe, OvRecipe) and recipe.accuracy_control else []

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
            model = self._quantize(recipe, model, calibration, target)
            hint = "f32"
        xml = out_dir / recipe.artifact_name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        sidecar: dict[str, Any] = {"precision_hint": hint}
        if recipe.shape_buckets:
            sidecar["shape_buckets"] = recipe.shape_buckets
        settings_file(xml).write_text(json.dumps(sidecar))
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

    def rank_sensitive_nodes(
        self, recipe: Recipe, source: Path, calibration: list[dict[str, np.ndarray]]
    ) -> list[NodeSensitivity]:
        """The same per-node SQNR ranking as ONNX Runtime's fallback, with NNCF's weight quantization; the
        ONNX node names are the OpenVINO op names the ignored scope takes."""
        from quantgate.backends.ort_sensitivity import rank_nodes

        if not isinstance(recipe, OvRecipe) or not recipe.can_fall_back:
            return []
        return rank_nodes(source, _RankedAs(nodes_to_exclude=list(recipe.nodes_to_exclude)), calibration)

    @staticmethod
    def _quantize(
        recipe: OvRecipe,
        model: Any,
        calibration: list[dict[str, np.ndarray]] | None,
        target: AccuracyTarget | None,
    ) -> Any:
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
        ignored = None
        if recipe.nodes_to_exclude:
            known = {op.get_friendly_name() for op in model.get_ordered_ops()}
            missing = sorted(set(recipe.nodes_to_exclude) - known)
            if missing:
                raise ConfigError(
                    f"recipe {recipe.name!r} keeps nodes in FP32 that the model does not have: {missing[:5]} "
                    "(nodes_to_exclude takes the ONNX export's node names)"
                )
            ignored = nncf.IgnoredScope(names=list(recipe.nodes_to_exclude))
        if recipe.accuracy_control:
            return _with_accuracy_control(nncf, recipe, model, calibration, target, ignored, advanced)
        return nncf.quantize(
            model,
            nncf.Dataset(calibration),
            preset=_preset(nncf, recipe),
            model_type=nncf.ModelType.TRANSFORMER if recipe.preset == "transformer" else None,
            subset_size=recipe.subset_size,
            fast_bias_correction=recipe.fast_bias_correction,
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )


def _preset(nncf: Any, recipe: OvRecipe) -> Any:
    presets = nncf.QuantizationPreset
    return presets.PERFORMANCE if recipe.symmetric_activations else presets.MIXED


def _with_accuracy_control(
    nncf: Any,
    recipe: OvRecipe,
    model: Any,
    calibration: list[dict[str, np.ndarray]],
    target: AccuracyTarget | None,
    ignored: Any,
    advanced: Any,
) -> Any:
    """NNCF's accuracy control with our task metric on the run's evaluation split as its validation
    function. NNCF ranks layers by how much its quantization moves their outputs on evaluation inputs
    (our metric is one number over the whole split, not a per-row value, so the validation function
    declines partial sets), then reverts the worst to FP32 until the drop is within `max_drop`."""
    if target is None:
        raise ConfigError(
            f"recipe {recipe.name!r} tunes against the task metric: run it through a search (quantgate run), "
            "which supplies the evaluation split"
        )
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    items = target.feeds()

    def validate(compiled: Any, data: Any) -> tuple[float | None, None]:
        if sum(1 for _ in data) != len(items):
            return None, None  # a subset: NNCF then ranks layers by their outputs
        return _score_compiled(target, compiled), None

    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration),
        nncf.Dataset(items),
        validate,
        max_drop=target.max_drop if recipe.max_drop is None else recipe.max_drop,
        preset=_preset(nncf, recipe),
        subset_size=recipe.subset_size,
        fast_bias_correction=recipe.fast_bias_correction,
        model_type=nncf.ModelType.TRANSFORMER if recipe.preset == "transformer" else None,
        ignored_scope=ignored,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=recipe.max_iterations, ranking_subset_size=min(len(items), 100)
        ),
    )
