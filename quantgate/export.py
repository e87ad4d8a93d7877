"""Export a Hugging Face model folder to ONNX, check the graph and check it reproduces PyTorch.

Why the TorchScript exporter (`dynamo=False`) with a named-argument wrapper: with transformers 5 it
exports MiniLM in < 1 s (dynamo: ~5 s) and its graph is what ONNX Runtime's transformer optimizer and
`quant_pre_process` understand (NOTES-infra.md: `quant_pre_process` fails on the dynamo export). Passing
positional args to the bare model fails (`got multiple values for argument 'use_cache'`), hence the wrapper.
Attention is loaded as "eager": SDPA exports leave ORT's fuser 0 Attention nodes to fuse.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from quantgate.errors import ExportError, InvalidModelError

OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ExportResult(BaseModel):
    onnx_path: Path
    tokenizer_files: list[Path]
    input_names: list[str]
    output_names: list[str]
    opset: int
    pooling: str
    normalize: bool
    max_abs_diff_vs_torch: dict[str, float]
    parity_samples: int
    size_bytes: int


def check_model_folder(model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Refuse what cannot be loaded safely, with the way out in the message."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InvalidModelError(f"{model_dir} has no config.json: register a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"config.json is not valid JSON ({exc}): re-save the model folder") from None
    if not config.get("architectures") and not config.get("model_type"):
        raise InvalidModelError(
            "config.json names no architectures or model_type: save it with save_pretrained()"
        )
    if not (model_dir / "model.safetensors").is_file():
        if (model_dir / "pytorch_model.bin").is_file() and not allow_pickle:
            raise InvalidModelError(
                "only a pickle checkpoint (pytorch_model.bin) was found: pickles can run code when loaded. "
                "Convert it to model.safetensors, or pass --allow-pickle if you trust its source"
            )
        if not (model_dir / "pytorch_model.bin").is_file():
            raise InvalidModelError(
                f"{model_dir} has no model.safetensors: save the model with safe_serialization"
            )
    weights = model_dir / "model.safetensors"
    if weights.is_file():
        _check_safetensors_header(weights)
    for onnx_file in model_dir.rglob("*.onnx"):
        check_external_data(onnx_file)
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InvalidModelError(
            f"{model_dir} has no tokenizer (tokenizer.json or vocab.txt): save the tokenizer too"
        )
    return config


def _check_safetensors_header(path: Path) -> None:
    """Parse only the header (cheap, no tensor is read): catches truncated or non-safetensors files."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            if not list(fh.keys()):
                raise InvalidModelError(f"{path.name} holds no tensors: re-save the model")
    except (SafetensorError, OSError) as exc:
        raise InvalidModelError(
            f"{path.name} is not a readable safetensors file ({exc}): re-save the model"
        ) from None


def check_external_data(onnx_path: Path) -> None:
    """Refuse an ONNX file whose external-data locations leave its folder: ONNX Runtime would read any
    file the path points at (path traversal, e.g. location='../../etc/passwd')."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = onnx_path.parent.resolve()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for garbage
        raise InvalidModelError(f"{onnx_path.name} is not a valid ONNX file ({type(exc).__name__})") from None

    def tensors(graph: Any) -> Any:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise InvalidModelError(
                f"{onnx_path.name}: tensor {tensor.name!r} reads external data from {location!r}, outside "
                "its folder: refusing to load it (re-export with external data beside the model)"
            )


def _pooling_of(model_dir: Path) -> tuple[str, bool]:
    """Pooling and normalisation from a sentence-transformers folder; mean + L2 for plain HF folders."""
    mode, normalize = "mean", True
    pooling_cfg = model_dir / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        cfg = json.loads(pooling_cfg.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
    modules = model_dir / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    return mode, normalize


def build_embedding_module(model_dir: Path, allow_pickle: bool = False) -> tuple[Any, Any, str, bool]:
    """(torch module taking named inputs, tokenizer, pooling, normalize)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would flood the run logs
    check_model_folder(model_dir, allow_pickle)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        base = AutoModel.from_pretrained(
            model_dir,
            local_files_only=True,
            attn_implementation="eager",
            use_safetensors=not allow_pickle,
            weights_only=True,
        ).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise InvalidModelError(
            f"cannot load the model in {model_dir.name}: {exc}. Re-save it with save_pretrained()"
        ) from None
    pooling, normalize = _pooling_of(model_dir)

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "max":
                pooled = (hidden + (mask - 1.0) * 1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return hidden, pooled

    return SentenceEmbedder(base).eval(), tokenizer, pooling, normalize


INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]


def tokenize(
    tokenizer: Any, texts: list[str], max_length: int, pad_to_max: bool = False
) -> dict[str, np.ndarray]:
    enc = tokenizer(
        texts,
        padding="max_length" if pad_to_max else True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    out = {name: enc[name].astype(np.int64) for name in INPUT_NAMES if name in enc}
    out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
    return out


def export_sentence_embedding(
    model_dir: Path,
    out_dir: Path,
    sample_texts: list[str],
    atol: float,
    allow_pickle: bool = False,
    max_length: int = 128,
) -> ExportResult:
    import onnx
    import onnxruntime as ort
    import torch

    module, tokenizer, pooling, normalize = build_embedding_module(model_dir, allow_pickle)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    example = tokenize(tokenizer, sample_texts[:2], max_length)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, "last_hidden_state"]}
    axes["sentence_embedding"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript tracer warnings about python control flow
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES),
                str(onnx_path),
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        # Consolidate into one file (small models) and check the graph; onnx.checker on the path also
        # covers models with external data.
        model_proto = onnx.load(str(onnx_path))
        onnx.save(model_proto, str(onnx_path))
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"ONNX export of {model_dir.name} failed: {exc}") from None

    tokenizer_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    diffs = _parity_vs_torch(module, onnx_path, tokenizer, sample_texts, max_length, ort)
    worst = max(diffs.values())
    if not np.isfinite(worst) or worst > atol:
        raise ExportError(
            f"exported ONNX graph differs from PyTorch by {worst:.3g} (> export_atol {atol:g}) on "
            f"{len(sample_texts)} held-out texts: the export is wrong, not the quantization"
        )
    return ExportResult(
        onnx_path=onnx_path,
        tokenizer_files=sorted(p for p in tokenizer_dir.iterdir() if p.is_file()),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        opset=OPSET,
        pooling=pooling,
        normalize=normalize,
        max_abs_diff_vs_torch=diffs,
        parity_samples=len(sample_texts),
        size_bytes=onnx_path.stat().st_size,
    )


def _parity_vs_torch(
    module: Any, onnx_path: Path, tokenizer: Any, texts: list[str], max_length: int, ort: Any, batch: int = 8
) -> dict[str, float]:
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for start in range(0, len(texts), batch):
        feeds = tokenize(tokenizer, texts[start : start + batch], max_length)
        with torch.no_grad():
            ref = [t.numpy() for t in module(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))]
        if not all(np.isfinite(r).all() for r in ref):
            raise InvalidModelError(
                "the PyTorch model outputs NaN or Inf on the held-out texts: check its weights"
            )
        got = session.run(OUTPUT_NAMES, feeds)
        for name, r, g in zip(OUTPUT_NAMES, ref, got, strict=True):
            worst[name] = max(worst[name], float(np.abs(r - g).max()))
    return worst
