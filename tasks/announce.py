"""Emit quantgate's events to Prefect, so deployments and teams' automations can react to them."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from quantgate import announce


@task(name="announce-decision", cache_policy=NO_CACHE)
def decision(report: dict[str, Any]) -> str:
    name, resource, payload = announce.decided(report)
    emit_event(event=name, resource=resource, payload=payload)
    return name
