"""The recipe search inside a quantize-and-promote run: candidates are Prefect tasks, scored concurrently
(one per core, each on its own ONNX Runtime thread), then timed together with the FP32 baselines in one
interleaved benchmark; the sensitive-node fallback runs when nothing passed and some candidate failed on
accuracy alone. Which candidate wins is decided by the pure rules in quantgate.search."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantgate.bench import BenchReport, BenchSettings
from quantgate.errors import QuantgateError, SearchError
from quantgate.export import ExportResult
from quantgate.gates import GateThresholds
from quantgate.heldout import HeldoutSplit
from quantgate.lifecycle import Champion
from quantgate.quantize import Recipe
from quantgate.search import (
    CandidateResult,
    Fallback,
    FallbackTrial,
    SearchBudget,
    SearchResult,
    choose,
    closest,
    fallback_base,
    node_costs,
)
from quantgate.sensitivity import next_exclusion
from quantgate.tasktypes import CHAMPION_ENGINE, TaskType
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
    started = time.monotonic()
    deadline = started + budget.max_seconds
    cores = os.cpu_count() or 1
    workers = min(budget.workers or cores, len(recipes))
    tokenizer_dir = exported.tokenizer_files[0].parent
    fp32 = exported.onnx_path
    recipes = recipes[: budget.max_candidates]
    warnings: list[str] = []

    # -- what every candidate is compared with ------------------------------------------------------------
    ref = candidate.reference(task_type, fp32, tokenizer_dir, split.evaluation, cores)
    if time.monotonic() > deadline:
        raise SearchError(
            f"the FP32 reference on {len(split.evaluation)} evaluation rows took {ref.seconds:.0f} s, the "
            f"whole search budget (max_seconds {budget.max_seconds:g}): lower max_eval_rows or raise "
            "max_seconds"
        )
    if champion is not None:  # the serving version, judged on the same rows and in the same benchmark
        try:
            ref = candidate.score_champion(task_type, ref, champion, split.evaluation, cores)
        except Exception as exc:  # noqa: BLE001 - a serving artifact that cannot run must not block its fix
            warnings.append(
                f"champion {champion.version} could not be scored ({type(exc).__name__}: {str(exc)[:200]}): "
                "this version is judged without it"
            )
            champion = None
    timed_extra = {} if champion is None else {CHAMPION_ENGINE + champion.version: champion.model_path}
    calibration = candidate.calibration_data(task_type, tokenizer_dir, split.calibration)
    fused = None
    if any(r.fuse for r in recipes):
        try:
            fused = candidate.fuse(fp32, model_dir, work / "fused")
        except QuantgateError as exc:
            warnings.append(str(exc))
        if fused is not None and fused.warning:
            warnings.append(fused.warning)

    def score(batch: list[Recipe], threads: int) -> list[CandidateResult]:
        futures = [
            candidate.build_and_score.submit(
                r,
                task_type,
                fp32,
                fused,
                calibration,
                work / "candidates",
                ref,
                tokenizer_dir,
                split.evaluation,
                thresholds,
                threads,
                deadline,
            )
            for r in batch
        ]
        return [f.result() for f in futures]

    def time_them(batch: list[CandidateResult]) -> BenchReport:
        return candidate.benchmark(
            task_type,
            model_dir,
            fp32,
            {c.name: _path(c, work) for c in batch} | timed_extra,
            tokenizer_dir,
            split.evaluation,
            bench,
            allow_pickle,
        )

    # -- every candidate: build, score, then time them all in one interleaved benchmark -------------------
    results: list[CandidateResult] = []
    for i in range(0, len(recipes), workers):
        results += score(recipes[i : i + workers], max(1, cores // workers))
    evaluated = [c for c in results if c.status == "evaluated"]
    if not evaluated:
        notes = "; ".join(f"{c.name}: {c.note}" for c in results)
        raise SearchError(
            f"no candidate could be built and scored ({notes}): check the recipes and the budget"
        )
    benches = [time_them(evaluated)]
    results = [c.judged(thresholds, benches[0], 1) for c in results]

    # -- sensitive-node fallback: keep the worst nodes in FP32 until the accuracy gates pass --------------
    base = fallback_base(results) if budget.max_trials else None
    fallback = None
    if base is not None:
        source = fused.path if (base.recipe.fuse and fused) else fp32
        fallback, trials, more = _fallback(
            base, thresholds, source, calibration, budget, deadline, score, cores, time_them
        )
        results += trials
        benches += more

    chosen = choose(results)
    lead = chosen or closest(results)
    return SearchResult(
        candidates=results,
        benchmarks=benches,
        chosen=chosen.name if chosen else None,
        lead=lead.name if lead else None,
        fallback=fallback,
        warnings=warnings,
        budget=budget,
        seconds=round(time.monotonic() - started, 2),
    )


def _fallback(
    base: CandidateResult,
    thresholds: GateThresholds,
    source: Path,
    calibration: list[dict[str, np.ndarray]],
    budget: SearchBudget,
    deadline: float,
    score: Callable[[list[Recipe], int], list[CandidateResult]],
    cores: int,
    time_them: Callable[[list[CandidateResult]], BenchReport],
) -> tuple[Fallback, list[CandidateResult], list[BenchReport]]:
    """Rank the base's nodes by SQNR, then keep the 1, 2, 3, 4, 6, ... worst in FP32 until a trial passes
    the accuracy gates (or the trial or time budget runs out), bisect back towards the fewest with the
    trials left, and time base and trials in one more round."""
    ranking = candidate.rank_sensitive_nodes(base.recipe, source, calibration)
    reason = base.gates.failure_summary() if base.gates else ""
    fallback = Fallback(base=base.name, reason=reason, ranking=ranking)
    trials: list[CandidateResult] = []
    tried: list[tuple[int, bool]] = []
    while (k := next_exclusion(len(ranking), budget.max_trials, tried)) is not None:
        if time.monotonic() > deadline:
            fallback.stopped = "search time budget spent"
            break
        recipe = base.recipe.keeping_fp32([s.node for s in ranking[:k]], f"{base.name}+fp32x{k}")
        result = score([recipe], cores)[0]
        trials.append(result)
        tried.append((k, result.accuracy_passed))
        fallback.trials.append(
            FallbackTrial(
                recipe=recipe.name, kept_fp32=recipe.nodes_to_exclude, accuracy_passed=result.accuracy_passed
            )
        )
    if not fallback.stopped and not any(ok for _, ok in tried):
        fallback.stopped = "trial budget spent" if ranking else "no quantized weight MatMul to keep in FP32"
    timed = [t for t in trials if t.status == "evaluated"]
    if not timed:
        return fallback, trials, []
    # Base and trials in one more interleaved benchmark (with the baselines again), so each node's latency
    # cost is a difference measured in the same round.
    bench = time_them([base, *timed])
    trials = [t.judged(thresholds, bench, 2) for t in trials]
    winner = choose(trials)  # the trial that competes for promotion (fastest passing)
    if winner is not None:
        fallback.kept_fp32 = node_costs(base.judged(thresholds, bench, 2), winner, ranking)
    return fallback, trials, [bench]


def _path(c: CandidateResult, work: Path) -> Path:
    return work / "candidates" / c.name / c.recipe.artifact_name


def candidate_path(result: SearchResult, name: str, work: Path) -> Path:
    c = result.get(name)
    if c is None:
        raise KeyError(name)
    return _path(c, work)
