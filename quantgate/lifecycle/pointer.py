"""Move current.json, always by compare-and-swap: forward to a finished promotion unless a later decision
holds it, back to an earlier verified promotion on a rollback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from quantgate.errors import ConflictError, NotFoundError, QuantgateError
from quantgate.lifecycle._records import NO_TRUST, _put_json
from quantgate.lifecycle.audit import _append_audit, audit_log
from quantgate.lifecycle.decisions import _load_pointer, load_manifest
from quantgate.lifecycle.verification import _require_verified
from quantgate.registry import AuditEvent, Manifest, ModelRef, Pointer, current_key, manifest_key, parse_time
from quantgate.signing import TrustedKeys
from quantgate.storage import sha256_bytes
from quantgate.store import Store


def _pointer_time(store: Store, pointer: Pointer) -> datetime | None:
    """When the decision behind the current pointer was made: a rollback at its own time, a promotion at
    its manifest's promotion time."""
    if pointer.action == "rollback":
        return parse_time(pointer.updated_at)
    if pointer.promoted_at:
        return parse_time(pointer.promoted_at)
    try:  # a pointer written before promotion times were recorded in it
        return parse_time(
            load_manifest(store, ModelRef(name=pointer.model, version=pointer.version)).promoted_at
        )
    except QuantgateError:
        return parse_time(pointer.updated_at)


def _advance_pointer(store: Store, ref: ModelRef, manifest: Manifest, digest: str) -> tuple[bool, str | None]:
    """Compare-and-swap current.json to this promotion unless a later decision holds it. Returns (moved,
    the version it pointed at before). Retried when another writer moved it in between."""
    key = current_key(ref.name)
    promoted_at = parse_time(manifest.promoted_at)
    for _ in range(10):
        found = _load_pointer(store, ref.name)
        pointer, etag = found if found else (None, None)
        if pointer is not None and pointer.version == ref.version and pointer.manifest_sha256 == digest:
            return True, pointer.previous_version  # an earlier attempt's swap landed
        if pointer is not None:
            decided_at = _pointer_time(store, pointer)
            if promoted_at is None or (decided_at is not None and decided_at >= promoted_at):
                # A later promotion or rollback holds the pointer. Ours may still have served in between
                # (its swap landed, then the run died before its audit event): the later decision's
                # pointer or event names it as the version it replaced.
                return _served_before(store, ref, pointer), pointer.version
        new = Pointer(
            model=ref.name,
            version=ref.version,
            manifest_sha256=digest,
            run_id=manifest.run_id,
            action="promote",
            promoted_at=manifest.promoted_at,
            previous_version=pointer.version if pointer else None,
        )
        try:
            _put_json(store, key, new, create_only=pointer is None, if_match=etag)
        except ConflictError:
            continue
        return True, new.previous_version
    raise ConflictError(f"{key} kept changing under concurrent updates; run the command again")


def _served_before(store: Store, ref: ModelRef, pointer: Pointer) -> bool:
    if pointer.previous_version == ref.version:
        return True
    return any(e.previous_version == ref.version for e in audit_log(store, ref.name) if e.pointer_moved)


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback would change: current.json from `current` to `target`, compared against the
    pointer as read (`etag`), so what the operator confirmed is what moves, or nothing does."""

    model: str
    current: str
    target: str
    etag: str


def plan_rollback(
    store: Store, model: str, to_version: str | None, trusted: TrustedKeys | None = None
) -> RollbackPlan:
    """The rollback's target (default: the version promoted before the current one), read only: nothing
    is written. Refuses a target that was never promoted or is already current; with `trusted` (NO_TRUST
    included) also one whose files do not verify, so that what is shown before a confirmation is a
    rollback that can happen (apply_rollback verifies again before its swap)."""
    found = _load_pointer(store, model)
    if found is None:
        store.require_bucket()
        raise NotFoundError(f"model {model!r} has no promoted version to roll back")
    pointer, etag = found
    if to_version is None:
        promoted: list[str] = []
        for e in audit_log(store, model):
            if e.action == "promote" and e.version not in promoted:
                promoted.append(e.version)
        earlier = promoted[: promoted.index(pointer.version)] if pointer.version in promoted else []
        if not earlier:
            raise NotFoundError(
                f"{model}@{pointer.version} is the first promoted version: nothing to roll back to"
            )
        to_version = earlier[-1]
    ref = ModelRef(name=model, version=to_version)
    if not store.exists(manifest_key(ref)):
        raise NotFoundError(f"{ref} was never promoted: `quantgate list {model}` shows promoted versions")
    if ref.version == pointer.version:
        raise ConflictError(f"{ref} is already the current version")
    if trusted is not None:
        _require_verified(store, ref, "roll back to", trusted, deep=trusted.enforced)
    return RollbackPlan(model=model, current=pointer.version, target=ref.version, etag=etag)


def rollback(
    store: Store, model: str, to_version: str | None, actor: str, trusted: TrustedKeys = NO_TRUST
) -> AuditEvent:
    """Point current.json back at an earlier promoted version (default: the one promoted before the
    current one); see apply_rollback."""
    return apply_rollback(store, plan_rollback(store, model, to_version), actor, trusted)


def apply_rollback(
    store: Store, plan: RollbackPlan, actor: str, trusted: TrustedKeys = NO_TRUST
) -> AuditEvent:
    """Carry out a planned rollback, after verifying every file of the target's manifest (and, with
    trusted keys, its signature and every file's bytes). One compare-and-swap against the pointer the plan
    read: if it moved since (another promotion or rollback, also while the operator was confirming),
    nothing changes and the operator is told. Only the pointer moves."""
    model = plan.model
    ref = ModelRef(name=model, version=plan.target)
    # With trusted keys the bytes are hashed too: a stored checksum is only as good as the bucket.
    manifest, raw = _require_verified(store, ref, "roll back to", trusted, deep=trusted.enforced)
    digest = sha256_bytes(raw)
    new = Pointer(
        model=model,
        version=ref.version,
        manifest_sha256=digest,
        run_id=manifest.run_id,
        action="rollback",
        promoted_at=manifest.promoted_at,
        previous_version=plan.current,
    )
    try:
        _put_json(store, current_key(model), new, if_match=plan.etag)
    except ConflictError:
        raise ConflictError(
            f"current.json of {model!r} changed while rolling back (another promotion or rollback): "
            "check `quantgate list` and run the rollback again"
        ) from None
    event = AuditEvent(
        action="rollback",
        model=model,
        version=ref.version,
        previous_version=plan.current,
        run_id=None,
        actor=actor,
        manifest_sha256=digest,
        files=manifest.files,
    )
    _append_audit(store, event)
    return event
