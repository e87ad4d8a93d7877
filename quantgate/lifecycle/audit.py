"""The audit log: one create-only event per promotion and rollback under audit/<model>/, read oldest first;
what does not have an event's shape is skipped and listed, never trusted."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from pydantic import ValidationError

from quantgate.errors import NotFoundError
from quantgate.lifecycle._records import _put_json
from quantgate.registry import AUDIT_NAME_RE, AuditEvent, audit_key, audit_prefix
from quantgate.store import Store


def _append_audit(store: Store, event: AuditEvent, at_ns: int | None = None, token: str | None = None) -> str:
    key = audit_key(
        event.model,
        time.time_ns() if at_ns is None else at_ns,
        token or uuid.uuid4().hex[:8],
        event.action,
        event.version,
    )
    _put_json(store, key, event, create_only=True)
    return key


@dataclass
class AuditLog:
    events: list[AuditEvent]
    skipped: list[str]  # keys under audit/<m>/ that are not quantgate events (stray or unreadable)


def read_audit_log(store: Store, model: str) -> AuditLog:
    """Every promotion and rollback of a model, oldest first (keys sort by time). Objects whose key
    does not have the audit shape, or that do not parse, are skipped and listed: never trusted."""
    log = AuditLog(events=[], skipped=[])
    prefix = audit_prefix(model)
    for obj in store.list(prefix):
        shaped = AUDIT_NAME_RE.fullmatch(obj.key.removeprefix(prefix))
        event = read_event(store, obj.key, model) if shaped else None
        if event is None:
            log.skipped.append(obj.key)
            continue
        log.events.append(event)
    return log


def read_event(store: Store, key: str, model: str) -> AuditEvent | None:
    """One audit event, None when it does not parse or is another model's (never trusted)."""
    try:
        event = AuditEvent.model_validate_json(store.get_bytes(key))
    except (ValidationError, NotFoundError):
        return None
    return event if event.model == model else None


def event_keys(store: Store, model: str, action: str | None = None) -> dict[str, list[str]]:
    """version -> the keys of its events (of `action`, or all), oldest first, from one listing of
    audit/<model>/ (the key names say action and version): a check of one version then reads only that
    version's events, however long the model's log."""
    prefix = audit_prefix(model)
    found: dict[str, list[str]] = {}
    for obj in store.list(prefix):
        name = obj.key.removeprefix(prefix)
        if not AUDIT_NAME_RE.fullmatch(name):
            continue
        _, _, rest = name.split("-", 2)  # <time>-<token>-<action>-<version>.json
        named, _, version = rest.removesuffix(".json").partition("-")
        if action is None or named == action:
            found.setdefault(version, []).append(obj.key)
    return found


def promote_event_keys(store: Store, model: str) -> dict[str, list[str]]:
    return event_keys(store, model, "promote")


def event_token(key: str) -> str:
    """The token of an audit key: a promotion's event carries its manifest digest's first 8 hex digits."""
    return key.rsplit("/", 1)[-1].split("-", 2)[1]


def audit_log(store: Store, model: str) -> list[AuditEvent]:
    return read_audit_log(store, model).events
