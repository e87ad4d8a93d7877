"""The run report's schema: one JSON document per run (what was measured, each gate, the decision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from quantgate.backends import AnyRecipe
from quantgate.bench import BenchReport
from quantgate.evaluate import ParityReport
from quantgate.export import ExportResult
from quantgate.gates import GateReport
from quantgate.registry import Approval, Outcome, utcnow
from quantgate.search import SearchResult


class ExportSummary(BaseModel):
    """The FP32 export as the report records it (the local side-file paths left out)."""

    onnx_path: Path
    input_names: list[str]
    output_names: list[str]
    opset: int
    pooling: str = ""
    normalize: bool = False
    max_abs_diff_vs_torch: dict[str, float]
    parity_samples: int
    size_bytes: int

    @classmethod
    def of(cls, result: ExportResult) -> ExportSummary:
        return cls.model_validate(result.model_dump(exclude={"tokenizer_files"}))


class HeldoutSummary(BaseModel):
    rows: int
    statistics: dict[str, Any] = Field(default_factory=dict, description="GX's validation statistics")
    calibration_rows: int = 0
    evaluation_rows: int | None = None
    evaluation_rows_available: int | None = None
    data_docs: str | None = None


class ChampionSummary(BaseModel):
    """'better / same / worse than vN' with the numbers behind it."""

    version: str
    verdict: str
    task_metric: float
    candidate_task_metric: float
    drop: float
    interval: tuple[float, float] | None = None
    p50_ms: float | None = None
    candidate_p50_ms: float | None = None


class RunReport(BaseModel):
    model: str
    version: str
    run_id: str
    task: str
    outcome: Outcome
    created_at: str = Field(default_factory=utcnow)
    recipe: AnyRecipe | None = Field(
        None, description="the promoted or closest candidate's; None when no candidate was built"
    )
    quantized_ops: dict[str, int] = Field(default_factory=dict)
    export: ExportSummary
    heldout: HeldoutSummary
    metrics: dict[str, float]
    thresholds: dict[str, float | None]
    gates: GateReport
    parity: ParityReport | None = None
    benchmark: BenchReport | None = None
    environment: dict[str, Any]
    search: SearchResult | None = Field(None, description="every candidate, fallback, budget")
    promoted_to: str | None = None
    reason: str | None = Field(
        None,
        description="why not promoted: heldout-too-small, baseline-not-meaningful, nothing-to-quantize, "
        "gates-failed (with rows_needed for the first) or by-reviewer (every gate passed; a reviewer "
        "rejected it)",
    )
    rows_needed: int | None = None
    champion: ChampionSummary | None = Field(
        None, description="the serving version judged beside this one; None for a first version"
    )
    approval: Approval | None = Field(
        None,
        description="the reviewer's answer when the run paused for approval after every gate passed "
        "(approve: promoted; reject: rejected with reason by-reviewer); None when it did not ask",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_reports(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("search") == {}:
            data = {**data, "search": None}  # written before the search was typed
        return data

    @model_validator(mode="after")
    def _promoted_has_its_candidate(self) -> RunReport:
        built = self.recipe is not None and self.parity is not None and self.benchmark is not None
        if self.outcome == "promoted" and not built:
            raise ValueError("a promoted report names its recipe, parity and benchmark")
        return self

    @property
    def candidates_built(self) -> bool:
        """False when the FP32 reference failed an evidence gate and the run stopped before any candidate."""
        return self.recipe is not None

    @property
    def passed(self) -> bool:
        return self.outcome == "promoted" and self.gates.passed

    @property
    def recipe_artifact(self) -> str:
        if self.recipe is None:
            raise ValueError(f"{self.model}@{self.version}: no candidate was built, so there is no artifact")
        return self.recipe.artifact_name
