"""The ONNX Runtime backend: its recipes, the quantizer that applies them with ONNX Runtime's own tools
(quantize_dynamic, quantize_static with a calibration reader, the transformer optimizer, the FP16
converter) and the runtime that opens the artifacts (quantgate/runtime.py's session factory).

The only module that imports ONNX Runtime's quantization API. `RECIPES` is its catalogue;
`DEFAULT_SEARCH` is what a run tries when it is not told otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantgate.backends import AccuracyTarget, Quantizer, Runtime, Session
from quantgate.errors import ConfigError, InvalidModelError, NothingToQuantize
from quantgate.recipe import QuantizeResult, Recipe
from quantgate.runtime import SessionSettings, inference_session, settings_path, write_settings
from quantgate.sensitivity import NodeSensitivity

Method = Literal["dynamic", "static", "fp16"]
Calibration = Literal["MinMax", "Entropy", "Percentile"]


def quantizable_op_types() -> set[str]:
    """Op types ONNX Runtime's quantizers know (dynamic integer ops, QLinear ops, QDQ)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    return set(IntegerOpsRegistry) | set(QLinearOpsRegistry) | set(QDQRegistry)


class OrtRecipe(Recipe):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["onnxruntime"] = "onnxruntime"
    method: Method = "dynamic"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    activation_type: Literal["QInt8", "QUInt8"] = Field(
        "QUInt8", description="static only; U8S8 is the fast path on x86 (S8S8 QDQ measured 2.5x slower)"
    )
    per_channel: bool = False
    # reduce_range keeps weights in 7 bits: needed on CPUs without VNNI to avoid overflow in
    # VPMADDUBSW (ORT quantization docs); a candidate, not a default.
    reduce_range: bool = False
    calibration: Calibration | None = Field(None, description="static only: how activation ranges are set")
    fuse: bool = Field(
        False, description="run ORT's transformer optimizer (Attention, SkipLayerNorm...) first"
    )
    op_types: list[str] | None = Field(
        default=None, description="None = every op ORT quantizes for this method"
    )
    session: SessionSettings = Field(
        default_factory=SessionSettings,
        description="ORT session settings the artifact is served with (written beside it, promoted with it)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrtRecipe:
        if self.op_types is not None:
            known = quantizable_op_types()
            unknown = [t for t in self.op_types if t not in known]
            if unknown or not self.op_types:
                raise ValueError(
                    f"recipe {self.name!r}: op_types {unknown or self.op_types} are not op types ONNX "
                    f"Runtime quantizes (names are case-sensitive; known: {', '.join(sorted(known))})"
                )
        if self.method == "static" and self.calibration is None:
            raise ValueError(
                f"recipe {self.name!r}: static quantization needs calibration (MinMax, Entropy or Percentile)"
            )
        if self.method != "static" and self.calibration is not None:
            raise ValueError(f"recipe {self.name!r}: calibration applies to method 'static' only")
        return self

    @property
    def precision(self) -> str:
        return "fp16" if self.method == "fp16" else "int8"

    @property
    def kind(self) -> str:
        return self.method

    @property
    def can_fall_back(self) -> bool:
        return self.method != "fp16"

    @property
    def calibrated(self) -> bool:
        return self.method == "static"


def _r(name: str, **kw: Any) -> OrtRecipe:
    return OrtRecipe(name=name, **kw)


# Static recipes quantize MatMul and the embedding Gather only: quantizing LayerNorm, Softmax, GELU and the
# residual Adds is what collapses static INT8 on transformers (DistilBERT NER F1 0.94 -> 0.10).
_STATIC_OPS = ["MatMul", "Gather"]
_NO_SLN = SessionSettings(disabled_optimizers=["SkipLayerNormFusion"])
RECIPES: dict[str, OrtRecipe] = {
    r.name: r
    for r in [
        # The write-ups' one-liner: quantize_dynamic(weight_type=QInt8), one scale per weight tensor.
        _r("dynamic-int8"),
        # One scale per output channel: same speed, far less embedding drift (MiniLM cosine 0.963 -> 0.993).
        _r("dynamic-int8-per-channel", per_channel=True),
        _r("dynamic-uint8-per-channel", weight_type="QUInt8", per_channel=True),
        _r("dynamic-int8-per-channel-reduce-range", per_channel=True, reduce_range=True),
        # The same graphs served without ORT's SkipLayerNormFusion: after an INT8 MatMul it swaps a fast
        # Add + LayerNormalization for a slow SkipLayerNormalization kernel (quantgate/runtime.py).
        _r("dynamic-int8-per-channel-no-sln", per_channel=True, session=_NO_SLN),
        _r(
            "dynamic-int8-per-channel-reduce-range-no-sln",
            per_channel=True,
            reduce_range=True,
            session=_NO_SLN,
        ),
        _r("fused-dynamic-int8", fuse=True),
        _r("fused-dynamic-int8-per-channel", fuse=True, per_channel=True),
        # Microsoft Olive's searched pick for MiniLM (TPE over ORT options, cosine goal): the fused graph,
        # per-channel, reduce_range. At sentence lengths it was the fastest INT8 measured (issue #21).
        _r("fused-dynamic-int8-per-channel-reduce-range", fuse=True, per_channel=True, reduce_range=True),
        _r(
            "static-qdq-minmax", method="static", calibration="MinMax", per_channel=True, op_types=_STATIC_OPS
        ),
        _r(
            "static-qdq-entropy",
            method="static",
            calibration="Entropy",
            per_channel=True,
            op_types=_STATIC_OPS,
        ),
        _r(
            "static-qdq-percentile",
            method="static",
            calibration="Percentile",
            per_channel=True,
            op_types=_STATIC_OPS,
        ),
        # CNNs: every op ORT's QDQ quantizer knows (Conv, Gemm, Add, pooling...), per channel; the image task
        # type's default search compares these with dynamic INT8 in the same run.
        *(
            _r(f"static-qdq-cnn-{c.lower()}", method="static", calibration=c, per_channel=True)
            for c in ("MinMax", "Entropy", "Percentile")
        ),
        # FP16 halves the size and keeps embeddings exact; on CPUs without FP16 kernels it is no faster,
        # so it is in the catalogue (for GPUs) but not in the default CPU search.
        _r("fp16", method="fp16"),
    ]
}
DEFAULT_SEARCH = [
    "dynamic-int8",
    "dynamic-int8-per-channel",
    "dynamic-int8-per-channel-reduce-range",
    "dynamic-int8-per-channel-no-sln",
    "dynamic-int8-per-channel-reduce-range-no-sln",
    "fused-dynamic-int8-per-channel",
    "fused-dynamic-int8-per-channel-reduce-range",
    "static-qdq-minmax",
]


# What makes a graph quantized: integer kernels (dynamic and QOperator formats) or QDQ pairs.
INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "ConvInteger",
        "QAttention",
        "QGemm",
        "QLinearMatMul",
        "QLinearConv",
        "QLinearAdd",
        "QLinearMul",
        "DynamicQuantizeLSTM",
    }
)


def count_quantized(graph: Any, precision: str) -> int:
    """Integer ops (or QDQ-fed compute) in an INT8 graph; FP16 initializers in an FP16 one."""
    if precision == "fp16":
        import onnx

        return sum(1 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    integer = sum(1 for n in graph.node if n.op_type in INTEGER_OPS)
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = sum(
        1
        for n in graph.node
        if n.op_type not in {"QuantizeLinear", "DequantizeLinear"} and any(i in dq_outputs for i in n.input)
    )
    return integer + qdq


# What ORT's quantizers turn into integer (or QDQ) ops; a graph with none of them has nothing to quantize.
QUANTIZABLE_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "Gather",
        "Attention",
        "LSTM",
        "GRU",
        "EmbedLayerNormalization",
    }
)


def check_quantizable(graph: Any) -> None:
    ops = {n.op_type for n in graph.node}
    if not ops & QUANTIZABLE_OPS:
        raise NothingToQuantize(
            f"nothing to quantize: the graph's ops ({', '.join(sorted(ops))}) include none that ONNX Runtime "
            f"quantizes ({', '.join(sorted(QUANTIZABLE_OPS))}); serve the FP32 model as it is"
        )


def _not_quantized(recipe: OrtRecipe, graph_ops: set[str]) -> ConfigError:
    if recipe.op_types is not None:
        ops = ", ".join(sorted(graph_ops))
        field = f"op_types {recipe.op_types} matched no node of the graph (its op types: {ops})"
    elif recipe.nodes_to_exclude:
        field = (
            f"nodes_to_exclude keeps every quantizable node in FP32 ({len(recipe.nodes_to_exclude)} nodes)"
        )
    else:
        field = f"method {recipe.method!r} found nothing to quantize in this graph"
    return ConfigError(
        f"recipe {recipe.name!r} produced a graph with no {recipe.precision.upper()} op: {field}; "
        "fix that field of the recipe"
    )


class FusionResult(BaseModel):
    path: Path
    fused_ops: dict[str, int]
    warning: str | None = None


# Model families ORT's transformer optimizer handles with its BERT fusions.
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet"}


def fuse_transformer(fp32_path: Path, model_config: dict[str, Any], out_dir: Path) -> FusionResult:
    """ORT's transformer optimizer with the head count and width from config.json (without them it
    detects neither and fuses 0 Attention nodes). Records the fused-operator counts and says so when
    Attention was not fused, which is what an SDPA export gives."""
    from onnxruntime.transformers.optimizer import optimize_model

    from quantgate.export import uses_external_data

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.fused.onnx"
    model_type = str(model_config.get("model_type", ""))
    heads = int(model_config.get("num_attention_heads") or model_config.get("n_heads") or 0)
    hidden = int(model_config.get("hidden_size") or model_config.get("dim") or 0)
    if model_type not in _BERT_LIKE:
        raise ConfigError(
            f"transformer fusion supports {sorted(_BERT_LIKE)}, not model_type {model_type!r}: "
            "drop the fused recipes for this model"
        )
    try:
        with _quiet_ort():
            model = optimize_model(str(fp32_path), model_type="bert", num_heads=heads, hidden_size=hidden)
            stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items()}
            # Past 2 GiB the fused graph cannot be one protobuf either (`model.fused.onnx.data` beside it).
            model.save_model_to_file(str(out), use_external_data_format=uses_external_data(fp32_path))
    except Exception as exc:  # noqa: BLE001 - the optimizer asserts on shapes it does not expect
        raise ConfigError(
            f"ORT transformer fusion failed on this graph ({type(exc).__name__}: {exc}): "
            "drop the fused recipes for this model"
        ) from None
    warning = None
    if stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0) == 0:
        warning = (
            "transformer fusion found 0 Attention nodes: the export probably used SDPA attention; "
            "export with attn_implementation='eager' so fusions happen"
        )
    return FusionResult(path=out, fused_ops={k: v for k, v in stats.items() if v}, warning=warning)


class FeedsReader:
    """ONNX Runtime calibration data reader over pre-tokenised batches (CalibrationDataReader protocol)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = [0]
_QUIET_SAVED: list[tuple[logging.Logger, int]] = []


@contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's quantizer and optimizer log every node at INFO/WARNING on the root logger; keep the run log
    readable (errors still surface as exceptions). Reference-counted: candidates quantize concurrently."""
    with _QUIET_LOCK:
        if _QUIET_DEPTH[0] == 0:
            names = ("", "onnxruntime", "fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert")
            _QUIET_SAVED[:] = [(lg, lg.level) for lg in map(logging.getLogger, names)]
            for lg, _ in _QUIET_SAVED:
                lg.setLevel(logging.ERROR)
        _QUIET_DEPTH[0] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH[0] -= 1
            if _QUIET_DEPTH[0] == 0:
                for lg, level in _QUIET_SAVED:
                    lg.setLevel(level)


_RELOAD_LOCK = threading.Lock()


def _reload_without_copy() -> None:
    """ONNX Runtime's dynamic quantizer (`ONNXQuantizer.__init__`, after turning Gemm into MatMul) runs
    shape inference again through `save_and_reload_model_with_shape_infer`: a deep copy of the whole model,
    saved with external data and loaded back, while the model it copied is still in memory. Of a random
    BERT-large's 1.34 GB that was a third copy at once (its quantization peaked at 4.74 GB, 3.90 without
    it: `benchmarks/export_memory.py`). The model it copies is the quantizer's own, replaced by the reloaded
    one on the next line and never read again, so in that module (the only caller there) it is saved
    without the copy. Installed once per process; an ONNX Runtime without this function keeps its own."""
    import importlib

    with _RELOAD_LOCK:
        try:
            module = importlib.import_module("onnxruntime.quantization.onnx_quantizer")
            from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
        except ImportError:
            return
        original = getattr(module, "save_and_reload_model_with_shape_infer", None)
        if original is None or getattr(original, "quantgate_no_copy", False):
            return

        def save_and_reload(model: Any) -> Any:
            import tempfile

            import onnx

            with tempfile.TemporaryDirectory(prefix="ort.quant.") as folder:
                path = Path(folder) / "model.onnx"
                onnx.save_model(model, str(path), save_as_external_data=True)
                return load_model_with_shape_infer(path)

        save_and_reload.quantgate_no_copy = True  # type: ignore[attr-defined]
        module.save_and_reload_model_with_shape_infer = save_and_reload


def apply_recipe(
    recipe: OrtRecipe,
    fp32_path: Path,
    out_dir: Path,
    *,
    fused: FusionResult | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> QuantizeResult:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from quantgate.export import check_external_data, data_file, save_onnx, uses_external_data

    check_external_data(fp32_path)
    check_quantizable(onnx.load(str(fp32_path), load_external_data=False).graph)
    if recipe.fuse and fused is None:
        raise ConfigError(f"recipe {recipe.name!r} needs the fused model: call fuse_transformer first")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()  # the private view's copy of external data counts as build time
    source = _private_view(fused.path if (recipe.fuse and fused is not None) else fp32_path, out_dir)
    out_path = out_dir / recipe.artifact_name
    # Needed when the input graph was fused by ORT's transformer optimizer: its fused nodes leave tensors
    # without a type, and the quantizer then fails unless told the default (quantize_dynamic's extra_options).
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    try:
        # A source stored with external data (a model past 2 GB, or the export forced so) gets its output
        # written the same way: ORT's quantizers otherwise serialise the whole model as one protobuf, which
        # fails past 2 GiB. Its data file (`<artifact>.data`) is listed by OnnxRuntime.files and travels
        # with the artifact. An INT8 model a quarter of the size would fit in one file; one rule is simpler.
        external = uses_external_data(source)
        data_file(out_path).unlink(missing_ok=True)  # onnx appends to a data file already there (a rebuild)
        with _quiet_ort():
            if recipe.method == "dynamic":
                _reload_without_copy()
                quantize_dynamic(
                    str(source),
                    str(out_path),
                    weight_type=QuantType[recipe.weight_type],
                    per_channel=recipe.per_channel,
                    reduce_range=recipe.reduce_range,
                    op_types_to_quantize=recipe.op_types,
                    nodes_to_exclude=recipe.nodes_to_exclude,
                    use_external_data_format=external,
                    extra_options=extra,
                )
            elif recipe.method == "static":
                if not calibration:
                    raise ConfigError(
                        f"recipe {recipe.name!r} is static and needs calibration data: the held-out set's "
                        "calibration split is empty (give more rows or drop static recipes)"
                    )
                quantize_static(
                    str(source),
                    str(out_path),
                    FeedsReader(calibration),
                    quant_format=QuantFormat.QDQ,
                    weight_type=QuantType[recipe.weight_type],
                    activation_type=QuantType[recipe.activation_type],
                    per_channel=recipe.per_channel,
                    reduce_range=recipe.reduce_range,
                    calibrate_method=CalibrationMethod[recipe.calibration or "MinMax"],
                    op_types_to_quantize=recipe.op_types,
                    nodes_to_exclude=recipe.nodes_to_exclude,
                    use_external_data_format=external,
                    extra_options=extra,
                )
            else:
                from onnxruntime.transformers.float16 import convert_float_to_float16

                model = onnx.load(str(source))
                # keep_io_types: callers still feed int64 ids and read FP32 embeddings.
                half = convert_float_to_float16(
                    model, keep_io_types=True, node_block_list=recipe.nodes_to_exclude or None
                )
                save_onnx(half, out_path, external)
    finally:
        shutil.rmtree(source.parent, ignore_errors=True)  # the private view: links and copied data
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"recipe {recipe.name!r} produced an invalid ONNX graph: {exc}") from None
    write_settings(out_path, recipe.session)
    graph = onnx.load(str(out_path), load_external_data=False).graph
    counts = dict(Counter(node.op_type for node in graph.node))
    if count_quantized(graph, recipe.precision) == 0:
        out_path.unlink()
        data_file(out_path).unlink(missing_ok=True)
        raise _not_quantized(recipe, set(counts))
    qdq = _qdq_matmuls(graph)
    return QuantizeResult(
        path=out_path,
        recipe=recipe,
        size_bytes=sum(f.stat().st_size for f in OnnxRuntime().files(out_path)),
        op_counts=counts,
        quantized_matmuls=counts.get("MatMulInteger", 0)
        + counts.get("DynamicQuantizeMatMul", 0)
        + counts.get("QAttention", 0)
        + qdq,
        float_matmuls=counts.get("MatMul", 0) - qdq,
        fused_ops=fused.fused_ops if recipe.fuse and fused else None,
        seconds=time.perf_counter() - start,
    )


def _private_view(source: Path, out_dir: Path) -> Path:
    """ORT's quantizers write scratch files (model-inferred.onnx) beside their input, so candidates built
    concurrently from one source would overwrite each other's (and litter the export cache). Each gets
    its own folder with links to the source's files; its external data is copied instead, since onnx
    refuses to read external data through a symbolic or a hard link (either could point it at any file).
    The folder is removed once the candidate is built (`apply_recipe`)."""
    from quantgate.export import external_locations

    view = out_dir / "source"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    data = external_locations(source)
    for f in source.parent.iterdir():
        if f.name in data:
            shutil.copyfile(f, view / f.name)
        elif f.is_file():
            (view / f.name).symlink_to(f.resolve())
    return view / source.name


def _qdq_matmuls(graph: Any) -> int:
    """MatMuls whose second input comes through a DequantizeLinear (static QDQ format)."""
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(
        1 for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in dq_outputs
    )


class OnnxRuntimeQuantizer(Quantizer):
    name = "onnxruntime"
    recipe_type = OrtRecipe
    runtime = "onnxruntime"
    packages = ("onnxruntime",)

    def catalogue(self) -> list[Recipe]:
        return list(RECIPES.values())

    def default_search(self) -> list[str]:
        return list(DEFAULT_SEARCH)

    def prepare(
        self, recipes: list[Recipe], fp32: Path, model_dir: Path, out_dir: Path
    ) -> tuple[FusionResult | None, list[str]]:
        """The transformer fusion, once, when a recipe asks for it; a model it cannot fuse is a warning
        (the fused recipes then fail as candidates), not a failed run."""
        if not any(isinstance(r, OrtRecipe) and r.fuse for r in recipes):
            return None, []
        if not (model_dir / "config.json").is_file():
            return None, ["transformer fusion skipped: the model has no config.json (not a transformer)"]
        try:
            fused = fuse_transformer(fp32, json.loads((model_dir / "config.json").read_text()), out_dir)
        except (ConfigError, OSError, json.JSONDecodeError) as exc:
            return None, [str(exc)]
        return fused, [fused.warning] if fused.warning else []

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
        if not isinstance(recipe, OrtRecipe):
            raise ConfigError(f"recipe {recipe.name!r} is not an ONNX Runtime recipe")
        return apply_recipe(recipe, fp32, out_dir, fused=prepared, calibration=calibration)

    def build_inputs(self, recipe: Recipe, prepared: Any) -> list[Path] | None:
        """A fused recipe quantizes the transformer optimizer's graph, not the FP32 export."""
        fused = isinstance(recipe, OrtRecipe) and recipe.fuse and prepared is not None
        return OnnxRuntime().files(prepared.path) if fused else []

    def graph_of(self, recipe: Recipe) -> dict[str, Any]:
        """The session settings are written beside the graph, not into it: a `-no-sln` recipe builds its
        sibling's graph (issue #25: built once, taken from the build cache by the other)."""
        return recipe.model_dump(mode="json", exclude={"name", "session"})

    def settle(self, recipe: Recipe, result: QuantizeResult) -> QuantizeResult:
        """The twin's own session settings beside the shared graph, and its size counted with them (the
        cached result carries the size of whichever twin was built first)."""
        if not isinstance(recipe, OrtRecipe):
            return result
        write_settings(result.path, recipe.session)
        return result.model_copy(
            update={"size_bytes": sum(f.stat().st_size for f in OnnxRuntime().files(result.path))}
        )

    def fallback_source(self, recipe: Recipe, fp32: Path, prepared: Any) -> Path:
        fused = isinstance(recipe, OrtRecipe) and recipe.fuse and prepared is not None
        return prepared.path if fused else fp32

    def rank_sensitive_nodes(
        self, recipe: Recipe, source: Path, calibration: list[dict[str, np.ndarray]]
    ) -> list[NodeSensitivity]:
        from quantgate.backends.ort_sensitivity import rank_nodes

        return rank_nodes(source, recipe, calibration) if isinstance(recipe, OrtRecipe) else []


class OnnxRuntime(Runtime):
    """ONNX Runtime on CPU, with the session settings stored beside the artifact."""

    name = "onnxruntime"
    packages = ("onnxruntime",)
    concurrent_runs = True

    def session(self, path: Path, threads: int) -> Session:
        return inference_session(path, threads)

    def files(self, path: Path) -> list[Path]:
        from quantgate.export import external_locations

        external = external_locations(path)
        sidecars = [settings_path(path)] if settings_path(path).exists() else []
        return [path, *sidecars, *(path.parent / name for name in sorted(external))]
