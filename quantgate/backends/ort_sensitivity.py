"""The ONNX Runtime backend's answer to "which nodes hurt accuracy most when quantized": per-layer SQNR
on the calibration split.

For every MatMul with a constant weight, the FP32 model's real input activations X are captured (the
node's input added as a graph output, as ONNX Runtime's qdq_loss_debug does), and the node alone is
quantized the way the recipe would: Y = X·W against Ŷ = deq(q(X))·deq(q(W)), with X quantized per
tensor to uint8 from its own range in each run (dynamic quantization; a static recipe's calibrated range
is close to it on the calibration split) and W per tensor or per output channel, int8 symmetric or uint8
asymmetric, 7-bit under reduce_range. SQNR = 10·log10(‖Y‖² / ‖Y - Ŷ‖²): low SQNR = the node's own
quantization noise is large.
This isolates each node's contribution (comparing activations of the two whole models would charge a
node with the error of every node before it). The cost of keeping a node in FP32 is its MACs per token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from quantgate.sensitivity import NodeSensitivity


class Recipe(Protocol):
    """What the ranking reads of an ONNX Runtime recipe: how its weights are quantized."""

    weight_type: Literal["QInt8", "QUInt8"]
    per_channel: bool
    reduce_range: bool
    nodes_to_exclude: list[str]


def _quantize_weight(w: np.ndarray, recipe: Recipe) -> np.ndarray:
    axis = 0 if recipe.per_channel else None  # per output column of W (K, N)
    if recipe.weight_type == "QInt8":
        qmax = 63 if recipe.reduce_range else 127
        scale = np.abs(w).max(axis=axis, keepdims=True) / qmax
        scale = np.where(scale == 0, 1.0, scale)
        return np.clip(np.round(w / scale), -qmax, qmax) * scale
    qmax = 127 if recipe.reduce_range else 255
    lo = np.minimum(w.min(axis=axis, keepdims=True), 0)
    hi = np.maximum(w.max(axis=axis, keepdims=True), 0)
    scale = np.where(hi - lo == 0, 1.0, (hi - lo) / qmax)
    zero = np.round(-lo / scale)
    return (np.clip(np.round(w / scale) + zero, 0, qmax) - zero) * scale


def _quantize_activation(x: np.ndarray) -> np.ndarray:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def rank_nodes(fp32_path: Path, recipe: Recipe, feeds: list[dict[str, np.ndarray]]) -> list[NodeSensitivity]:
    """Quantizable weight MatMuls of `fp32_path`, worst SQNR first (ties: cheaper node first)."""
    import onnx
    from onnx import numpy_helper

    from quantgate.export import save_onnx, uses_external_data
    from quantgate.runtime import inference_session

    external = uses_external_data(fp32_path)  # a model past 2 GiB cannot be saved as one protobuf
    model = onnx.load(str(fp32_path))
    weights = {i.name: i for i in model.graph.initializer}
    targets = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and len(n.input) == 2
        and n.input[1] in weights
        and n.name not in recipe.nodes_to_exclude
        and len(weights[n.input[1]].dims) == 2
    ]
    if not targets or not feeds:
        return []
    existing = {o.name for o in model.graph.output}
    for name in dict.fromkeys(n.input[0] for n in targets):
        if name not in existing:
            model.graph.output.append(onnx.helper.ValueInfoProto(name=name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capture.onnx"
        save_onnx(model, path, external)
        sess = inference_session(path, threads=1)
        names = [o.name for o in sess.get_outputs()]
        captured: dict[str, list[np.ndarray]] = {}
        for feed in feeds:
            for name, value in zip(names, sess.run(names, feed), strict=True):
                captured.setdefault(name, []).append(value.reshape(-1, value.shape[-1]))
        ranked = []
        for node in targets:
            # Saved with external data, the proto's weights now live in the folder's data file.
            w = numpy_helper.to_array(weights[node.input[1]], base_dir=tmp).astype(np.float32)
            w_hat = _quantize_weight(w, recipe)
            # One activation scale per run, as dynamic quantization computes it per call.
            pairs = [(x @ w, _quantize_activation(x) @ w_hat) for x in captured[node.input[0]]]
            y, y_hat = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
            ranked.append(
                NodeSensitivity(node=node.name, sqnr_db=sqnr_db(y, y_hat), macs_per_token=int(w.size))
            )
    ranked.sort(key=lambda s: (s.sqnr_db, s.macs_per_token))
    return ranked
