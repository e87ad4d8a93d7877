"""`reference`, `score_champion` and `evaluate`, written once for every task type whose metric is judged by
a paired bootstrap over its held-out rows (all of quantgate's).

A family gives three things: the model's per-row outputs (`predict`), the task metric on all rows and on
each bootstrap resample of them (`score`), and what it compares beside the metric (`compare`: parity, its
own metrics, slices, the examples that moved most). The base draws the resamples (the same seeded rows
for FP32, the champion and every candidate, so the drop's interval is paired) and builds the `Reference`
and the `Evaluation`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from quantgate.backends import Servable
from quantgate.evaluate import ParityReport
from quantgate.gates import Gate, GateSpec, Thresholds, build_gates
from quantgate.heldout import HeldoutSchema
from quantgate.prediction_cache import predictions
from quantgate.stats import bootstrap_indices, percentile_interval
from quantgate.tasktypes.base import TaskMetric
from quantgate.tasktypes.results import (
    Evaluation,
    Example,
    Interval,
    Reference,
    SliceResult,
    paired_intervals,
)


class Comparison(BaseModel):
    """What a family measures of a candidate against the FP32 reference, beside its task metric."""

    parity: ParityReport
    extra: dict[str, float] = Field(default_factory=dict)
    extra_intervals: dict[str, Interval] = Field(default_factory=dict)
    slices: list[SliceResult] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)

    model_config = ConfigDict(arbitrary_types_allowed=True)


class ResampledTaskType:
    """The shared half of a task type. Held-out defaults: the schema is `schema`, any file is read
    (`reads`: override it when another task type recognises the same models), and registration checks
    nothing beyond the schema (`check_heldout`)."""

    name: str
    schema: HeldoutSchema
    metric: TaskMetric
    reads_text: ClassVar[bool] = False
    gate_specs: ClassVar[tuple[GateSpec, ...]]

    def gates(self, thresholds: Thresholds) -> list[Gate]:
        """This task type's own gates with the limits' values (quantgate/thresholds.py's `gates_for` adds
        the registration's and the champion's)."""
        return build_gates(self.gate_specs, thresholds)

    # --- what a family gives ---------------------------------------------------------------------------

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Any:
        """The model's per-row outputs on the evaluation rows."""
        raise NotImplementedError

    def score(
        self, predicted: Any, assets: Path, heldout: pd.DataFrame, idx: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The task metric on all rows, and on each resample (the rows of `idx`, indices into `heldout`)."""
        raise NotImplementedError

    def compare(
        self,
        reference: Reference,
        predicted: Any,
        assets: Path,
        heldout: pd.DataFrame,
        thresholds: Thresholds,
    ) -> Comparison:
        raise NotImplementedError

    def stored(self, predicted: Any) -> np.ndarray:
        """What the reference keeps of FP32's outputs (`Reference.outputs`), for `compare`."""
        return predicted

    def check_reference(self, predicted: Any, assets: Path, heldout: pd.DataFrame) -> None:
        """Refuse a held-out set FP32's outputs show cannot judge anything (before it is scored)."""

    # --- written once ----------------------------------------------------------------------------------

    def _predicted(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Any:
        """`predict`, through the prediction cache when the search uses one."""
        return predictions(
            self, model, assets, heldout, threads, lambda: self.predict(model, assets, heldout, threads)
        )

    def _scored(
        self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int
    ) -> tuple[Any, float, np.ndarray]:
        predicted = self._predicted(model, assets, heldout, threads)
        value, resampled = self.score(predicted, assets, heldout, bootstrap_indices(len(heldout)))
        return predicted, value, resampled

    def reference(self, fp32: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Reference:
        start = time.perf_counter()
        predicted = self._predicted(fp32, assets, heldout, threads)
        self.check_reference(predicted, assets, heldout)
        value, resampled = self.score(predicted, assets, heldout, bootstrap_indices(len(heldout)))
        return Reference(
            outputs=self.stored(predicted),
            task_metric=value,
            seconds=time.perf_counter() - start,
            interval=percentile_interval(resampled),
            resampled=resampled,
        )

    def score_champion(
        self, reference: Reference, version: str, model: Servable, assets: Path, heldout: pd.DataFrame,
        threads: int,
    ) -> Reference:  # fmt: skip
        """The serving version's task metric on this version's evaluation rows and resamples."""
        _, value, resampled = self._scored(model, assets, heldout, threads)
        return reference.model_copy(
            update={"champion_version": version, "champion_metric": value, "champion_resampled": resampled}
        )

    def evaluate(
        self, reference: Reference, candidate: Servable, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds, threads: int,
    ) -> Evaluation:  # fmt: skip
        start = time.perf_counter()
        predicted, value, resampled = self._scored(candidate, assets, heldout, threads)
        drop, champion = paired_intervals(reference, resampled, self.metric.higher_is_better)
        compared = self.compare(reference, predicted, assets, heldout, thresholds)
        return Evaluation(
            task_metric=self.metric.name,
            higher_is_better=self.metric.higher_is_better,
            task_metric_fp32=reference.task_metric,
            task_metric_candidate=value,
            parity=compared.parity,
            seconds=time.perf_counter() - start,
            rows=len(heldout),
            task_metric_fp32_interval=reference.interval,
            task_metric_drop_interval=drop,
            extra=compared.extra,
            extra_intervals=compared.extra_intervals,
            slices=compared.slices,
            examples=compared.examples,
            champion_version=reference.champion_version,
            task_metric_champion=reference.champion_metric,
            champion_drop_interval=champion,
        )

    # --- held-out defaults -----------------------------------------------------------------------------

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        return self.schema

    def reads(self, heldout: Path) -> bool:
        return True  # no other task type recognises the same models

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        return None
