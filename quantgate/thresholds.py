"""The limit values a run is judged by: `GateThresholds` holds what a person set (a flow parameter, the
CLI's generated flags), one typed field per limit the core (quantgate/gates.py) and every task type
(its module under quantgate/families/) declare, checked against the declaration's bounds; every other limit
keeps its declared default. `gates_for(task, thresholds)` builds the full gate list of a task type's
candidate from its declared gates (`TaskType.gate_specs`), the registration's and the champion's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ConfigDict, Field, create_model, model_validator

from quantgate.gates import CHAMPION, CORE_LIMITS, EXPECTATION, Gate, Limit, build_gates
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


# One typed field per limit the core (quantgate/gates.py) and the built-in task types declare, its default
# and help taken from the declaration: the flow's parameter schema shows them, and `thresholds.export_atol`
# is an attribute like any other.
_DeclaredLimits = create_model(
    "DeclaredLimits",
    **{limit.name: (float | None, Field(limit.default, description=limit.help)) for limit in all_limits()},
)  # type: ignore[call-overload]


class GateThresholds(_DeclaredLimits):  # type: ignore[misc, valid-type]
    """The limits a person set; every other limit keeps its declared default. The declared limits are
    fields; a plugin task type registered later has its own held as checked extras, read by `value`. Names
    are checked against the declared limits, values against their bounds, so a typo or a NaN is an error
    before anything runs."""

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

    def value(self, name: str) -> float | None:
        """A limit's value: the one set, else its declared default."""
        if name in type(self).model_fields:
            return getattr(self, name)
        extra = self.model_extra or {}
        if name in extra:
            return extra[name]
        limit = next((lim for lim in all_limits() if lim.name == name), None)
        if limit is None:
            known = sorted(lim.name for lim in all_limits())
            raise ValueError(f"unknown limit {name!r}: choose from {known}")
        return limit.default

    def resolved(self, limits: Iterable[Limit]) -> dict[str, float | None]:
        """Every limit's effective value: what the report and the manifest record."""
        return {limit.name: self.value(limit.name) for limit in limits}


def gates_for(task: TaskType, t: GateThresholds, champion: bool = False) -> list[Gate]:
    """Every gate a candidate of this task type is judged by; with `champion`, also the two that compare
    a new version with the serving one."""
    return build_gates((*task.gate_specs, *EXPECTATION, *(CHAMPION if champion else ())), t)
