"""Registrations announced to a real stack and the runs they start, observed through the Prefect API: shared
by tests/integration/test_workers.py (and benchmarks/workers.py, which runs it) and benchmarks/flood.py.

Registering and announcing take the CLI's path (`quantgate register`): `lifecycle.register`, then
`announce.registered` emitted with `emit_event`. The caller has set PREFECT_API_URL (or a temporary
setting) and the QUANTGATE_* storage settings."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from quantgate import announce, lifecycle
from quantgate.registry import ModelRef, Registration
from quantgate.store import Store

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PAGE = 200  # the server's default (and largest) page of flow runs: PREFECT_API_DEFAULT_LIMIT


def register_all(
    store: Store, refs: Sequence[ModelRef], model_dir: Path, heldout: Path, task: str, threads: int = 8
) -> list[Registration]:
    """Every version uploaded, up to `threads` at once; the registrations in the order of `refs`."""

    def register(ref: ModelRef) -> Registration:
        return lifecycle.register(store, ref, model_dir, heldout, task)

    with ThreadPoolExecutor(max(1, min(threads, len(refs)))) as pool:
        return list(pool.map(register, refs))


def _fresh_events_worker() -> None:
    """Prefect keeps one events worker per process for every running server, bound to the API URL that was
    set when it started: in a process that ran flows on another server before (a test session's ephemeral
    one), emit_event would send there. Draining stops it; the next emit_event starts one for the current
    PREFECT_API_URL. (`quantgate register` runs in a process of its own and never meets this.)"""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()


def announce_all(registrations: Sequence[Registration], bucket: str) -> list[Any]:
    """quantgate.model.registered for each registration, as `quantgate register` emits it; the events as
    sent (their ids let a caller send the very same event again). Returns once every event left this
    process: emit_event only queues it for Prefect's events worker."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    _fresh_events_worker()
    sent = []
    for registration in registrations:
        name, resource, payload = announce.registered(registration, bucket)
        sent.append(emit_event(event=name, resource=resource, payload=payload))
    EventsWorker.drain_all()
    if any(event is None for event in sent):
        raise RuntimeError("Prefect did not emit the events: is PREFECT_API_URL set?")
    return sent


def resend(events: Sequence[Any]) -> None:
    """The same events again (same id, time, resource and payload), as an announcer that retries after a
    lost answer would send them."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    _fresh_events_worker()
    for event in events:
        emit_event(
            event=event.event,
            resource=dict(event.resource),
            related=[dict(r) for r in event.related],
            payload=event.payload,
            occurred=event.occurred,
            id=event.id,
        )
    EventsWorker.drain_all()


def _of_deployment(deployment_id: UUID) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def count_runs(client: Any, deployment_id: UUID, state_types: Sequence[str] | None = None) -> int:
    """How many runs the deployment has (in these state types): one cheap request, for polling."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    runs = None
    if state_types:
        runs = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(state_types))))
    return client.count_flow_runs(flow_run_filter=runs, deployment_filter=_of_deployment(deployment_id))


def deployment_runs(client: Any, deployment_id: UUID) -> list[Any]:
    """Every run of the deployment, page by page (one request returns at most PAGE), each once."""
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[UUID, Any] = {}
    offset = 0
    while True:
        page = client.read_flow_runs(
            deployment_filter=_of_deployment(deployment_id),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=PAGE,
            offset=offset,
        )
        found.update((run.id, run) for run in page)
        if len(page) < PAGE:
            return list(found.values())
        offset += PAGE


def wait_for_runs(client: Any, deployment_id: UUID, count: int, timeout: float) -> list[Any]:
    """The deployment's runs once at least `count` exist and every one has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_runs(client, deployment_id, sorted(TERMINAL)) >= count:
            runs = deployment_runs(client, deployment_id)
            if all(r.state and r.state.type.value in TERMINAL for r in runs):
                return runs
        time.sleep(1)
    runs = deployment_runs(client, deployment_id)
    states = sorted(f"{r.name}: {r.state.name if r.state else None}" for r in runs)
    raise AssertionError(f"not every run of deployment {deployment_id} finished within {timeout} s: {states}")


def write_result(path: Path, command: str, scenario: str, found: dict[str, Any]) -> None:
    """A benchmark's JSON: the command that made it, its scenario, the machine, when, and its figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "scenario": scenario,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        **found,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
