"""Gates are declarative data decided by one pure function (after Olive's MetricGoal).

A `Limit` is a knob a person sets (a flow parameter, a CLI flag generated from it); a `GateSpec` declares
a gate beside its metric (name, metric, direction, the limit's name, the bound judged, kind), and
`build_gates(specs, thresholds)` turns declarations into `Gate`s with the limits' values;
`evaluate_gates(metrics, gates)` returns a `GateReport`. Promotion happens only on `report.passed`, and a
metric a gate needs but the run did not measure fails that gate.

This module names no task's metric. Every task type reports the same core metrics (`task_metric_fp32`,
`task_metric_candidate`, `task_metric_drop` as the degradation, parity over its outputs, speed against the
FP32 baselines), and the core declarations (`HELDOUT_SIZE`, `DROP_GATES`, `PARITY`, `SPEED`, `EXPECTATION`,
`CHAMPION`) are on those; a task type declares its own gates and limits in its module, in the reading order
`judged_by` gives, and quantgate/thresholds.py joins them with the values a person set
(`gates_for(task, thresholds)`).

A gate may judge a bound instead of the value (`judge="upper"` / `"lower"`): then `<metric>_lo` and
`<metric>_hi` hold the 95 % interval (quantgate/stats.py) and the unfavourable end must be inside the
limit. Evidence gates (`kind="evidence"`) say whether the held-out set can support a decision at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantgate.stats import rows_to_vouch

Op = Literal[">=", "<="]


class Gate(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    metric: str
    op: Op
    limit: float
    description: str = ""
    kind: Literal["accuracy", "speed", "evidence"] = "accuracy"
    judge: Literal["value", "upper", "lower"] = "value"
    per_row: float | None = Field(
        None,
        description="a tail gate's per-row floor or ceiling: the metric is the share of rows beyond it",
    )
    rejects_as: str | None = Field(
        None, description="the rejection a failure of this gate means ahead of the others (report.py)"
    )

    @field_validator("limit")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"gate limit must be a finite number, got {v}")
        return v


class GateResult(BaseModel):
    gate: Gate
    value: float | None
    passed: bool
    margin: float | None = Field(
        description="how far inside (+) or outside (-) the limit the judged value is"
    )
    interval: tuple[float, float] | None = Field(
        None, description="the value's 95 % interval, when judged by it"
    )


class GateReport(BaseModel):
    results: list[GateResult]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def passed_kind(self, kind: str) -> bool:
        return all(r.passed for r in self.results if r.gate.kind == kind)

    def failure_brief(self) -> str:
        """'mean cosine -0.0167, min cosine -0.0282': each failed gate and how far outside its limit."""
        return ", ".join(
            r.gate.name if r.margin is None else f"{r.gate.name} {r.margin:+.3g}" for r in self.failed
        )

    def failure_summary(self) -> str:
        """'mean cosine 0.9633 (< 0.98 by 0.0167)'; '' when every gate passed."""
        parts = []
        for r in self.failed:
            if r.value is None or r.margin is None:
                parts.append(f"{r.gate.name}: not measured")
            else:
                limit = f"{r.gate.op} {r.gate.limit:g}"
                if r.gate.per_row is not None:
                    limit += f" of rows beyond {r.gate.per_row:g}"
                if r.gate.judge != "value" and r.interval is not None:
                    limit += f", judged by the {r.gate.judge} bound {r.interval[r.gate.judge == 'upper']:.4g}"
                parts.append(f"{r.gate.name} {r.value:.4g} (limit {limit}, off by {-r.margin:.4g})")
        return "; ".join(parts)


# --- limits: the knobs, declared with their bounds beside the gates that read them -----------------------


class Limit(BaseModel):
    """One settable threshold: its name is a key of `GateThresholds` and a CLI flag (`--max-slice-drop`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    default: float | None
    help: str
    ge: float | None = None
    le: float | None = None
    gt: float | None = None

    def check(self, value: Any) -> float | None:
        if value is None and self.default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{self.name}: thresholds must be finite numbers, got {value}")
        for bound, ok, word in (
            (self.ge, lambda b: v >= b, ">="),
            (self.le, lambda b: v <= b, "<="),
            (self.gt, lambda b: v > b, ">"),
        ):
            if bound is not None and not ok(bound):
                raise ValueError(f"{self.name} must be {word} {bound:g}, got {v:g}")
        return v


# Limits every task type is judged by: they read the core metrics only. Defaults come from measurements on
# all-MiniLM-L6-v2 / STS-B dev (the README's gates table).
CORE_LIMITS: tuple[Limit, ...] = (
    Limit(
        name="max_task_metric_drop", default=0.01, ge=0, help="max FP32-INT8 task metric drop (0.01 = 1 pt)"
    ),
    Limit(name="abs_tol", default=0.1, gt=0, help="max |INT8-FP32| over every output element"),
    Limit(name="mean_tol", default=0.01, gt=0, help="max mean |INT8-FP32|"),
    Limit(
        name="min_p95_speedup", default=1.0, ge=0, help="min ORT FP32 p95 / INT8 p95; 1.0 = must be faster"
    ),
    Limit(
        name="min_objective_speedup",
        default=1.0,
        ge=0,
        help="min ORT FP32 / INT8 at the serving profile's objective (p50 per request, or time per item)",
    ),
    Limit(name="export_atol", default=1e-4, gt=0, help="max |ONNX FP32 - PyTorch| at export"),
    Limit(
        name="max_slice_drop",
        default=0.02,
        ge=0,
        help="max task-metric drop on any slice of >= 50 rows (0.02 = 2 pt)",
    ),
    Limit(
        name="max_champion_drop",
        default=0.01,
        ge=0,
        help="max task-metric drop vs the serving version, upper 95% bound (0.01 = 1 pt)",
    ),
    Limit(
        name="max_champion_slowdown",
        default=0.10,
        ge=0,
        help="max p50 slowdown vs the serving version (0.1 = 10%)",
    ),
    Limit(
        name="max_baseline_half_width",
        default=0.1,
        gt=0,
        help="widest FP32 task-metric interval (half-width) a decision rests on; wider: heldout-too-small",
    ),
    Limit(
        name="expect_metric", default=None, help="the FP32 task metric expected (set from the registration)"
    ),
    Limit(name="expect_tolerance", default=None, gt=0, help="how far FP32 may be from the expected metric"),
)


# Not a core limit: only task types whose metric has a trivial baseline near 0 read it (STS Spearman, entity
# F1); declared once here so that each of them shares the same limit.
BASELINE_LIMIT = Limit(
    name="min_baseline_metric",
    default=0.1,
    ge=-1,
    le=1,
    help="the FP32 task metric's lower 95% bound must exceed this (STS Spearman, entity F1: 0.1)",
)


class Thresholds(Protocol):
    """The limit values gates are built from (quantgate/thresholds.py's GateThresholds)."""

    def value(self, name: str) -> float | None: ...


def limit_value(t: Thresholds, name: str) -> float:
    value = t.value(name)
    if value is None:
        raise ValueError(f"limit {name} has no value")
    return value


# --- gates declared as data: a metric, its direction, the limit it is held to -----------------------------


class GateSpec(BaseModel):
    """A gate as a task type declares it, beside its metric: `build` reads the named limit's value.

    `judge` is the end of the metric's 95 % interval that must be inside the limit (`value`: the point
    value). A tail gate (`tail`) judges the share of rows below or above a per-row limit (`per_row`); a
    gate with `tolerance` is held to the named value widened by that limit (a registered expectation ±
    its tolerance), and is left out when either has no value; `offset` is added to the limit's value (a
    slowdown of 10 % is a ratio of at most 1.1). `rejects_as` names the rejection a failure means ahead of
    every other (quantgate/report.py's `rejection_reason`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    metric: str
    op: Op
    limit: str
    judge: Literal["value", "upper", "lower"] = "value"
    kind: Literal["accuracy", "speed", "evidence"] = "accuracy"
    description: str = ""
    per_row: str | None = None
    tail: Literal["below", "above"] | None = None
    rows: str = "rows"
    tolerance: str | None = None
    offset: float = 0.0
    rejects_as: str | None = None

    def build(self, t: Thresholds) -> Gate | None:
        if self.tolerance is not None:
            value, tolerance = t.value(self.limit), t.value(self.tolerance)
            if value is None or tolerance is None:
                return None
            limit = value - tolerance if self.op == ">=" else value + tolerance
            description = self.description or f"registered expectation {value:g}±{tolerance:g}"
            return self._gate(limit, description)
        limit = limit_value(t, self.limit) + self.offset
        if self.per_row is None:
            return self._gate(limit, self.description)
        bound = limit_value(t, self.per_row)
        side = self.tail or "above"
        return self._gate(
            limit,
            f"share of {self.rows} {side} {bound:g} (upper 95 % Wilson bound): passing, with 95 % confidence "
            f"at most {limit:.3g} of new {self.rows} from the same distribution are {side} it; needs at "
            f"least {rows_to_vouch(limit)} {self.rows} to pass even with none {side}",
            per_row=bound,
        )

    def _gate(self, limit: float, description: str, per_row: float | None = None) -> Gate:
        return Gate(
            name=self.name,
            metric=self.metric,
            op=self.op,
            limit=limit,
            description=description,
            kind=self.kind,
            judge=self.judge,
            per_row=per_row,
            rejects_as=self.rejects_as,
        )


def build_gates(specs: Iterable[GateSpec], t: Thresholds) -> list[Gate]:
    """The gates of these declarations with the limit values of `t`, in declaration order."""
    return [gate for spec in specs if (gate := spec.build(t)) is not None]


def tail_spec(
    *, name: str, metric: str, per_row: str, share: str, tail: Literal["below", "above"], rows: str = "rows"
) -> GateSpec:
    """A gate on the share of rows beyond a per-row floor (`tail="below"`) or ceiling (`"above"`), judged
    by its upper 95 % bound; `per_row` and `share` name the two limits, `metric` the share the task type
    measured against the `per_row` limit's value."""
    return GateSpec(
        name=name, metric=metric, op="<=", limit=share, judge="upper", per_row=per_row, tail=tail, rows=rows
    )


HELDOUT_TOO_SMALL = "heldout-too-small"

# The gates on the core metrics, what every candidate of every task type passes: the held-out set can
# judge the drop, the drop is within its limit (upper 95 % bound), no large slice is worse, outputs agree,
# and it is faster.
HELDOUT_SIZE = GateSpec(
    name="held-out size",
    metric="task_metric_fp32_half_width",
    op="<=",
    limit="max_baseline_half_width",
    kind="evidence",
    description="half-width of the FP32 task metric's 95 % interval",
    rejects_as=HELDOUT_TOO_SMALL,
)
DROP_GATES: tuple[GateSpec, ...] = (
    GateSpec(
        name="drop interval width",
        metric="task_metric_drop_half_width",
        op="<=",
        limit="max_task_metric_drop",
        kind="evidence",
        description="half-width of the paired bootstrap interval of the drop: wider than the limit, "
        "the held-out set cannot show the drop is within it",
        rejects_as=HELDOUT_TOO_SMALL,
    ),
    GateSpec(
        name="task metric drop",
        metric="task_metric_drop",
        op="<=",
        limit="max_task_metric_drop",
        judge="upper",
        description="FP32 ONNX minus INT8 on the held-out task metric (upper 95 % bound)",
    ),
    GateSpec(
        name="max slice drop",
        metric="max_slice_drop",
        op="<=",
        limit="max_slice_drop",
        description="worst task-metric drop on one slice (a slice column's value, a length bucket) "
        "of >= 50 rows",
    ),
)
# Element-wise parity over every output (embeddings, a regression's predictions): classifiers judge their
# probabilities with limits of their own instead (quantgate/families/classification.py).
PARITY: tuple[GateSpec, ...] = (
    GateSpec(name="parity max abs diff", metric="max_abs_diff", op="<=", limit="abs_tol"),
    GateSpec(name="parity mean abs diff", metric="mean_abs_diff", op="<=", limit="mean_tol"),
)
SPEED = GateSpec(
    name="p95 speed-up vs ORT FP32",
    metric="p95_speedup_vs_onnx_fp32",
    op=">=",
    limit="min_p95_speedup",
    kind="speed",
)
# "Fastest" is judged on the serving profile's objective, so what is promoted must beat ORT FP32 there too:
# the p95 gate alone let a throughput profile promote an INT8 slower per item than FP32.
OBJECTIVE_SPEED = GateSpec(
    name="speed-up at the serving profile vs ORT FP32",
    metric="objective_speedup_vs_onnx_fp32",
    op=">=",
    limit="min_objective_speedup",
    kind="speed",
)
BASELINE = GateSpec(
    name="FP32 baseline",
    metric="task_metric_fp32",
    op=">=",
    limit="min_baseline_metric",
    kind="evidence",
    judge="lower",
    description="the FP32 task metric beats a trivial baseline (lower 95 % bound)",
)
# The registering team's own measurement: an FP32 model far from it is not the model they trained, or not
# on this data (a wrong file, shuffled labels). Built only when the registration set both.
EXPECTATION: tuple[GateSpec, ...] = (
    GateSpec(
        name="FP32 as registered (low)",
        metric="task_metric_fp32",
        op=">=",
        limit="expect_metric",
        tolerance="expect_tolerance",
        kind="evidence",
    ),
    GateSpec(
        name="FP32 as registered (high)",
        metric="task_metric_fp32",
        op="<=",
        limit="expect_metric",
        tolerance="expect_tolerance",
        kind="evidence",
    ),
)
CHAMPION: tuple[GateSpec, ...] = (
    GateSpec(
        name="vs champion",
        metric="champion_drop",
        op="<=",
        limit="max_champion_drop",
        judge="upper",
        description="champion minus candidate task metric on the same rows (upper 95 % bound)",
    ),
    GateSpec(
        name="p50 vs champion",
        metric="p50_ratio_vs_champion",
        op="<=",
        limit="max_champion_slowdown",
        offset=1.0,
        kind="speed",
        description="candidate p50 / champion p50 in the same interleaved benchmark",
    ),
)


def judged_by(
    *, evidence: Sequence[GateSpec], quality: Sequence[GateSpec], parity: Sequence[GateSpec] = PARITY
) -> tuple[GateSpec, ...]:
    """A task type's gates in reading order: can the held-out set judge (its size, the task type's own
    evidence that FP32 measures something, the drop's width), the task metric's drop and slices, the task
    type's own quality gates, parity of its outputs, speed."""
    return (HELDOUT_SIZE, *evidence, *DROP_GATES, *quality, *parity, SPEED, OBJECTIVE_SPEED)


def evaluate_gates(metrics: dict[str, float], gates: list[Gate]) -> GateReport:
    results = []
    for gate in gates:
        value = metrics.get(gate.metric)
        interval = None
        judged = value
        if gate.judge != "value":
            lo, hi = metrics.get(f"{gate.metric}_lo"), metrics.get(f"{gate.metric}_hi")
            interval = (lo, hi) if lo is not None and hi is not None else None
            judged = hi if gate.judge == "upper" else lo
        if value is None or judged is None or not math.isfinite(value) or not math.isfinite(judged):
            # A metric (or its interval) that was not measured, or is NaN, can never pass: no evidence,
            # no promotion.
            results.append(GateResult(gate=gate, value=value, passed=False, margin=None, interval=interval))
            continue
        margin = judged - gate.limit if gate.op == ">=" else gate.limit - judged
        results.append(
            GateResult(gate=gate, value=value, passed=margin >= 0, margin=margin, interval=interval)
        )
    return GateReport(results=results)
