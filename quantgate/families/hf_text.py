"""What the Hugging Face text classifiers share (sequence and token classification): export of a model
with a head to ONNX (`input_ids`, `attention_mask`, [`token_type_ids`] → `logits`, dynamic batch and
sequence axes), the tokenizer and the label names saved beside it, and running the ONNX model over
held-out texts in length-sorted batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quantgate.backends import Servable, open_session
from quantgate.errors import HeldoutValidationError, InvalidModelError
from quantgate.export import (
    OPSET,
    ExportResult,
    check_model_folder,
    export_module,
    load_hf_model,
    load_tokenizer,
    model_files_size,
    model_inputs,
    parity_vs_torch,
)

HEAD_FILE = "head.json"  # label names and input names, beside the tokenizer (and promoted with it)


class HeadModule:
    """A transformers model with a head, called with positional tensors in `inputs` order, returning its
    logits: what torch.onnx.export and the PyTorch benchmark engine call."""

    def __new__(cls, model: Any, inputs: list[str]) -> Any:
        import torch

        class _Head(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                return self.model(**dict(zip(inputs, tensors, strict=True))).logits

        return _Head().eval()


def id2label(config: dict[str, Any]) -> dict[int, str]:
    raw = config.get("id2label") or {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InvalidModelError(
            "config.json's id2label keys are not class indices: re-save the model with save_pretrained()"
        ) from None


def check_head_model(model_dir: Path, auto_class: str, allow_pickle: bool) -> dict[str, Any]:
    config = check_model_folder(model_dir, allow_pickle, auto_class=auto_class)
    if len(id2label(config)) < 2:
        raise InvalidModelError(
            f"config.json of {model_dir.name} names fewer than 2 labels (id2label): set id2label/label2id "
            "when you build the model, then save_pretrained() it"
        )
    return config


class Head:
    """What a server needs besides the tokenizer: the label of each class index and the model's inputs."""

    def __init__(self, assets: Path) -> None:
        data = json.loads((assets / HEAD_FILE).read_text())
        self.labels: dict[int, str] = {int(k): v for k, v in data["labels"].items()}
        self.inputs: list[str] = list(data["inputs"])

    def feeds(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: encoded[n] for n in self.inputs}


def label_ids(values: Any, labels: dict[int, str], what: str = "label") -> np.ndarray:
    """Held-out labels (a class name, or its index) as class indices; an error naming every value the
    model has never seen, and the labels it knows."""
    by_name = {name: i for i, name in labels.items()}
    out, unknown = [], []
    for v in values:
        text = str(v).strip()
        if text in by_name:
            out.append(by_name[text])
        elif text.lstrip("-").isdigit() and int(text) in labels:
            out.append(int(text))
        else:
            out.append(-1)
            unknown.append(text)
    if unknown:
        shown = sorted(set(unknown))[:8]
        raise HeldoutValidationError(
            f"held-out {what}s {shown} are not labels of the model (it knows {sorted(by_name)} or their "
            f"indices 0..{len(labels) - 1}): fix the held-out file or register the model it belongs to",
            [f"{what} not in the model's id2label: {shown}"],
        )
    return np.asarray(out, dtype=np.int64)


def export_text_head(
    model_dir: Path,
    out_dir: Path,
    auto_class: str,
    sample_feeds: Callable[[Any], list[dict[str, np.ndarray]]],
    atol: float,
    allow_pickle: bool,
    per_token: bool,
) -> ExportResult:
    """Export the model's logits with dynamic batch (and sequence) axes; check it against PyTorch on the
    held-out samples `sample_feeds(tokenizer)` gives; save the tokenizer and label names beside it."""
    config = check_head_model(model_dir, auto_class, allow_pickle)
    tokenizer = load_tokenizer(model_dir)
    model = load_hf_model(model_dir, auto_class, allow_pickle)
    inputs = model_inputs(model)
    module = HeadModule(model, inputs)
    batches = [{n: b[n] for n in inputs} for b in sample_feeds(tokenizer)]
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    onnx_path = out_dir / "model.onnx"
    export_module(module, onnx_path, {n: batches[0][n][:2] for n in inputs}, ["logits"], axes, model_dir.name)
    assets = out_dir / "tokenizer"
    tokenizer.save_pretrained(assets)
    labels = {str(k): v for k, v in sorted(id2label(config).items())}
    (assets / HEAD_FILE).write_text(json.dumps({"labels": labels, "inputs": inputs}, indent=1))
    diffs = parity_vs_torch(module, onnx_path, batches, ["logits"], atol)
    return ExportResult(
        onnx_path=onnx_path,
        tokenizer_files=sorted(p for p in assets.iterdir() if p.is_file()),
        input_names=inputs,
        output_names=["logits"],
        opset=OPSET,
        max_abs_diff_vs_torch=diffs,
        parity_samples=sum(len(b["input_ids"]) for b in batches),
        size_bytes=model_files_size(onnx_path),
    )


def run_batches(
    model: Servable,
    feeds_of: Callable[[list[int]], dict[str, np.ndarray]],
    lengths: list[int],
    threads: int,
    batch: int = 32,
) -> list[np.ndarray]:
    """The logits of every example (per-token logits keep their batch's padding: the caller trims them),
    run in length-sorted batches so that padding (and time) stays low."""
    session = open_session(model, threads)
    order = np.argsort(lengths, kind="stable")
    out: list[np.ndarray] = [np.empty(0)] * len(lengths)
    for start in range(0, len(order), batch):
        idx = [int(i) for i in order[start : start + batch]]
        feeds = feeds_of(idx)
        (logits,) = session.run(["logits"], feeds)
        for row, i in enumerate(idx):
            out[i] = logits[row]
    return out


def torch_head(model_dir: Path, auto_class: str, allow_pickle: bool) -> Any:
    model = load_hf_model(model_dir, auto_class, allow_pickle)
    return HeadModule(model, model_inputs(model))
