"""What quantgate announces, as plain data: event names, the resource they are about, their payloads.
Emitting them is the Prefect layer's job (tasks/announce.py, the CLI); deployments' triggers and teams'
automations match on these names and fields, so they are a public contract: change them with care.

Payload values keep the flow's parameter types (strings for model and version): a trigger that templates
a value of the wrong type into a parameter silently creates no run (seen on Prefect 3.8.8)."""

from __future__ import annotations

from typing import Any

from quantgate.registry import AuditEvent, Registration, registered_prefix

REGISTERED = "quantgate.model.registered"
PROMOTED = "quantgate.model.promoted"
REJECTED = "quantgate.model.rejected"
ROLLED_BACK = "quantgate.model.rolled-back"


def resource(model: str, version: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"quantgate.model.{model}",
        "prefect.resource.name": model,
        "quantgate.model": model,
        "quantgate.version": version,
    }


def registered(registration: Registration, bucket: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    ref = registration.ref
    return (
        REGISTERED,
        resource(ref.name, ref.version),
        {
            "model": ref.name,
            "version": ref.version,
            "task": registration.task,
            "location": f"s3://{bucket}/{registered_prefix(ref)}",
            "source_checksum": registration.source_checksum,
        },
    )


def decided(report: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    failed = [r["gate"]["name"] for r in report["gates"]["results"] if not r["passed"]]
    name = PROMOTED if report["outcome"] == "promoted" else REJECTED
    return (
        name,
        resource(report["model"], report["version"]),
        {
            "model": report["model"],
            "version": report["version"],
            "outcome": report["outcome"],
            "run_id": report["run_id"],
            "recipe": report["recipe"].get("name"),
            "metrics": report["metrics"],
            "failed_gates": failed,
            "promoted_to": report.get("promoted_to"),
            "reason": report.get("reason"),
        },
    )


def rolled_back(event: AuditEvent) -> tuple[str, dict[str, str], dict[str, Any]]:
    """current.json moved back to `version` (the rollback's audit event): serving should reload."""
    return (
        ROLLED_BACK,
        resource(event.model, event.version),
        {
            "model": event.model,
            "version": event.version,
            "previous_version": event.previous_version,
            "actor": event.actor,
            "manifest_sha256": event.manifest_sha256,
            "at": event.at,
        },
    )
