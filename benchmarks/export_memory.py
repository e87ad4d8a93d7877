"""Peak RSS of each step of one export (issue #24 item 7): a random BERT of a `benchmarks/scaling.py` size,
exported as a run exports it (`export_sentence_embedding`), with the process's RSS sampled every 20 ms and
its peak taken per step: torch's exporter, the ONNX load and re-save (only when the layout needs it), the
checker, the parity check against PyTorch. One process, nothing else in it: what the flow adds (its
libraries, the Prefect server) is `benchmarks/scaling.py`'s.

    .venv/bin/python -m benchmarks.export_memory [--size bert-large] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "export_memory.json"
TEXTS = ["a short one", "a somewhat longer sentence about things", "x " * 60] * 6


class PeakSampler:
    """This process's RSS every 20 ms in a thread; `take()` returns the peak since the last take."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._peak = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = self._process.memory_info().rss
            with self._lock:
                self._peak = max(self._peak, rss)
            time.sleep(0.02)

    def take(self) -> tuple[int, int]:
        """(peak since the last take, RSS now), in bytes."""
        time.sleep(0.05)  # one more sample of the step that just ended
        with self._lock:
            peak, self._peak = self._peak, 0
        return peak, self._process.memory_info().rss


def measured(sampler: PeakSampler, steps: list[dict[str, Any]], label: str, fn: Callable[..., Any]) -> Any:
    """`fn` wrapped so that each call is one step: the peak before it is closed, the call's own recorded."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sampler.take()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        peak, now = sampler.take()
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
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

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
        _, baseline = sampler.take()
        torch.onnx.export = measured(sampler, steps, "torch.onnx.export", torch.onnx.export)
        onnx.load = measured(sampler, steps, "onnx.load (re-save)", onnx.load)
        export.save_onnx = measured(sampler, steps, "save_onnx (re-save)", export.save_onnx)
        onnx.checker.check_model = measured(sampler, steps, "onnx checker", onnx.checker.check_model)
        sentence_embedding.parity_vs_torch = measured(
            sampler, steps, "parity vs PyTorch", sentence_embedding.parity_vs_torch
        )
        whole = measured(sampler, [], "export", sentence_embedding.export_sentence_embedding)
        whole(folder, tmp / "out", TEXTS, atol=1e-3)
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
        "command": f"python -m benchmarks.export_memory --size {args.size}",
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
