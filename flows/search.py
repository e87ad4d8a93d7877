"""The recipe search inside a quantize-and-promote run, wired to Prefect: each step of the core search
driver (quantgate/search_driver.py) runs as a task, and candidates are scored concurrently (one per core,
each on its own ONNX Runtime thread) with `.submit`. The driver decides everything; this only wires."""

from __future__ import annotations

from pathlib import Path

from quantgate.backends import Servable
from quantgate.bench import BenchSettings
from quantgate.export import ExportResult
from quantgate.heldout import HeldoutSplit
from quantgate.lifecycle import Champion
from quantgate.quantize import Recipe
from quantgate.search import CandidateResult, SearchBudget, SearchResult
from quantgate.search_driver import ScoreJob, SearchSteps, comparison_settings, run_search
from quantgate.tasktypes import TaskType
from quantgate.thresholds import GateThresholds
from tasks import candidate


def search_recipes(
    task_type: TaskType,
    model_dir: Path,
    exported: ExportResult,
    split: HeldoutSplit,
    recipes: list[Recipe],
    thresholds: GateThresholds,
    bench: BenchSettings,
    budget: SearchBudget,
    allow_pickle: bool,
    work: Path,
    champion: Champion | None = None,
) -> SearchResult:
    assets, fp32 = exported.assets_dir, exported.onnx_path

    def score(batch: list[Recipe], job: ScoreJob, threads: int) -> list[CandidateResult]:
        futures = [candidate.build_and_score.submit(r, job, threads) for r in batch]
        return [f.result() for f in futures]

    steps = SearchSteps(
        reference=candidate.reference,
        score_champion=candidate.score_champion,
        calibration=candidate.calibration_data,
        prepare=candidate.prepare,
        score=score,
        rank=candidate.rank_sensitive_nodes,
        benchmark=lambda servables: candidate.benchmark(
            task_type, model_dir, Servable(fp32), servables, assets, split.evaluation, bench, allow_pickle
        ),
        benchmark_fixed=None
        if bench.serving.source == "fixed"
        else lambda servables: candidate.benchmark(
            task_type,
            model_dir,
            Servable(fp32),
            servables,
            assets,
            split.evaluation,
            comparison_settings(bench),
            allow_pickle,
        ),
    )
    return run_search(
        task_type,
        model_dir,
        fp32,
        assets,
        split.calibration,
        split.evaluation,
        recipes,
        thresholds,
        budget,
        work,
        steps,
        champion,
    )
