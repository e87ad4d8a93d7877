"""Gates are declarative data decided by one pure function (after Olive's MetricGoal).

`GateThresholds` is what a person sets (flow parameters, CLI flags); `to_gates()` turns it into a list of
`Gate(metric, op, limit)`; `evaluate_gates(metrics, gates)` returns a `GateReport`. Promotion happens only
on `report.passed`, and a metric a gate needs but the run did not measure fails that gate.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Op = Literal[">=", "<="]


class Gate(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    metric: str
    op: Op
    limit: float
    description: str = ""
    kind: Literal["accuracy", "speed"] = "accuracy"

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
    margin: float | None = Field(description="how far inside (+) or outside (-) the limit the value is")


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
                parts.append(f"{r.gate.name} {r.value:.4g} (limit {limit}, off by {-r.margin:.4g})")
        return "; ".join(parts)


class GateThresholds(BaseModel):
    """Every limit a run is judged by. Defaults come from measurements on all-MiniLM-L6-v2 / STS-B dev:
    plain per-tensor dynamic INT8 keeps Spearman within 0.4 points but moves embeddings (mean cosine
    0.963, neighbour agreement 88%); per-channel reaches 0.993 / 94%. The cosine and neighbour gates are
    what catch the first kind of damage, the task-metric gate the second."""

    model_config = ConfigDict(extra="forbid")

    max_task_metric_drop: float = Field(
        0.01, ge=0, le=1, description="FP32 minus INT8 task metric (0.01 = 1 point)"
    )
    min_mean_cosine: float = Field(0.98, ge=-1, le=1, description="mean cosine of INT8 vs FP32 embeddings")
    min_min_cosine: float = Field(0.90, ge=-1, le=1, description="worst single-example cosine")
    min_neighbour_agreement: float = Field(
        0.90, ge=0, le=1, description="share of examples whose nearest neighbour is unchanged"
    )
    abs_tol: float = Field(0.1, gt=0, description="max |INT8 - FP32| over every output element")
    mean_tol: float = Field(0.01, gt=0, description="mean |INT8 - FP32|")
    min_p95_speedup: float = Field(
        1.0, ge=0, description="ORT FP32 p95 / INT8 p95; 1.0 = INT8 must be faster"
    )
    export_atol: float = Field(1e-4, gt=0, description="max |ONNX FP32 - PyTorch| at export")

    @field_validator("*")
    @classmethod
    def _finite(cls, v: float) -> float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("thresholds must be finite numbers")
        return v

    def to_gates(self) -> list[Gate]:
        return [
            Gate(
                name="task metric drop",
                metric="task_metric_drop",
                op="<=",
                limit=self.max_task_metric_drop,
                description="FP32 ONNX minus INT8 on the held-out task metric",
            ),
            Gate(name="mean cosine", metric="mean_cosine", op=">=", limit=self.min_mean_cosine),
            Gate(name="min cosine", metric="min_cosine", op=">=", limit=self.min_min_cosine),
            Gate(
                name="neighbour agreement",
                metric="neighbour_agreement",
                op=">=",
                limit=self.min_neighbour_agreement,
            ),
            Gate(name="parity max abs diff", metric="max_abs_diff", op="<=", limit=self.abs_tol),
            Gate(name="parity mean abs diff", metric="mean_abs_diff", op="<=", limit=self.mean_tol),
            Gate(
                name="p95 speed-up vs ORT FP32",
                metric="p95_speedup_vs_onnx_fp32",
                op=">=",
                limit=self.min_p95_speedup,
                kind="speed",
            ),
        ]


def evaluate_gates(metrics: dict[str, float], gates: list[Gate]) -> GateReport:
    results = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if value is None or not math.isfinite(value):
            # A metric that was not measured (or is NaN) can never pass: no evidence, no promotion.
            results.append(GateResult(gate=gate, value=value, passed=False, margin=None))
            continue
        margin = value - gate.limit if gate.op == ">=" else gate.limit - value
        results.append(GateResult(gate=gate, value=value, passed=margin >= 0, margin=margin))
    return GateReport(results=results)
