"""Emit quantgate's events to Prefect, so deployments and teams' automations can react to them; tag each
run with its outcome, so the UI's tag filters find runs by what they decided."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_run
from prefect.states import State

from quantgate import announce
from quantgate.approval import approval_tags
from quantgate.registry import Approval
from quantgate.report import failure_reason, sweep_markdown

SWEEP_SUMMARY_KEY = "registry-sweep-summary"


@task(name="announce-decision", cache_policy=NO_CACHE)
def decision(report: dict[str, Any]) -> str:
    name, resource, payload = announce.decided(report)
    emit_event(event=name, resource=resource, payload=payload)
    return name


@task(name="announce-failure", cache_policy=NO_CACHE)
def failure(report: dict[str, Any]) -> str:
    """quantgate.model.failed; the worker relates it to this flow run (Prefect adds the run context's
    flow run to every event emitted inside it)."""
    name, resource, payload = announce.failed(report)
    related = None
    if report["run_id"] != str(current_run.get_id()):  # a crash the sweep reports: name the crashed run
        related = [
            {
                "prefect.resource.id": f"prefect.flow-run.{report['run_id']}",
                "prefect.resource.role": "flow-run",
            }
        ]
    emit_event(event=name, resource=resource, payload=payload, related=related)
    return name


def outcome_of(state: State) -> str:
    """A finished quantize-and-promote run's outcome tag, from its final state: `failed` for any state
    that is not COMPLETED, `already-decided`, or the decision's own (`promoted`, `rejected:<reason>`)."""
    if not state.is_completed():
        return announce.FAILED_TAG
    if state.name == "AlreadyDecided":
        return announce.ALREADY_DECIDED_TAG
    try:
        report = state.result()
    except Exception:  # noqa: BLE001 - a result no longer at hand: the state's name still says which
        report = {"outcome": "promoted" if state.name == "Promoted" else "rejected", "reason": "unknown"}
    return announce.outcome_tag(report)


def describe_outcome(state: State) -> str:
    """outcome_of, with what raised for a failed run: `failed: <ErrorType>: <message>` (cut short)."""
    tag = outcome_of(state)
    if tag != announce.FAILED_TAG:
        return tag
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result at hand (a crash): the state's message says what happened
        exc = None
    if isinstance(exc, BaseException):
        return f"failed: {failure_reason({'error': type(exc).__name__, 'message': str(exc)}, 160)}"
    return f"failed: {state.name}: {state.message or ''}".rstrip(": ")


def publish_sweep(rows: list[dict[str, Any]], summary: str) -> str:
    """The sweep's summary under one key, so the Artifacts page keeps every sweep as a history."""
    return str(
        create_markdown_artifact(
            key=SWEEP_SUMMARY_KEY,
            markdown=sweep_markdown(rows, summary),
            description=f"registry sweep: {summary}",
        )
    )


def add_tags(flow_run_id: UUID, tags: list[str]) -> None:
    """Adds tags to a flow run, keeping those it has (a deployment's, a trigger's): Prefect's
    update_flow_run replaces the whole list."""
    with get_client(sync_client=True) as client:
        existing = client.read_flow_run(flow_run_id).tags
        client.update_flow_run(flow_run_id, tags=[*existing, *(t for t in tags if t not in existing)])


def tag_failed(flow_run_id: str) -> None:
    """The `failed` tag on a run that could not tag itself (it crashed); best effort."""
    try:
        add_tags(UUID(flow_run_id), [announce.FAILED_TAG])
    except Exception as exc:  # noqa: BLE001 - a tag is a label on the run, never worth failing the sweep
        get_run_logger().warning("could not tag run %s failed: %s: %s", flow_run_id, type(exc).__name__, exc)


def tag_approval(approval: Approval | None) -> None:
    """`approved-by:<who>` / `rejected-by:<who>` on this run, as soon as the reviewer answered; best
    effort, like the outcome tag."""
    tags = approval_tags(approval)
    run_id = current_run.get_id()
    if not tags or run_id is None:
        return
    try:
        add_tags(UUID(run_id), tags)
    except Exception as exc:  # noqa: BLE001 - a tag is a label on the run, never worth failing it
        get_run_logger().warning("could not tag the run with %s: %s: %s", tags, type(exc).__name__, exc)


def tag_outcome(flow: Any, flow_run: Any, state: State) -> None:
    """The flow's on_completion and on_failure hook: the run ends tagged with its outcome. A hook runs
    after the final state is set, so it sees every way a run ends (a failure before the flow body too)
    and cannot change the state; best effort besides: a tag that cannot be written is a warning, never a
    different decision, state or storage."""
    try:
        tag = outcome_of(state)
        add_tags(flow_run.id, [tag])
    except Exception as exc:  # noqa: BLE001 - a tag is a label on the run, never worth failing it
        flow_run_logger(flow_run, flow).warning(
            "could not tag the run with its outcome: %s: %s", type(exc).__name__, exc
        )
