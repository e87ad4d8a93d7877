"""Recipes: named, serialisable descriptions of how an FP32 ONNX file becomes a quantized one.

Issue #2 ships dynamic INT8 through ONNX Runtime's `quantize_dynamic`; the `method` field is the seam
where static (QDQ + calibration), FP16 and fused variants plug in without touching the flow.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quantgate.errors import ConfigError


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    method: Literal["dynamic"] = "dynamic"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    per_channel: bool = False
    # reduce_range keeps weights in 7 bits: needed on CPUs without VNNI to avoid overflow in
    # VPMADDUBSW (ORT quantization docs); this CPU has AVX-512 VNNI, so it is off by default.
    reduce_range: bool = False
    op_types: list[str] | None = Field(
        default=None, description="None = every op ORT can quantize dynamically"
    )
    nodes_to_exclude: list[str] = Field(default_factory=list)


RECIPES: dict[str, Recipe] = {
    # The write-ups' one-liner: quantize_dynamic(weight_type=QInt8), one scale per weight tensor.
    "dynamic-int8": Recipe(name="dynamic-int8"),
    # One scale per output channel: same speed, far less embedding drift on MiniLM (cosine 0.963 -> 0.993).
    "dynamic-int8-per-channel": Recipe(name="dynamic-int8-per-channel", per_channel=True),
}
DEFAULT_RECIPE = "dynamic-int8-per-channel"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {sorted(RECIPES)}") from None


class QuantizeResult(BaseModel):
    path: Path
    recipe: Recipe
    size_bytes: int
    op_counts: dict[str, int]
    quantized_matmuls: int
    float_matmuls: int


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def apply_recipe(recipe: Recipe, fp32_path: Path, out_dir: Path) -> QuantizeResult:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from quantgate.export import check_external_data

    check_external_data(fp32_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "model.int8.onnx"
    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        weight_type=QuantType[recipe.weight_type],
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        op_types_to_quantize=recipe.op_types,
        nodes_to_exclude=recipe.nodes_to_exclude,
        # Needed when the input graph was fused by ORT's transformer optimizer (NOTES-infra.md).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    onnx.checker.check_model(str(out_path))
    counts = op_counts(out_path)
    return QuantizeResult(
        path=out_path,
        recipe=recipe,
        size_bytes=out_path.stat().st_size,
        op_counts=counts,
        quantized_matmuls=counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0),
        float_matmuls=counts.get("MatMul", 0),
    )
