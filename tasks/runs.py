"""Reading quantize-and-promote's own runs back from the Prefect API, by state: the runs waiting for
approval (tasks/approval.py), the crashed ones the sweep reports and the ones still in flight that it
leaves alone (tasks/storage.py)."""

from __future__ import annotations

import math
from typing import Any

FLOW_NAME = "quantize-and-promote"


# States a run is in until it ends: waiting to start (Scheduled, Late, AwaitingConcurrencySlot), starting,
# running, paused for approval, being cancelled.
IN_FLIGHT = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def flow_runs(
    state: str | tuple[str, ...],
    *,
    name: str | None = None,
    newest_first: bool = False,
    limit: int | None = None,
) -> list[Any]:
    """quantize-and-promote's runs whose state type is `state` (`PAUSED`, `CRASHED`...; or any of several),
    of run name `name` (`model@version`, which a run takes when it starts) when given, by start time (a
    run not started yet by its expected start). Without `limit`, every matching run: read page by page
    (the server returns at most PREFECT_API_DEFAULT_LIMIT at once), each page leaving out the runs already
    read, so a run that changes state between two reads moves no other run past the pages."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    states = (state,) if isinstance(state, str) else state
    order = FlowRunSort.START_TIME_DESC if newest_first else FlowRunSort.START_TIME_ASC
    flows = FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))

    def matching(seen: list[Any]) -> FlowRunFilter:
        return FlowRunFilter(
            id=FlowRunFilterId(not_any_=[r.id for r in seen]) if seen else None,
            name=FlowRunFilterName(any_=[name]) if name is not None else None,
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in states])),
        )

    with get_client(sync_client=True) as client:
        if limit is not None:
            return client.read_flow_runs(
                flow_filter=flows, flow_run_filter=matching([]), sort=order, limit=limit
            )
        runs: list[Any] = []
        while page := client.read_flow_runs(flow_filter=flows, flow_run_filter=matching(runs), sort=order):
            runs += page
    return sorted(runs, key=_started, reverse=newest_first)


def _started(run: Any) -> Any:
    return run.start_time or run.expected_start_time or run.created


def version_of(run: Any) -> str:
    """The `model@version` a run of quantize-and-promote decides: its parameters (a run created by a
    deployment trigger is named `model@version` only once it starts), else its name."""
    params = run.parameters or {}
    if isinstance(params.get("model"), str) and isinstance(params.get("version"), str):
        return f"{params['model']}@{params['version']}"
    return run.name


def in_flight(refs: list[Any], max_age_h: float) -> dict[str, str]:
    """str(ref) -> "in flight: run <id> of it is <state> (created N min ago)" for each version in `refs`
    that a run not yet ended is deciding; runs created more than `max_age_h` hours ago are logged and
    left out. Called from a task (it logs to the run)."""
    from datetime import UTC, datetime, timedelta

    from prefect.logging import get_run_logger

    from quantgate.errors import ConfigError

    if not (0 < max_age_h < math.inf):
        raise ConfigError(
            f"in_flight_max_age_h must be a number of hours above 0, not {max_age_h!r}: it is how old a run "
            "not yet ended may be and still hold its version back from the sweep (24 by default)"
        )
    wanted = {str(r) for r in refs}
    if not wanted:
        return {}
    now = datetime.now(UTC)
    cutoff = now - timedelta(hours=max_age_h)
    held, logger = {}, get_run_logger()
    # Every run not ended (a queue of hundreds at most): one not started yet is not named model@version.
    for run in flow_runs(IN_FLIGHT):
        version = version_of(run)
        if version not in wanted:
            continue
        state = run.state.name if run.state else "unknown"
        age_min = (now - run.created).total_seconds() / 60
        if run.created < cutoff:
            logger.warning(
                "%s: run %s is %s, created %.0f min ago (over %s h): not waited for", version, run.id, state,
                age_min, max_age_h,
            )  # fmt: skip
            continue
        held.setdefault(version, f"in flight: run {run.id} of it is {state} (created {age_min:.0f} min ago)")
    return held
