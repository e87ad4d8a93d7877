"""Peak RSS of each step of one export (issue #24 item 7): a random BERT of a `benchmarks/scaling.py` size,
exported as a run exports it (`export_sentence_embedding`), with the process's peak RSS per step from the
kernel's high-water mark: torch's exporter, the external data written as torch hands the weights over
(when the weights reach QUANTGATE_EXTERNAL_DATA_MIN_BYTES), the ONNX load and re-save (only when the layout
needs it), the checker, the parity check against PyTorch. `--one-file` exports as one protobuf (the
setting above the weights: how every model under 2 GiB was exported before 2026-12-01). One process,
nothing else in it: what the flow adds (its libraries, the Prefect server) is `benchmarks/scaling.py`'s.

    .venv/bin/python -m benchmarks.export_memory [--size bert-large] [--one-file] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "export_memory.json"
TEXTS = ["a short one", "a somewhat longer sentence about things", "x " * 60] * 6


class PeakSampler:
    """This process's peak RSS per step from the kernel's own high-water mark (`VmHWM` in
    /proc/self/status), reset after each step by writing 5 to /proc/self/clear_refs (Linux >= 4.0).
    Not a sampling thread: a C++ call that holds the interpreter lock starves it, and torch's exporter
    held 6.0 GB for ~2 s of a BERT-large export while a thread sampling every 20 ms saw 4.6 GB (the
    figures this benchmark printed before 2026-12-01)."""

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status: this benchmark needs Linux")

    def __init__(self) -> None:
        self._open: list[int] = []  # the peaks of the steps under way, outermost first

    def _read(self) -> int:
        """The peak since the last read, charged to every step under way; RSS now."""
        peak, now = self._status("VmHWM"), self._status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        self._open = [max(p, peak) for p in self._open]
        return now

    def enter(self) -> int:
        """A step starts (inside any under way: theirs include its peak); RSS now."""
        now = self._read()
        self._open.append(now)
        return now

    def leave(self) -> tuple[int, int]:
        """The innermost step ends: (its peak, RSS now)."""
        now = self._read()
        return self._open.pop(), now


def measured(sampler: PeakSampler, steps: list[dict[str, Any]], label: str, fn: Callable[..., Any]) -> Any:
    """`fn` wrapped so that each call is one step: the peak before it is closed, the call's own recorded."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sampler.enter()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        peak, now = sampler.leave()
        steps.append(
            {
                "step": label,
                "peak_rss_bytes": peak,
                "rss_after_bytes": now,
                "wall_s": time.perf_counter() - start,
            }
        )
        return result

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bert-large", help="a size of benchmarks/scaling.py (SIZES)")
    parser.add_argument("--one-file", action="store_true", help="one protobuf, no external data")
    parser.add_argument("--ort-own-reload", action="store_true", help="ORT's own deep copy (before 90ae6dd)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.one_file:
        os.environ["QUANTGATE_EXTERNAL_DATA_MIN_BYTES"] = str(2**31 - 256 * 2**20)

    import onnx
    import torch

    from benchmarks.scaling import build_model
    from quantgate import export
    from quantgate.families import sentence_embedding
    from quantgate.report.environment import environment

    sampler = PeakSampler()
    steps: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="export-memory-"))
    try:
        folder, parameters, fp32_bytes = build_model(args.size, tmp)
        baseline = sampler.enter()
        sampler.leave()
        torch.onnx.export = measured(sampler, steps, "torch.onnx.export", torch.onnx.export)
        export._externalize = measured(sampler, steps, "write external data", export._externalize)
        load = onnx.load
        onnx.load = measured(sampler, steps, "onnx.load (re-save)", onnx.load)
        export.save_onnx = measured(sampler, steps, "save_onnx (re-save)", export.save_onnx)
        onnx.checker.check_model = measured(sampler, steps, "onnx checker", onnx.checker.check_model)
        sentence_embedding.parity_vs_torch = measured(
            sampler, steps, "parity vs PyTorch", sentence_embedding.parity_vs_torch
        )
        whole = measured(sampler, [], "export", sentence_embedding.export_sentence_embedding)
        whole(folder, tmp / "out", TEXTS, atol=1e-3)
        onnx.load = load  # ORT's quantizer loads the export: not a re-save
        gc.collect()  # the export's module is gone before a run quantizes, as in the flow
        from quantgate.backends import onnxruntime as ort_backend
        from quantgate.quantize import get_recipe

        if args.ort_own_reload:
            ort_backend._reload_without_copy = lambda: None
        quantize = measured(sampler, steps, "ORT dynamic INT8 (per channel)", ort_backend.apply_recipe)
        quantize(get_recipe("dynamic-int8-per-channel"), tmp / "out" / "model.onnx", tmp / "int8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gb = 1e9
    print(f"{args.size}: {parameters / 1e6:.0f} M parameters, FP32 {fp32_bytes / gb:.2f} GB, "
          f"RSS before the export {baseline / gb:.2f} GB")  # fmt: skip
    print(f"{'step':<22} {'peak RSS GB':>11} {'after GB':>9} {'wall s':>7}")
    for s in steps:
        print(
            f"{s['step']:<22} {s['peak_rss_bytes'] / gb:>11.2f} {s['rss_after_bytes'] / gb:>9.2f} "
            f"{s['wall_s']:>7.1f}"
        )
    out = {
        "command": f"python -m benchmarks.export_memory --size {args.size}"
        + " --one-file" * args.one_file
        + " --ort-own-reload" * args.ort_own_reload,
        "layout": "one file" if args.one_file else "external data when the weights reach the setting",
        "size": args.size,
        "parameters": parameters,
        "fp32_bytes": fp32_bytes,
        "rss_before_export_bytes": baseline,
        "steps": steps,
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
