"""Recipe search, the pure part: the budget, one candidate's record, and the rules that pick the winner.

Rules (measure first, decide on the evidence):
- every candidate is scored on the same evaluation split and timed in the same interleaved benchmark as
  the FP32 baselines, and judged by the same declarative gates;
- the promoted candidate is the fastest (p50 latency) that passes every gate; candidates within 2% of
  the fastest count as tied, and the tie goes to the smallest task-metric drop;
- the sensitive-node fallback starts only when nothing passed and some candidate failed on accuracy
  alone (its speed gates passed): of those as fast as the fastest, the one that failed the fewest
  gates is the base that nodes are kept in FP32 for;
- with nothing passing the run is rejected, and the candidate that came closest is the one the report
  leads with (fewest failed gates, then fastest).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from quantgate.backends import AnyRecipe
from quantgate.bench import BenchReport, EngineResult
from quantgate.gates import Gate, GateReport, evaluate_gates
from quantgate.sensitivity import NodeSensitivity
from quantgate.tasktypes import Evaluation, TaskType, speed_metrics
from quantgate.thresholds import GateThresholds, gates_for


class SearchBudget(BaseModel):
    """How much searching a run may do. The default fits the pipeline's 2-minute budget for MiniLM on a
    2-core machine, both engines (benchmarks/peers.py measures it)."""

    model_config = {"extra": "forbid", "frozen": True}

    max_candidates: int = Field(11, ge=1, le=32, description="recipes tried (the first N of the list)")
    max_trials: int = Field(8, ge=0, le=32, description="sensitive-node fallback trials; 0 = no fallback")
    max_seconds: float = Field(
        300, gt=0, description="wall time for building and scoring candidates; later ones are skipped"
    )
    calibration_rows: int = Field(
        64, ge=0, le=100_000, description="held-out rows set apart for calibration (never evaluated on)"
    )
    workers: int = Field(0, ge=0, le=64, description="candidates scored at once; 0 = one per CPU core")
    max_eval_rows: int = Field(
        2000,
        ge=10,
        le=1_000_000,
        description="held-out rows every metric is computed on (a fixed sample when the set is larger): "
        "bounds the FP32 reference and each candidate's scoring",
    )
    race: bool = Field(
        True,
        description="score every candidate on a stratified probe of the evaluation rows first, drop the "
        "ones a gate already fails with certainty, time the rest, and score in full only those that can "
        "still win (quantgate/racing.py); off: every candidate on every row",
    )
    race_share: float = Field(
        0.125,
        gt=0,
        lt=1,
        description="the probe's share of the evaluation rows (at least 100 rows, else no race)",
    )


Status = Literal["evaluated", "failed", "skipped"]
# The interleaved benchmark rounds of a search: every candidate once, then the fallback's base and trials.
# A third round times the passing candidates at the fixed shape b1/s128, only to say in the report whether
# that shape would have picked another winner (it never decides).
Round = Literal["candidates", "fallback", "fixed-shape"]
ROUNDS: tuple[Round, ...] = ("candidates", "fallback")
FIXED_ROUND: Round = "fixed-shape"


def _round_name(value: Any) -> Any:
    """Reports written before the rounds had names numbered them 1 and 2 (0: not timed)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ROUNDS[value - 1] if 1 <= value <= len(ROUNDS) else None
    return value


class Dispatch(BaseModel):
    """Where a candidate was built and scored when the search sent it to another process (the Dask
    runner), and how large the task it was sent as was, pickled."""

    worker: str | None = Field(None, description="host:pid of the process that built and scored it")
    task_bytes: int = Field(description="its submitted arguments, cloudpickled")


RaceOutcome = Literal["full", "raced-out", "speed-failed", "cannot-win"]


class Race(BaseModel):
    """What racing did with a candidate: scored on the full split (`full`, the only way to pass), dropped
    after the probe because a gate already failed with its whole interval outside the limit (`raced-out`),
    not scored further because the candidates round failed it on speed (`speed-failed`), or not scored
    further because a candidate faster beyond the tie band passed every gate (`cannot-win`)."""

    outcome: RaceOutcome
    rows: int = Field(description="evaluation rows its reported metrics are computed on")
    of: int = Field(description="rows of the evaluation split")
    reason: str = ""

    def summary(self) -> str:
        where = "full split" if self.outcome == "full" else f"{self.rows} of {self.of} rows"
        return f"{self.outcome} ({where})" + (f": {self.reason}" if self.reason else "")


class CandidateResult(BaseModel):
    recipe: AnyRecipe
    status: Status
    note: str | None = None
    size_bytes: int | None = None
    op_counts: dict[str, int] = Field(default_factory=dict)
    fused_ops: dict[str, int] | None = None
    quantize_s: float | None = None
    build_cached: bool = Field(False, description="its build was taken from the build cache")
    files: dict[str, str] = Field(
        default_factory=dict, description="the judged artifact's files (relative to its folder) -> sha256"
    )
    evaluation: Evaluation | None = None
    bench_round: Round | None = Field(None, description="which interleaved benchmark round timed it")
    latency: EngineResult | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: GateReport | None = None
    dispatch: Dispatch | None = Field(None, description="set when it ran on a Dask worker; None: a thread")
    race: Race | None = Field(None, description="how much of the evaluation it was scored on, and why")

    @model_validator(mode="before")
    @classmethod
    def _named_round(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bench_round" in data:
            data = {**data, "bench_round": _round_name(data["bench_round"])}
        return data

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def passed(self) -> bool:
        return self.gates is not None and self.gates.passed

    @property
    def accuracy_passed(self) -> bool:
        return self.gates is not None and self.gates.passed_kind("accuracy")

    def judged(
        self,
        task: TaskType,
        thresholds: GateThresholds,
        bench: BenchReport | None = None,
        bench_round: Round | None = None,
    ) -> CandidateResult:
        """Gate it by its task type's gates on its accuracy metrics plus, once benchmarked, its speed
        against the baselines of the same benchmark round."""
        if self.evaluation is None:
            return self
        metrics = dict(self.evaluation.metrics())
        update: dict[str, Any] = {}
        if bench is not None:
            metrics |= speed_metrics(bench, self.name)
            update |= {"latency": bench.by_engine(self.name), "bench_round": bench_round}
        gates = evaluate_gates(metrics, gates_for(task, thresholds, champion="champion_drop" in metrics))
        return self.model_copy(update=update | {"metrics": metrics, "gates": gates})


def speed_of(c: CandidateResult) -> float:
    """What "fastest" compares: the serving profile's objective in the candidate's round (inf: untimed)."""
    return c.latency.speed if c.latency else float("inf")


def _speed_key(c: CandidateResult) -> tuple[float, int]:
    return (speed_of(c), c.size_bytes or 0)


# Latencies closer than this are a tie on a shared machine (interleaved p50s of identical kernels differ
# by ~1%); a tie goes to the candidate that moved the task metric least.
SPEED_TIE = 0.02


def choose(candidates: list[CandidateResult]) -> CandidateResult | None:
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None
    fastest = min(passing, key=_speed_key)
    limit = _speed_key(fastest)[0] * (1 + SPEED_TIE)
    tied = [c for c in passing if _speed_key(c)[0] <= limit]
    return min(tied, key=lambda c: (c.metrics.get("task_metric_drop", 0.0), *_speed_key(c)))


def fallback_base(candidates: list[CandidateResult]) -> CandidateResult | None:
    """When nothing passed: among the candidates that failed on accuracy only, those as fast as the
    fastest (within the tie band); of these the one that failed the fewest gates, i.e. the one that
    should need the fewest nodes kept in FP32. None when something passed or nothing qualifies."""
    if choose(candidates) is not None:
        return None
    near = [
        c
        for c in candidates
        if c.gates is not None
        and c.gates.passed_kind("speed")
        and c.gates.passed_kind("evidence")  # no FP32 node can fix a held-out set that proves nothing
        and not c.accuracy_passed
        and c.recipe.can_fall_back
    ]
    if not near:
        return None
    limit = min(_speed_key(c)[0] for c in near) * (1 + SPEED_TIE)
    tied = [c for c in near if _speed_key(c)[0] <= limit]
    return min(tied, key=lambda c: (len(c.gates.failed) if c.gates else 99, *_speed_key(c)))


def closest(candidates: list[CandidateResult]) -> CandidateResult | None:
    judged = [c for c in candidates if c.gates is not None]
    if not judged:
        return None
    return min(judged, key=lambda c: (len(c.gates.failed) if c.gates else 99, *_speed_key(c)))


class FallbackTrial(BaseModel):
    recipe: str
    kept_fp32: list[str]
    accuracy_passed: bool | None = None


class Fallback(BaseModel):
    base: str
    reason: str
    ranking: list[NodeSensitivity]
    trials: list[FallbackTrial] = Field(default_factory=list)
    kept_fp32: list[dict[str, Any]] = Field(
        default_factory=list, description="nodes of the passing trial: SQNR, MACs and latency cost"
    )
    stopped: str = ""


def node_costs(
    base: CandidateResult, trial: CandidateResult, ranking: list[NodeSensitivity]
) -> list[dict[str, Any]]:
    """What each node kept in FP32 cost: the trial's measured p50 increase over its base (same benchmark
    round) shared out by the nodes' MACs (a MatMul's run time is proportional to its MACs)."""
    by_name = {s.node: s for s in ranking}
    kept = [by_name[n] for n in trial.recipe.nodes_to_exclude if n in by_name]
    total_macs = sum(s.macs_per_token for s in kept) or 1
    delta = (
        trial.latency.p50_ms - base.latency.p50_ms
        if trial.latency and base.latency and trial.bench_round == base.bench_round
        else None
    )
    return [
        {
            "node": s.node,
            "sqnr_db": round(s.sqnr_db, 2),
            "macs_per_token": s.macs_per_token,
            "latency_cost_ms": None if delta is None else round(delta * s.macs_per_token / total_macs, 3),
        }
        for s in kept
    ]


NOTHING_TO_QUANTIZE = "nothing-to-quantize"
QUANTIZABLE_GATE = Gate(
    name="something to quantize",
    metric="quantizable_ops",
    op=">=",
    limit=1,
    description="ops of the FP32 graph any backend can quantize (a tree ensemble has none)",
    rejects_as=NOTHING_TO_QUANTIZE,
)


def nothing_to_quantize(
    results: list[CandidateResult],
    fp32_metric: float,
    bench: BenchReport,
    budget: SearchBudget,
    warnings: list[str],
    seconds: float,
) -> SearchResult:
    """The search of a model no recipe could quantize: every candidate fails the one gate that says so,
    beside the FP32 model's own metric and latency (timed in `bench`)."""
    metrics = {
        "task_metric_fp32": fp32_metric,
        "task_metric_candidate": fp32_metric,  # nothing was changed
        "task_metric_drop": 0.0,
        "quantizable_ops": 0.0,
    }
    judged = [
        c.model_copy(
            update={
                "metrics": metrics,
                "gates": evaluate_gates(metrics, [QUANTIZABLE_GATE]),
                "bench_round": "candidates",
            }
        )
        for c in results
    ]
    return SearchResult(
        candidates=judged,
        benchmarks={"candidates": bench},
        chosen=None,
        lead=judged[0].name,
        warnings=warnings,
        budget=budget,
        seconds=round(seconds, 1),
    )


class ShapeComparison(BaseModel):
    """The decision taken on the serving profile against the one the fixed shape would have taken."""

    shape: str
    winner: str | None = Field(description="who the fixed shape would promote among the passing candidates")
    chosen_ms: float | None = Field(description="the promoted candidate's p50 at the fixed shape")
    winner_ms: float | None

    @property
    def differs(self) -> bool:
        return self.winner is not None and self.chosen_ms is not None and self.winner_ms != self.chosen_ms


def compare_fixed_shape(
    passing: list[CandidateResult], chosen: str, fixed: BenchReport, shape: str
) -> ShapeComparison:
    """Rank the passing candidates by their p50 at the fixed shape with the same tie rule as `choose`."""
    timed = [
        c.model_copy(update={"latency": fixed.by_engine(c.name), "bench_round": FIXED_ROUND})
        for c in passing
        if any(r.engine == c.name for r in fixed.results)
    ]
    winner = choose(timed)
    by_name = {c.name: c for c in timed}
    return ShapeComparison(
        shape=shape,
        winner=winner.name if winner else None,
        chosen_ms=by_name[chosen].latency.p50_ms if chosen in by_name and by_name[chosen].latency else None,
        winner_ms=winner.latency.p50_ms if winner and winner.latency else None,
    )


class Evidence(BaseModel):
    """The evidence gates the FP32 reference alone decides (quantgate/gates.py: held-out size, the FP32
    baseline, the registered expectation), judged right after the reference, before any candidate."""

    rows: int = Field(description="evaluation rows the FP32 reference was scored on")
    metrics: dict[str, float] = Field(description="the FP32 metrics these gates read")
    gates: GateReport

    @property
    def failed(self) -> bool:
        return bool(self.gates.failed)


def judge_evidence(
    task: TaskType, thresholds: GateThresholds, metrics: dict[str, float], rows: int
) -> Evidence:
    """Judge, on the FP32 reference's metrics (`Reference.metrics()`), the evidence gates whose metric the
    reference measures. Every candidate is judged by these same gates on these same values (each
    `Evaluation.metrics()` carries the reference's), so a gate failed here is failed by every candidate:
    the run is rejected whatever is built, and nothing is. Evidence gates on a candidate's own metrics
    (the drop interval's width, a classifier's lift over the majority class) are judged with it, as before."""
    gates = [g for g in gates_for(task, thresholds) if g.kind == "evidence" and g.metric in metrics]
    return Evidence(rows=rows, metrics=metrics, gates=evaluate_gates(metrics, gates))


class Racing(BaseModel):
    """The probe of a raced search: which rows, how they were drawn, and whether racing had to give way
    (no candidate passed: every candidate is then scored in full, as the exhaustive search does)."""

    probe_rows: int
    of: int
    strata: list[str] = Field(description="the columns the probe is stratified by")
    gave_way: bool = False


class SearchResult(BaseModel):
    candidates: list[CandidateResult]
    benchmarks: dict[Round, BenchReport] = Field(description="each interleaved benchmark round, by name")
    chosen: str | None
    lead: str | None = Field(description="the chosen candidate, or the closest one when none passed")
    fixed_shape: ShapeComparison | None = Field(
        None, description="what the fixed shape (b1/s128) would have promoted: reported, never decisive"
    )
    fallback: Fallback | None = None
    evidence: Evidence | None = Field(
        None, description="the FP32 evidence gates, judged before any candidate: failed, none was built"
    )
    warnings: list[str] = Field(default_factory=list)
    budget: SearchBudget
    seconds: float
    limits: dict[str, float | None] = Field(
        default_factory=dict,
        description="every limit's effective value the search judged with: what the report records",
    )
    racing: Racing | None = Field(None, description="the probe racing scored every candidate on first")

    @model_validator(mode="before")
    @classmethod
    def _named_rounds(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
            data = {**data, "benchmarks": dict(zip(ROUNDS, data["benchmarks"], strict=False))}
        return data

    @property
    def stopped_early(self) -> bool:
        """The FP32 reference failed an evidence gate: the run was decided before any candidate was built."""
        return self.evidence is not None and self.evidence.failed

    def get(self, name: str | None) -> CandidateResult | None:
        return next((c for c in self.candidates if c.name == name), None)

    def timed(self, c: CandidateResult) -> BenchReport | None:
        """The benchmark round that timed a candidate."""
        return self.benchmarks.get(c.bench_round) if c.bench_round else None
