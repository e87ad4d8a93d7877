"""The limit values a run is judged by: `GateThresholds` holds what a person set (a flow parameter, the
CLI's generated flags), checked against the limits the core (quantgate/gates.py) and every registered
task type (quantgate/tasktypes/, quantgate/families/) declare; every other limit keeps its declared default.
`gates_for(task, thresholds)` is the full gate list of a task type's candidate."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from quantgate.gates import CORE_LIMITS, Gate, Limit, champion_gates, expectation_gates
from quantgate.tasktypes import TaskType, task_types

# Limits that only the registration sets, never a flag of their own.
_NOT_FLAGS = {"expect_metric", "expect_tolerance"}


def all_limits() -> list[Limit]:
    """Every limit: the core ones, then each registered task type's, once each. A name two task types
    share must mean the same limit."""
    seen: dict[str, Limit] = {limit.name: limit for limit in CORE_LIMITS}
    for task in task_types().values():
        for limit in task.limits:
            other = seen.setdefault(limit.name, limit)
            if other != limit:
                raise ValueError(f"task type {task.name!r} redefines limit {limit.name!r} differently")
    return list(seen.values())


def flag_limits() -> list[Limit]:
    """The limits the CLI offers as `--<name>` flags."""
    return [limit for limit in all_limits() if limit.name not in _NOT_FLAGS]


def limits_for(task: TaskType) -> list[Limit]:
    """The limits a task type's run is judged by: the core ones and its own."""
    return [*CORE_LIMITS, *task.limits]


class GateThresholds(BaseModel):
    """The limits a person set; every other limit keeps its declared default. Names are checked against
    the declared limits, values against their bounds, so a typo or a NaN is an error before anything
    runs."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {limit.name: limit for limit in all_limits()}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown thresholds {unknown}: choose from {sorted(known)}")
        return {k: known[k].check(v) for k, v in data.items()}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            limit = next((lim for lim in all_limits() if lim.name == name), None)
            if limit is None:
                raise
            return limit.default

    def value(self, name: str) -> float | None:
        return getattr(self, name)

    def resolved(self, limits: Iterable[Limit]) -> dict[str, float | None]:
        """Every limit's effective value: what the report and the manifest record."""
        return {limit.name: self.value(limit.name) for limit in limits}


def gates_for(task: TaskType, t: GateThresholds, champion: bool = False) -> list[Gate]:
    """Every gate a candidate of this task type is judged by; with `champion`, also the two that compare
    a new version with the serving one."""
    return task.gates(t) + expectation_gates(t) + (champion_gates(t) if champion else [])
