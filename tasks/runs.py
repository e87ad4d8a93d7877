"""Reading quantize-and-promote's own runs back from the Prefect API, by state: the runs waiting for
approval (tasks/approval.py) and the crashed ones the sweep reports (tasks/storage.py)."""

from __future__ import annotations

from typing import Any

FLOW_NAME = "quantize-and-promote"


def flow_runs(
    state: str, *, name: str | None = None, newest_first: bool = False, limit: int | None = None
) -> list[Any]:
    """quantize-and-promote's runs whose state type is `state` (`PAUSED`, `CRASHED`...), of run name `name`
    (`model@version`) when given, by start time."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[name]) if name is not None else None,
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(state)])),
            ),
            sort=FlowRunSort.START_TIME_DESC if newest_first else FlowRunSort.START_TIME_ASC,
            limit=limit,
        )
