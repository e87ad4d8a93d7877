"""The recipe search, driven: FP32 reference → its evidence gates (failed: the run is rejected here, with
no candidate built) → champion → calibration → each candidate built and scored → one interleaved benchmark
round → sensitive-node fallback when nothing passed and some candidate failed on accuracy alone. Which
candidate wins is decided by the pure rules in quantgate.search.

The driver is plain Python: what runs each step is injected (`SearchSteps`), so the flow hands it Prefect
tasks (candidates scored concurrently with `.submit`) and a test or a benchmark script hands it the plain
functions (`local_steps()`). Benchmark rounds are named: `candidates` times every candidate, `fallback`
times the fallback's base and trials again.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from quantgate.backends import AccuracyTarget, Servable, get_quantizer, get_runtime
from quantgate.bench import CHAMPION_ENGINE, BenchReport, BenchSettings
from quantgate.errors import CandidateUnavailable, NothingToQuantize, SearchError
from quantgate.gates import GateResult, limit_value
from quantgate.prediction_cache import using as using_predictions
from quantgate.quantize import Recipe, build_candidate
from quantgate.racing import (
    cannot_win,
    certain_failures,
    decided_by,
    probe_rows,
    speed_failures,
    strata,
)
from quantgate.search import (
    FIXED_ROUND,
    NOTHING_TO_QUANTIZE,
    SPEED_TIE,
    CandidateResult,
    Fallback,
    FallbackTrial,
    Race,
    RaceOutcome,
    Racing,
    Round,
    SearchBudget,
    SearchResult,
    ShapeComparison,
    choose,
    closest,
    compare_fixed_shape,
    fallback_base,
    judge_evidence,
    node_costs,
    nothing_to_quantize,
    speed_of,
)
from quantgate.sensitivity import NodeSensitivity, next_exclusion
from quantgate.storage import sha256_file
from quantgate.tasktypes import Reference, TaskType
from quantgate.thresholds import GateThresholds, limits_for


class ScoreJob(BaseModel):
    """Everything one candidate is built and scored with, except its recipe and thread count."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    task: str
    fp32: Path
    prepared: dict[str, Any]
    calibration: list[dict[str, np.ndarray]]
    out_dir: Path
    reference: Reference
    assets: Path
    evaluation: pd.DataFrame
    thresholds: GateThresholds
    deadline: float
    build_cache: Path | None = None  # where verified builds are kept (quantgate/build_cache.py); None: off
    prediction_cache: Path | None = None  # where outputs are kept (quantgate/prediction_cache.py); None: off
    # Candidates this run already built (racing's probe): scored from their artifact, not built again.
    built: dict[str, CandidateResult] = {}
    # The rows a quantizer that tunes against the metric is given, when `evaluation` is only the probe:
    # the full split, so a tuned build is the same raced or not.
    tuning_reference: Reference | None = None
    tuning_rows: pd.DataFrame | None = None


class SharedJob(BaseModel):
    """A `ScoreJob` as another process receives it (issue #24: the search on Dask): the path of the job
    written once by the search (its arrays and rows included) and that file's sha256, plus the deadline as
    wall-clock epoch seconds, since a `time.monotonic()` value means nothing on another host or process.
    A few hundred bytes, whatever the model and held-out set."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    deadline_epoch: float


def share_job(job: ScoreJob, path: Path) -> SharedJob:
    """Writes the job where the workers read it (the run's own work folder: this user's, 0700) and returns
    its handle. A worker on another host needs that folder mounted at the same path."""
    data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return SharedJob(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        deadline_epoch=time.time() + (job.deadline - time.monotonic()),
    )


def load_shared_job(shared: SharedJob) -> ScoreJob:
    """The job back in a worker, its deadline on this process's monotonic clock again. The file is read
    once per worker process and unpickled only when its bytes are the ones the search wrote."""
    job = _read_job(shared.path, shared.sha256)
    return job.model_copy(update={"deadline": time.monotonic() + (shared.deadline_epoch - time.time())})


@lru_cache(maxsize=4)
def _read_job(path: Path, sha256: str) -> ScoreJob:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SearchError(
            f"the shared search job {path} changed after the search wrote it (sha256 differs): a worker "
            "reads only the job it was sent; rerun the search"
        )
    job = pickle.loads(data)  # noqa: S301 - our own file, written by this run and checked by sha256 above
    if not isinstance(job, ScoreJob):
        raise SearchError(f"{path} holds a {type(job).__name__}, not a search job")
    return job


def worker_id() -> str:
    """Where a candidate was built and scored: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def candidate_dir(job_out: Path, recipe: Recipe) -> Path:
    return job_out / recipe.name


def accuracy_target(task: TaskType, job: ScoreJob, threads: int) -> AccuracyTarget:
    """The run's own task metric and drop limit, for a quantizer that tunes against accuracy: the candidate
    it settles on is then judged by the same gates as every other."""
    sign = 1.0 if task.metric.higher_is_better else -1.0
    reference = job.reference if job.tuning_reference is None else job.tuning_reference
    rows = job.evaluation if job.tuning_rows is None else job.tuning_rows

    def metric(servable: Servable) -> float:
        ev = task.evaluate(reference, servable, job.assets, rows, job.thresholds, threads)
        return sign * ev.task_metric_candidate

    return AccuracyTarget(
        metric=metric,
        max_drop=limit_value(job.thresholds, "max_task_metric_drop"),
        feeds=lambda: task.calibration_feeds(job.assets, rows),
    )


def score_candidate(recipe: Recipe, job: ScoreJob, threads: int) -> CandidateResult:
    """Build one candidate with its backend and score it on the evaluation split. A recipe that cannot be
    applied to this model is a failed candidate, not a failed run: the others still compete."""
    if time.monotonic() > job.deadline:
        return CandidateResult(recipe=recipe, status="skipped", note="search time budget spent")
    with using_predictions(job.prediction_cache):  # wherever the step runs (a thread, another process)
        return _build_and_score(recipe, job, threads)


def _build_and_score(recipe: Recipe, job: ScoreJob, threads: int) -> CandidateResult:
    from quantgate.tasktypes import get_task_type

    task = get_task_type(job.task)
    built = job.built.get(recipe.name)
    if built is not None and servable_of(built, job.out_dir).path.is_file():
        result = built.model_copy(update={"evaluation": None, "metrics": {}, "gates": None, "race": None})
    else:
        try:
            with using_predictions(None):  # a quantizer tuning against the metric scores models in memory
                q = build_candidate(
                    recipe,
                    job.fp32,
                    candidate_dir(job.out_dir, recipe),
                    prepared=job.prepared,
                    calibration=job.calibration,
                    target=accuracy_target(task, job, threads),
                    cache_root=job.build_cache,
                )
        except CandidateUnavailable as exc:
            return CandidateResult(recipe=recipe, status="skipped", note=str(exc)[:500])
        except NothingToQuantize as exc:
            return CandidateResult(recipe=recipe, status="failed", note=f"{NOTHING_TO_QUANTIZE}: {exc}"[:500])
        except Exception as exc:  # noqa: BLE001 - quantizers raise anything; the run goes on without it
            return CandidateResult(recipe=recipe, status="failed", note=f"{type(exc).__name__}: {exc}"[:500])
        result = CandidateResult(
            recipe=recipe,
            status="evaluated",
            size_bytes=q.size_bytes,
            op_counts=q.op_counts,
            fused_ops=q.fused_ops,
            quantize_s=round(q.seconds, 2),
            build_cached=q.cached,
        )
        try:
            result.files = judged_files(servable_of(result, job.out_dir))
        except OSError as exc:  # a file the runtime names is missing or unreadable: this candidate's failure
            return CandidateResult(recipe=recipe, status="failed", note=f"{type(exc).__name__}: {exc}"[:500])
    servable = servable_of(result, job.out_dir)
    ev = task.evaluate(job.reference, servable, job.assets, job.evaluation, job.thresholds, threads)
    return result.model_copy(update={"evaluation": ev}).judged(task, job.thresholds)


def judged_files(servable: Servable) -> dict[str, str]:
    """The artifact's files (the model, its external data, its settings), relative to its folder -> sha256:
    which bytes the gates judged, whichever process or cache built them. A runtime may name a file outside
    the folder (`../shared/vocab.txt`)."""
    folder = servable.path.parent
    return {
        Path(os.path.relpath(p, folder)).as_posix(): sha256_file(p)
        for p in sorted(get_runtime(servable.runtime).files(servable.path))
    }


def servable_of(c: CandidateResult, job_out: Path) -> Servable:
    return Servable(
        candidate_dir(job_out, c.recipe) / c.recipe.artifact_name, get_quantizer(c.recipe.backend).runtime
    )


@dataclass
class SearchSteps:
    """Who runs each step. `score` takes recipes, the ONNX Runtime threads each gets and how many run at
    once, and returns their results in order (the flow keeps that many tasks in flight); `benchmark`
    times the FP32 baseline(s) and the given servables in one interleaved round."""

    reference: Callable[[TaskType, Servable, Path, pd.DataFrame, int], Reference]
    score_champion: Callable[[TaskType, Reference, Any, pd.DataFrame, int], Reference]
    calibration: Callable[[TaskType, Path, pd.DataFrame], list[dict[str, np.ndarray]]]
    prepare: Callable[[list[Recipe], Path, Path, Path], tuple[dict[str, Any], list[str]]]
    score: Callable[[list[Recipe], ScoreJob, int, int], list[CandidateResult]]
    rank: Callable[[Recipe, Path, list[dict[str, np.ndarray]]], list[NodeSensitivity]]
    benchmark: Callable[[dict[str, Servable]], BenchReport]
    # Times servables at the fixed shape (b1/s128) for the report's comparison; None when the run's profile
    # is that shape already.
    benchmark_fixed: Callable[[dict[str, Servable]], BenchReport] | None = None


def prepare_backends(
    recipes: list[Recipe], fp32: Path, model_dir: Path, out_dir: Path
) -> tuple[dict[str, Any], list[str]]:
    """Each backend's shared work for the recipes it builds (ORT: the transformer fusion), once."""
    prepared: dict[str, Any] = {}
    warnings: list[str] = []
    for backend in dict.fromkeys(r.backend for r in recipes):
        mine = [r for r in recipes if r.backend == backend]
        prepared[backend], more = get_quantizer(backend).prepare(mine, fp32, model_dir, out_dir / backend)
        warnings += more
    return prepared, warnings


def rank_nodes_of(
    recipe: Recipe, source: Path, calibration: list[dict[str, np.ndarray]]
) -> list[NodeSensitivity]:
    return get_quantizer(recipe.backend).rank_sensitive_nodes(recipe, source, calibration)


def local_steps(
    task: TaskType, model_dir: Path, assets: Path, heldout: pd.DataFrame, bench: BenchSettings, fp32: Path,
    allow_pickle: bool = False,
) -> SearchSteps:  # fmt: skip
    """The steps run in this process, one after the other (tests, benchmark scripts)."""
    return SearchSteps(
        reference=lambda t, s, a, h, n: t.reference(s, a, h, n),
        score_champion=lambda t, r, c, h, n: t.score_champion(
            r, c.version, c.servable, c.tokenizer_dir, h, n
        ),
        calibration=lambda t, a, h: t.calibration_feeds(a, h),
        prepare=prepare_backends,
        score=lambda batch, job, n, _at_once: [score_candidate(r, job, n) for r in batch],
        rank=rank_nodes_of,
        benchmark=lambda servables: task.benchmark(
            model_dir, Servable(fp32), servables, assets, heldout, bench, allow_pickle
        ),
        benchmark_fixed=None
        if bench.serving.source == "fixed"
        else lambda servables: task.benchmark(
            model_dir, Servable(fp32), servables, assets, heldout, comparison_settings(bench), allow_pickle
        ),
    )


def comparison_settings(bench: BenchSettings) -> BenchSettings:
    """The fixed-shape comparison round: b1/s128 with a third of the runs, the candidates only (it ranks
    them and informs, never decides; PyTorch and ORT FP32 at s128 were 70 % of its time on MiniLM)."""
    return bench.fixed_shape().model_copy(
        update={
            "warmup_runs": min(bench.warmup_runs, 3),
            "repeat_runs": max(5, bench.repeat_runs // 3),
            "baselines": False,
        }
    )


def run_search(
    task: TaskType,
    model_dir: Path,
    fp32: Path,
    assets: Path,
    calibration_rows: pd.DataFrame,
    evaluation: pd.DataFrame,
    recipes: list[Recipe],
    thresholds: GateThresholds,
    budget: SearchBudget,
    work: Path,
    steps: SearchSteps,
    champion: Any = None,
    build_cache: Path | None = None,
    prediction_cache: Path | None = None,
) -> SearchResult:
    """The search above. Candidates' builds go through `build_cache`, and every model's outputs on the
    evaluation rows (FP32, champion, candidates) through `prediction_cache` (None: off)."""
    with using_predictions(prediction_cache):
        started = time.monotonic()
        deadline = started + budget.max_seconds
        cores = os.cpu_count() or 1
        recipes = recipes[: budget.max_candidates]
        workers = min(budget.workers or cores, len(recipes))
        limits = thresholds.resolved(limits_for(task))  # what the report records, whatever the outcome

        # -- what every candidate is compared with
        ref = _fp32_reference(task, fp32, assets, evaluation, budget, deadline, steps, cores)
        # -- can the held-out set judge anything?
        evidence = judge_evidence(task, thresholds, ref.metrics(), len(evaluation))
        if evidence.failed:
            # Every candidate would fail the same gate on the same FP32 values: the decision is known, so no
            # champion is scored and no candidate is built (issue #23: shuffled scores built 11 for 355 s).
            return SearchResult(
                candidates=[],
                benchmarks={},
                chosen=None,
                lead=None,
                evidence=evidence,
                warnings=[],
                budget=budget,
                seconds=round(time.monotonic() - started, 2),
                limits=limits,
            )
        ref, champion, warnings = _with_champion(task, ref, champion, evaluation, cores, steps)
        timed_extra = {} if champion is None else {CHAMPION_ENGINE + champion.version: champion.servable}
        calibration = steps.calibration(task, assets, calibration_rows)
        prepared, more = steps.prepare(recipes, fp32, model_dir, work / "prepared")
        warnings += more
        job = ScoreJob(
            task=task.name,
            fp32=fp32,
            prepared=prepared,
            calibration=calibration,
            out_dir=work / "candidates",
            reference=ref,
            assets=assets,
            evaluation=evaluation,
            thresholds=thresholds,
            deadline=deadline,
            build_cache=build_cache,
            prediction_cache=prediction_cache,
        )

        def time_them(batch: list[CandidateResult]) -> BenchReport:
            return steps.benchmark({c.name: servable_of(c, job.out_dir) for c in batch} | timed_extra)

        race = _Race(task, model_dir, evaluation, job, thresholds, budget, steps, workers, cores, champion)
        raced = race.run(recipes, time_them) if budget.race else None
        if raced is not None:
            results, benches = raced
        else:
            # -- every candidate: build, score, then time them all in one interleaved benchmark (when racing
            # gave way, what it already knows on every row is kept: builds that failed, full-split scores)
            if race.racing is not None and race.full_job.built:
                warnings.append(race.gave_way())
            todo = [r for r in recipes if r.name not in race.known]
            fresh = _score_all(todo, race.full_job, workers, cores, steps)
            scored = {c.name: c for c in fresh} | race.known
            results = [scored[r.name] for r in recipes]
            evaluated = [c for c in results if c.status == "evaluated"]
            if results and all((c.note or "").startswith(NOTHING_TO_QUANTIZE) for c in results):
                # No recipe found anything to quantize: a decision (not promoted, with its reason and what
                # the FP32 model costs), not a failed run.
                bench = steps.benchmark(timed_extra)
                return nothing_to_quantize(
                    results, ref.task_metric, bench, budget, warnings, time.monotonic() - started
                ).model_copy(update={"limits": limits, "racing": race.racing})
            if not evaluated:
                notes = "; ".join(f"{c.name}: {c.note}" for c in results)
                raise SearchError(
                    f"no candidate could be built and scored ({notes}): check the recipes and the budget"
                )
            benches = {"candidates": time_them(evaluated)}
            results = [c.judged(task, thresholds, benches["candidates"], "candidates") for c in results]

        # -- sensitive-node fallback: keep the worst nodes in FP32 until the accuracy gates pass
        base = fallback_base(results) if budget.max_trials else None
        fallback = None
        if base is not None:
            fallback, trials, again = _fallback(task, base, thresholds, job, budget, steps, cores, time_them)
            results += trials
            if again is not None:
                benches["fallback"] = again

        chosen = choose(results)
        lead = chosen or closest(results)
        comparison = None
        # Informs, never decides: skipped once the search's time is spent.
        if chosen is not None and steps.benchmark_fixed is not None and time.monotonic() < deadline:
            benches[FIXED_ROUND], comparison = _fixed_shape_round(
                results, chosen.name, job.out_dir, steps.benchmark_fixed
            )
        return SearchResult(
            candidates=results,
            benchmarks=benches,
            chosen=chosen.name if chosen else None,
            lead=lead.name if lead else None,
            fixed_shape=comparison,
            fallback=fallback,
            evidence=evidence,
            warnings=warnings,
            budget=budget,
            seconds=round(time.monotonic() - started, 2),
            limits=limits,
            racing=race.racing,
        )


class _Race:
    """Racing (quantgate/racing.py) for one search: the probe's reference, each candidate built and scored
    on the probe, the certain failures dropped, the rest timed, then scored in full fastest first until
    the rest cannot win. `run` returns None when racing does not apply (too few rows) or gives way (no
    candidate passed); `full_job` then scores every candidate on every row, reusing the probe's builds."""

    def __init__(
        self,
        task: TaskType,
        model_dir: Path,
        evaluation: pd.DataFrame,
        job: ScoreJob,
        thresholds: GateThresholds,
        budget: SearchBudget,
        steps: SearchSteps,
        workers: int,
        cores: int,
        champion: Any,
    ) -> None:
        self.task, self.model_dir, self.evaluation, self.job = task, model_dir, evaluation, job
        self.thresholds, self.budget, self.steps = thresholds, budget, steps
        self.workers, self.cores, self.champion = workers, cores, champion
        self.full_job = job
        self.racing: Racing | None = None
        # What the exhaustive search would get for a recipe whatever the rows, as it came from the score
        # step: a build that failed or was skipped, a score on the full split. Kept when racing gives way.
        self.known: dict[str, CandidateResult] = {}

    def _probe(self) -> ScoreJob | None:
        schema = self.task.heldout_schema(self.model_dir)
        keys = strata(schema.columns, schema.slice_columns, self.evaluation)
        at = probe_rows(self.evaluation, self.budget.race_share, keys, dict(schema.columns))
        if at is None:
            return None
        rows = self.evaluation.iloc[at]
        try:
            ref = self.steps.reference(self.task, Servable(self.job.fp32), self.job.assets, rows, self.cores)
            if self.champion is not None:
                ref = self.steps.score_champion(self.task, ref, self.champion, rows, self.cores)
        except Exception:  # noqa: BLE001 - both were scored on the full split already: do not race
            return None
        self.racing = Racing(probe_rows=len(rows), of=len(self.evaluation), strata=keys)
        return self.job.model_copy(
            update={
                "reference": ref,
                "evaluation": rows,
                "tuning_reference": self.job.reference,
                "tuning_rows": self.job.evaluation,
            }
        )

    def gave_way(self) -> str:
        """The warning a search that raced and found no passing candidate carries."""
        rows = 0
        if self.racing is not None:
            self.racing = self.racing.model_copy(update={"gave_way": True})
            rows = self.racing.probe_rows
        return (
            f"racing gave way: no candidate passed every gate after the {rows}-row probe, so every "
            "candidate was scored on the full split, as without racing"
        )

    def _race(self, outcome: RaceOutcome, rows: int, reason: str = "") -> Race:
        return Race(outcome=outcome, rows=rows, of=len(self.evaluation), reason=reason)

    def run(
        self, recipes: list[Recipe], time_them: Callable[[list[CandidateResult]], BenchReport]
    ) -> tuple[list[CandidateResult], dict[Round, BenchReport]] | None:
        probe = self._probe()
        if probe is None:
            return None
        probed = _score_all(recipes, probe, self.workers, self.cores, self.steps)
        self.full_job = self.job.model_copy(
            update={"built": {c.name: c for c in probed if c.status == "evaluated"}}
        )
        self.known = {c.name: c for c in probed if c.status != "evaluated"}
        decided = dict(self.known)
        alive = self._drop_certain(probed, len(probe.evaluation), decided)
        if not alive:
            return None
        bench = time_them(alive)
        pending = self._drop_slow(alive, bench, len(probe.evaluation), decided)
        judged = self._full(pending, bench, len(probe.evaluation), decided)
        if not any(c.passed for c in judged):
            return None
        return [decided[r.name] for r in recipes if r.name in decided], {"candidates": bench}

    def _drop_certain(
        self, probed: list[CandidateResult], n: int, decided: dict[str, CandidateResult]
    ) -> list[CandidateResult]:
        """The probed candidates no accuracy gate has failed for certain; the others are decided."""
        alive = []
        for c in probed:
            if c.status != "evaluated" or c.gates is None:
                continue
            certain = certain_failures(c.gates, c.metrics)
            if not certain:
                alive.append(c)
                continue
            reason = "; ".join(_outside(r) for r in certain)
            decided[c.name] = decided_by(c, certain).model_copy(
                update={"race": self._race("raced-out", n, reason)}
            )
        return alive

    def _drop_slow(
        self, alive: list[CandidateResult], bench: BenchReport, n: int, decided: dict[str, CandidateResult]
    ) -> list[CandidateResult]:
        """The timed candidates that passed every speed gate, fastest first; the others are decided."""
        pending = []
        for c in alive:
            timed = c.judged(self.task, self.thresholds, bench, "candidates")
            slow = speed_failures(timed.gates) if timed.gates else []
            if not slow:
                pending.append(timed)
                continue
            reason = f"failed {', '.join(r.gate.name for r in slow)} in the candidates round"
            decided[c.name] = decided_by(timed, slow).model_copy(
                update={"race": self._race("speed-failed", n, reason)}
            )
        return sorted(pending, key=speed_of)

    def _full(
        self, pending: list[CandidateResult], bench: BenchReport, n: int, decided: dict[str, CandidateResult]
    ) -> list[CandidateResult]:
        """Score on the full split, `workers` at a time and fastest first, until the rest cannot win. A batch
        smaller than `workers` (the last one) shares every core: a candidate's outputs do not depend on its
        thread count (each built MiniLM candidate, both engines, gave bit-identical embeddings on one and
        two threads), and one alone on one thread left the other core idle for 9 s of a 92 s run."""
        judged: list[CandidateResult] = []
        while pending:
            losing = {c.name for c in cannot_win(pending, judged)}
            for c in (c for c in pending if c.name in losing):
                best = min((j for j in judged if j.passed), key=speed_of)
                reason = (
                    f"{speed_of(c):.3g} against {best.name}'s {speed_of(best):.3g} (the serving profile's "
                    f"objective), slower beyond the {SPEED_TIE:.0%} tie band than a candidate that passed "
                    "every gate: it could not be chosen"
                )
                race = self._race("cannot-win", n, reason)
                decided[c.name] = c.model_copy(
                    update={"status": "skipped", "gates": None, "note": reason, "race": race}
                )
            pending = [c for c in pending if c.name not in losing]
            if not pending:
                break
            batch, pending = pending[: self.workers], pending[self.workers :]
            threads = max(1, self.cores // len(batch))
            scored = self.steps.score([c.recipe for c in batch], self.full_job, threads, len(batch))
            self.known |= {c.name: c for c in scored}
            for c in scored:
                full = c.judged(self.task, self.thresholds, bench, "candidates")
                if full.status == "evaluated":
                    full = full.model_copy(update={"race": self._race("full", len(self.evaluation))})
                judged.append(full)
                decided[c.name] = full
        return judged


def _outside(result: GateResult) -> str:
    """'share below cosine floor: its 95 % interval [0.051, 0.11] lies above the limit 0.01'."""
    lo, hi = result.interval or (math.nan, math.nan)
    side = "below" if result.gate.op == ">=" else "above"
    where = f"[{lo:.4g}, {hi:.4g}]" if result.interval else "interval"
    return f"{result.gate.name}: its 95 % interval {where} lies {side} the limit {result.gate.limit:g}"


def _fp32_reference(
    task: TaskType,
    fp32: Path,
    assets: Path,
    evaluation: pd.DataFrame,
    budget: SearchBudget,
    deadline: float,
    steps: SearchSteps,
    cores: int,
) -> Reference:
    """The FP32 model scored on the evaluation rows; one that spends the whole time budget ends the search,
    with the way out."""
    ref = steps.reference(task, Servable(fp32), assets, evaluation, cores)
    if time.monotonic() > deadline:
        raise SearchError(
            f"the FP32 reference on {len(evaluation)} evaluation rows took {ref.seconds:.0f} s, the "
            f"whole search budget (max_seconds {budget.max_seconds:g}): lower max_eval_rows or raise "
            "max_seconds"
        )
    return ref


def _with_champion(
    task: TaskType, ref: Reference, champion: Any, evaluation: pd.DataFrame, cores: int, steps: SearchSteps
) -> tuple[Reference, Any, list[str]]:
    """The reference with the serving version (when there is one) judged on the same rows, to be timed in
    the same benchmark; a champion that cannot be scored is dropped with a warning."""
    if champion is None:
        return ref, None, []
    try:
        return steps.score_champion(task, ref, champion, evaluation, cores), champion, []
    except Exception as exc:  # noqa: BLE001 - a serving artifact that cannot run must not block its fix
        return (
            ref,
            None,
            [
                f"champion {champion.version} could not be scored ({type(exc).__name__}: {str(exc)[:200]}): "
                "this version is judged without it"
            ],
        )


def _score_all(
    recipes: list[Recipe], job: ScoreJob, workers: int, cores: int, steps: SearchSteps
) -> list[CandidateResult]:
    """Every recipe built and scored, `workers` at a time, the cores shared between them."""
    if not recipes:
        return []
    # The slowest builds first (calibrated ones collect statistics), so that no core idles at the end
    # while one long build finishes: results come back in the recipes' order.
    order = sorted(recipes, key=lambda r: not r.calibrated)
    by_name = {c.name: c for c in steps.score(order, job, max(1, cores // workers), workers)}
    return [by_name[r.name] for r in recipes]


def _fixed_shape_round(
    results: list[CandidateResult],
    chosen: str,
    job_out: Path,
    benchmark_fixed: Callable[[dict[str, Servable]], BenchReport],
) -> tuple[BenchReport, ShapeComparison]:
    """Every passing candidate timed at the fixed shape, and what that shape would have promoted."""
    passing = [c for c in results if c.passed]
    fixed = benchmark_fixed({c.name: servable_of(c, job_out) for c in passing})
    shape = f"b{fixed.settings.batch}-s{fixed.settings.seq_len}"
    return fixed, compare_fixed_shape(passing, chosen, fixed, shape)


def _fallback(
    task: TaskType,
    base: CandidateResult,
    thresholds: GateThresholds,
    job: ScoreJob,
    budget: SearchBudget,
    steps: SearchSteps,
    cores: int,
    time_them: Callable[[list[CandidateResult]], BenchReport],
) -> tuple[Fallback, list[CandidateResult], BenchReport | None]:
    """Rank the base's nodes by SQNR, then keep the 1, 2, 3, 4, 6, ... worst in FP32 until a trial passes
    the accuracy gates (or the trial or time budget runs out), bisect back towards the fewest with the
    trials left, and time base and trials in one more round."""
    backend = get_quantizer(base.recipe.backend)
    source = backend.fallback_source(base.recipe, job.fp32, job.prepared.get(base.recipe.backend))
    ranking = steps.rank(base.recipe, source, job.calibration)
    reason = base.gates.failure_summary() if base.gates else ""
    fallback = Fallback(base=base.name, reason=reason, ranking=ranking)
    trials: list[CandidateResult] = []
    tried: list[tuple[int, bool]] = []
    while (k := next_exclusion(len(ranking), budget.max_trials, tried)) is not None:
        if time.monotonic() > job.deadline:
            fallback.stopped = "search time budget spent"
            break
        recipe = base.recipe.keeping_fp32([s.node for s in ranking[:k]], f"{base.name}+fp32x{k}")
        result = steps.score([recipe], job, cores, 1)[0]
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
        return fallback, trials, None
    # Base and trials in one more interleaved benchmark (with the baselines again), so each node's latency
    # cost is a difference measured in the same round.
    bench = time_them([base, *timed])
    trials = [t.judged(task, thresholds, bench, "fallback") for t in trials]
    winner = choose(trials)  # the trial that competes for promotion (fastest passing)
    if winner is not None:
        fallback.kept_fp32 = node_costs(base.judged(task, thresholds, bench, "fallback"), winner, ranking)
    return fallback, trials, bench


def candidate_path(result: SearchResult, name: str, work: Path) -> Path:
    """Where the search left a candidate's artifact."""
    c = result.get(name)
    if c is None:
        raise KeyError(name)
    return servable_of(c, work / "candidates").path
