"""The recipe search inside a quantize-and-promote run, wired to Prefect: each step of the core search
driver (quantgate/search_driver.py) runs as a task, and candidates are scored concurrently (one per core,
each on its own ONNX Runtime thread) with `.submit`. The driver decides everything; this only wires.

Where candidates are built and scored is QUANTGATE_SEARCH_RUNNER: the flow's threads (the default), or
the worker processes of prefect-dask's DaskTaskRunner (issue #24), which then receive the job's path and a
wall-clock deadline instead of its arrays. Everything else, the interleaved benchmark included, stays in
the flow's process: latencies are compared only when measured on one machine in one round."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.logging import get_logger, get_run_logger
from prefect.utilities.annotations import opaque

from quantgate.backends import Servable
from quantgate.bench import BenchSettings
from quantgate.export import ExportResult
from quantgate.heldout import HeldoutSplit
from quantgate.lifecycle import Champion
from quantgate.quantize import Recipe
from quantgate.search import CandidateResult, Dispatch, SearchBudget, SearchResult
from quantgate.search_driver import (
    ScoreJob,
    SearchSteps,
    SharedJob,
    comparison_settings,
    run_search,
    share_job,
)
from quantgate.settings import Settings
from quantgate.tasktypes import TaskType
from quantgate.thresholds import GateThresholds
from tasks import candidate

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

Score = Callable[[list[Recipe], ScoreJob, int, int], list[CandidateResult]]


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
    build_cache: Path | None = None,
    prediction_cache: Path | None = None,
    dask: DaskTaskRunner | None = None,
) -> SearchResult:
    """`dask`: a DaskTaskRunner (not started) that builds and scores the candidates; None: the flow's own
    task runner (threads). It is started at the first candidate and closed when the search ends, however
    it ends."""
    with ExitStack() as stack:
        assets, fp32 = exported.assets_dir, exported.onnx_path
        progress = SearchProgress(min(len(recipes), budget.max_candidates), budget.max_trials)

        def score(batch: list[Recipe], job: ScoreJob, threads: int, at_once: int) -> list[CandidateResult]:
            # `at_once` tasks in flight, the next submitted as soon as one ends. The job (reference outputs,
            # evaluation rows) is passed as it is: Prefect would otherwise walk every element of it looking
            # for futures, for each candidate.
            waiting, running, results = list(batch), [], {}
            while waiting or running:
                while waiting and len(running) < at_once:
                    running.append(candidate.build_and_score.submit(waiting.pop(0), opaque(job), threads))
                done = next(iter(as_completed(running)))
                running.remove(done)
                result = done.result()
                progress.scored(result, again=result.name in job.built)
                results[result.name] = result
            return [results[r.name] for r in batch]

        steps = SearchSteps(
            reference=candidate.reference,
            score_champion=candidate.score_champion,
            calibration=candidate.calibration_data,
            prepare=candidate.prepare,
            score=score if dask is None else _on_dask(dask, stack, work / "shared", progress),
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
        search = run_search(
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
            build_cache,
            prediction_cache,
        )
        progress.finished(search)
        return search


def dask_runner(settings: Settings) -> DaskTaskRunner | None:
    """The search's DaskTaskRunner when QUANTGATE_SEARCH_RUNNER=dask: the scheduler at
    QUANTGATE_DASK_ADDRESS, else a LocalCluster of QUANTGATE_DASK_WORKERS single-threaded processes bound to
    127.0.0.1, with no dashboard (no port opened beyond the scheduler's and workers' own, chosen free)."""
    if settings.search_runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


def _on_dask(runner: DaskTaskRunner, stack: ExitStack, shared_dir: Path, progress: SearchProgress) -> Score:
    """The score step on Dask: the job is written once to the run's work folder, and each candidate's task
    carries its recipe, that file's path and sha256, and the deadline as wall-clock time. The runner (and
    the LocalCluster it creates) starts at the first batch, so a search stopped by its evidence gates starts
    no process."""
    shared: list[tuple[ScoreJob, SharedJob]] = []

    def score(batch: list[Recipe], job: ScoreJob, threads: int, _at_once: int) -> list[CandidateResult]:
        # Every task at once: the cluster's workers take them as they free up.
        if not shared or shared[-1][0] is not job:
            if not shared:
                stack.enter_context(runner)
            shared.append((job, share_job(job, shared_dir / f"job-{len(shared)}.pkl")))
        handle = shared[-1][1]
        sent = []
        for recipe in batch:
            parameters = {"recipe": recipe, "job": handle, "threads": threads}
            size = len(cloudpickle.dumps(parameters))
            sent.append((runner.submit(candidate.build_and_score_shared, parameters), size))
        results = []
        for future, size in sent:
            result = future.result()
            worker = result.dispatch.worker if result.dispatch else None
            result = result.model_copy(update={"dispatch": Dispatch(worker=worker, task_bytes=size)})
            progress.scored(result, again=result.name in job.built)
            results.append(result)
        return results

    return score


class SearchProgress:
    """ "candidate k of n" as a Prefect progress artifact of the run, updated as each candidate is scored
    (the fallback's trials after them), so a person watching a long search sees where it is."""

    def __init__(self, candidates: int, max_trials: int) -> None:
        self.candidates, self.max_trials, self.done = candidates, max_trials, 0
        self.share = 0.0
        self.id = self._best_effort(
            create_progress_artifact,
            0.0,
            description=f"scoring {candidates} candidate(s), then up to {max_trials} fallback trial(s)",
        )

    @staticmethod
    def _best_effort(call: Any, *args: Any, **kwargs: Any) -> Any:
        """Progress is for a person watching: an API hiccup while showing it must not fail the search."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to show progress is only logged
            try:
                logger = get_run_logger()
            except Exception:  # noqa: BLE001 - outside a run (a unit test): the module's logger
                logger = get_logger(__name__)
            logger.warning("search progress not shown: %s", type(exc).__name__)
            return None

    def _update(self, share: float, description: str) -> None:
        if self.id is not None:
            self._best_effort(update_progress_artifact, self.id, share, description=description)

    def scored(self, result: CandidateResult, again: bool = False) -> None:
        """`again`: racing scored it on its probe before, and now on the full split."""
        verdict = {"evaluated": "pass" if result.passed else "fail"}.get(result.status, result.status)
        if again:
            self._update(self.share, f"`{result.name}` on the full split: {verdict}")
            return
        self.done += 1
        if self.done <= self.candidates:
            where = f"candidate {self.done} of {self.candidates}"
        else:
            where = f"fallback trial {self.done - self.candidates} of at most {self.max_trials}"
        self.share = min(100.0 * self.done / (self.candidates + self.max_trials), 99.0)
        rows = f" on {result.evaluation.rows} rows" if result.evaluation is not None else ""
        self._update(self.share, f"{where}: `{result.name}`{rows} {verdict}")

    def finished(self, search: SearchResult) -> None:
        if search.stopped_early and search.evidence is not None:
            failed = search.evidence.gates.failure_brief()
            self._update(
                100.0,
                f"stopped after the FP32 reference ({search.seconds:.0f} s): it failed {failed}; "
                "no candidate built",
            )
            return
        outcome = f"chosen `{search.chosen}`" if search.chosen else f"none passed; closest `{search.lead}`"
        self._update(100.0, f"search done: {self.done} scored in {search.seconds:.0f} s; {outcome}")
