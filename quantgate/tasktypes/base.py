"""What the pipeline asks of a kind of model (`TaskType`), and the registry that finds one.

A task type is a row, not a branch (after Optimum's per-task tables): it owns its held-out schema and
reader, the check of a registered model folder, the export, its task metric and the direction it
improves in, its own limits and gates (declared beside its metrics, after Olive's metric goals), the
report columns and plot axes of its own metrics, and what the benchmark feeds. Shared modules (gates,
report, plots, CLI, flows) only read the core metrics every task type reports (`Evaluation.metrics()`).
A new task type is one module (most subclass `ResampledTaskType`, quantgate/tasktypes/resampled.py) and
one line in `BUILTIN` (or one `register_task_type` call, for a plugin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from quantgate.backends import Servable
from quantgate.bench import BenchReport, BenchSettings
from quantgate.errors import ConfigError
from quantgate.export import ExportResult
from quantgate.gates import GateSpec, Limit, Thresholds
from quantgate.heldout import HeldoutSchema
from quantgate.tasktypes.results import Evaluation, Reference


class Column(BaseModel):
    """One of a task type's own metrics as a report column."""

    metric: str
    digits: int = 4


class PlotAxis(BaseModel):
    """One of a task type's own metrics as a Pareto-plot panel (latency on x), with its limit's line."""

    metric: str
    label: str
    limit: str | None = None


class TaskMetric(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    higher_is_better: bool = True


class TaskType(Protocol):
    """What the pipeline asks of a kind of model. `assets` is the folder of the export's side files (the
    tokenizer or preprocessor; empty when the task needs none).

    Optional attributes (read with defaults, so a task type need not declare them): `reads_text` (True:
    a serving profile may declare token lengths and sample texts) and `serving_default` (the
    ServingProfile it is judged on when nobody declared one; DEFAULT_SERVING: held-out inputs at batch 1,
    latency)."""

    name: str
    recognised_by: str  # how `register` tells a model folder is of this kind, for people
    heldout_format: str
    schema: HeldoutSchema
    metric: TaskMetric
    limits: tuple[Limit, ...]
    gate_specs: tuple[GateSpec, ...]  # its gates in reading order (quantgate/gates.py `judged_by`)
    default_recipes: tuple[str, ...]  # the recipes a run tries when none are named (): the backends' default
    columns: tuple[Column, ...]  # its own metrics in the candidate table (the first two in the compact one)
    plot_axes: tuple[PlotAxis, ...]

    def recognises(self, model_dir: Path) -> bool: ...

    def reads(self, heldout: Path) -> bool:
        """Whether a held-out file looks like this task type's format (tells apart two task types that
        recognise the same model folder, e.g. STS pairs and a retrieval set for one encoder)."""
        ...

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        """The schema this model's held-out set is validated by (`schema`, or one built from the model:
        a table's feature columns)."""
        ...

    def read_heldout(self, path: Path) -> pd.DataFrame: ...

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]: ...

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        """At registration: what the held-out set must agree on with the model (its labels)."""
        ...

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult: ...

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]: ...

    def reference(self, fp32: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Reference: ...

    def evaluate(
        self,
        reference: Reference,
        candidate: Servable,
        assets: Path,
        heldout: pd.DataFrame,
        thresholds: Thresholds,
        threads: int,
    ) -> Evaluation: ...

    def benchmark(
        self,
        model_dir: Path,
        fp32: Servable,
        candidates: dict[str, Servable],
        assets: Path,
        heldout: pd.DataFrame,
        settings: BenchSettings,
        allow_pickle: bool = False,
    ) -> BenchReport: ...

    def score_champion(
        self,
        reference: Reference,
        version: str,
        model: Servable,
        assets: Path,
        heldout: pd.DataFrame,
        threads: int,
    ) -> Reference: ...


def hf_architectures(model_dir: Path) -> list[str]:
    """The `architectures` a Hugging Face config.json names ([] without a readable one)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []


TASK_TYPES: dict[str, TaskType] = {}
# The task types quantgate ships, one module each; imported on first use so that each can import this one.
BUILTIN = (
    "quantgate.families.sentence_embedding",
    "quantgate.families.text_classification",
    "quantgate.families.token_classification",
    "quantgate.families.tabular",
    "quantgate.families.image_classification",
    "quantgate.families.retrieval",
)


def register_task_type(task_type: TaskType) -> TaskType:
    """One line per task type: its name becomes a registration's `--task`, its limits threshold names and
    CLI flags (quantgate/thresholds.py). A task type written to the older protocol (a `gates()` method, no
    `gate_specs`) is refused here, before any run pulls or exports for it."""
    if not isinstance(getattr(task_type, "gate_specs", None), tuple | list):
        old = " (it has the older `gates()` method)" if callable(getattr(task_type, "gates", None)) else ""
        raise ConfigError(
            f"task type {getattr(task_type, 'name', task_type)!r} declares no `gate_specs`{old}: declare "
            "`gate_specs = judged_by(evidence=..., quality=...)` (quantgate/gates.py; "
            "tests/plugins/toy_regression.py shows one)"
        )
    TASK_TYPES[task_type.name] = task_type
    return task_type


def task_types() -> dict[str, TaskType]:
    """Every registered task type, the built-in ones and the plugins' loaded (quantgate/plugins.py)."""
    import importlib

    from quantgate.plugins import load_plugins

    for module in BUILTIN:
        importlib.import_module(module)
    load_plugins()
    return TASK_TYPES


def get_task_type(name: str) -> TaskType:
    try:
        return task_types()[name]
    except KeyError:
        raise ConfigError(f"unknown task type {name!r}: choose one of {sorted(TASK_TYPES)}") from None


def detect_task_type(model_dir: Path, heldout: Path | None = None) -> TaskType:
    """The one task type that recognises this model folder (and, when several do, reads this held-out
    file); an error naming the known kinds (and how each is recognised) otherwise. Nothing is guessed."""
    known = task_types()
    matches = [t for t in known.values() if t.recognises(model_dir)]
    if len(matches) > 1 and heldout is not None:
        matches = [t for t in matches if t.reads(heldout)]
    if len(matches) == 1:
        return matches[0]
    kinds = "; ".join(f"{t.name}: {t.recognised_by}" for t in known.values())
    if matches:
        raise ConfigError(
            f"{model_dir} could be any of {[t.name for t in matches]}: pass --task to say which"
        )
    if not model_dir.is_dir():
        raise ConfigError(f"model folder {model_dir} does not exist: pass the folder you saved the model to")
    files = sorted(p.name for p in model_dir.iterdir())[:8]
    config = model_dir / "config.json"
    if not config.is_file():
        found = f"no config.json; files {files}"
    else:
        try:
            json.loads(config.read_text())
            found = f"architectures {hf_architectures(model_dir)}"
        except (ValueError, UnicodeDecodeError) as exc:
            found = f"a config.json that is not valid JSON ({exc})"
    raise ConfigError(
        f"cannot tell what kind of model {model_dir} is (found {found}). quantgate knows: {kinds}. "
        "Save the model the way its kind expects, or pass --task to name one"
    )
