"""What quantgate announces, as plain data: event names, the resource they are about, their payloads.
Emitting them is the Prefect layer's job (tasks/announce.py, the CLI); deployments' triggers and teams'
automations match on these names and fields, so they are a public contract: change them with care.

Payload values keep the flow's parameter types (strings for model and version): a trigger that templates
a value of the wrong type into a parameter silently creates no run (seen on Prefect 3.8.8).

Run tags are the same kind of contract: each quantize-and-promote run ends tagged with its outcome, so the
UI's and the API's tag filters find "every rejection for a thin held-out set" without reading reports."""

from __future__ import annotations

from typing import Any

from quantgate.registry import AuditEvent, Registration, registered_prefix

REGISTERED = "quantgate.model.registered"
PROMOTED = "quantgate.model.promoted"
REJECTED = "quantgate.model.rejected"
FAILED = "quantgate.model.failed"
ROLLED_BACK = "quantgate.model.rolled-back"

# The outcome tag of a run: `promoted`, `rejected:<reason>` (the report's rejection reason), `failed`, or
# `already-decided` (a run that found the version decided and decided nothing).
PROMOTED_TAG = "promoted"
FAILED_TAG = "failed"
ALREADY_DECIDED_TAG = "already-decided"


def resource(model: str, version: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"quantgate.model.{model}",
        "prefect.resource.name": model,
        "quantgate.model": model,
        "quantgate.version": version,
    }


def model_event(
    name: str, model: str, version: str, **fields: Any
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One event about a model version, as every quantgate event is shaped: its name, the version as its
    resource, and a payload that starts with the model and version (as strings) and goes on with `fields`
    in the order given."""
    return name, resource(model, version), {"model": model, "version": version, **fields}


def registered(registration: Registration, bucket: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    ref = registration.ref
    return model_event(
        REGISTERED,
        ref.name,
        ref.version,
        task=registration.task,
        location=f"s3://{bucket}/{registered_prefix(ref)}",
        source_checksum=registration.source_checksum,
    )


def decided(report: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    failed = [r["gate"]["name"] for r in report["gates"]["results"] if not r["passed"]]
    return model_event(
        PROMOTED if report["outcome"] == "promoted" else REJECTED,
        report["model"],
        report["version"],
        outcome=report["outcome"],
        run_id=report["run_id"],
        recipe=(report.get("recipe") or {}).get("name"),  # None: no candidate was built
        metrics=report["metrics"],
        failed_gates=failed,
        promoted_to=report.get("promoted_to"),
        reason=report.get("reason"),
        approval=report.get("approval"),  # who approved or rejected, when the run asked
    )


def outcome_tag(report: dict[str, Any]) -> str:
    """The tag a decided run carries: `promoted`, or `rejected:<reason>` (gates-failed when a report from
    before reasons were recorded has none); any other outcome is `failed`."""
    if report.get("outcome") == "promoted":
        return PROMOTED_TAG
    if report.get("outcome") == "rejected":
        return f"rejected:{report.get('reason') or 'gates-failed'}"
    return FAILED_TAG


def failed(report: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A run that ended Failed (quantgate.report.failure_report's dict): what raised and where its report and
    Data Docs are, for an automation that pages someone."""
    return model_event(
        FAILED,
        report["model"],
        report["version"],
        outcome="failed",
        run_id=report["run_id"],
        error=report.get("error"),
        message=report.get("message"),
        data_docs=report.get("data_docs"),
    )


def rolled_back(event: AuditEvent) -> tuple[str, dict[str, str], dict[str, Any]]:
    """current.json moved back to `version` (the rollback's audit event): serving should reload."""
    return model_event(
        ROLLED_BACK,
        event.model,
        event.version,
        previous_version=event.previous_version,
        actor=event.actor,
        manifest_sha256=event.manifest_sha256,
        at=event.at,
    )
