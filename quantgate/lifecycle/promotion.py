"""Promote a version: files under the run's own prefix, the signature, the create-only manifest (the
commit point), then the tail anyone may finish: leftovers removed, pointer moved, audit event."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from quantgate.errors import ConfigError, ConflictError, IntegrityError, NotFoundError
from quantgate.lifecycle._records import NO_TRUST, _delete_prefix, _json_bytes, _put_json
from quantgate.lifecycle.audit import _append_audit, event_token, promote_event_keys, read_event
from quantgate.lifecycle.decisions import _manifest_with_digest, load_rejection
from quantgate.lifecycle.pointer import _advance_pointer
from quantgate.lifecycle.verification import _check_signature
from quantgate.registry import (
    SIGNATURE_NAME,
    STATEMENT_NAME,
    AuditEvent,
    FileEntry,
    Manifest,
    ModelRef,
    artifact_prefix,
    manifest_key,
    parse_time,
    promoted_key,
    promoted_prefix,
    rejection_key,
    utcnow,
)
from quantgate.signing import SIGNATURE_FIX, Signer, TrustedKeys, statement_bytes, unverified_digests
from quantgate.store import RUN_METADATA, Store


def promote(
    store: Store,
    manifest: Manifest,
    local_files: dict[str, Path],
    report: dict[str, Any],
    actor: str,
    signer: Signer | None = None,
) -> Manifest:
    """Promote one version: the guarantees (README, "Guarantees") rest on this order.

    1. upload every file under promoted/<m>/<v>/<run-id>/ (a prefix no other run writes), tagged with
       the run id, its sha256 checked by the server on receipt and compared again after;
    2. with a `signer`: upload promotion.json (the manifest's content) and model.sig, the model-signing
       bundle over every file of the run prefix (quantgate/signing.py), both listed in the manifest;
    3. write manifest.json create-only, stamped with the promotion time: the commit point. Losing that
       race to another run raises ConflictError after this run's own uploads are deleted;
    4. finish: swap promoted/<m>/current.json (never back to an older promotion), append the audit event.
    Safe to call again after any failed write: a manifest with this run's id is this run's own commit
    (an earlier attempt's write landed), and the promotion carries on from it.
    `local_files` maps a path under the run prefix to a local file; report.json is added here."""
    ref = ModelRef(name=manifest.model, version=manifest.version)
    reserved = {"report.json", STATEMENT_NAME, SIGNATURE_NAME} & set(local_files)
    if reserved:
        raise ConfigError(f"promoted file names {sorted(reserved)} are quantgate's own: rename those files")
    if store.exists(manifest_key(ref)):
        return _resume_or_refuse(store, ref, manifest.run_id, actor)
    _refuse_if_rejected(store, ref)
    prefix = artifact_prefix(ref, manifest.run_id)
    rel_prefix = prefix.removeprefix(promoted_prefix(ref))
    with tempfile.TemporaryDirectory(prefix="quantgate-promote-") as scratch:
        files = {**local_files, "report.json": Path(scratch) / "report.json"}
        files["report.json"].write_bytes(_json_bytes(report))
        entries = [_upload_checked(store, prefix, rel_prefix, rel, path, manifest.run_id)
                   for rel, path in sorted(files.items())]  # fmt: skip
        final = manifest.model_copy(update={"files": entries, "promoted_at": utcnow()})
        if signer is not None:
            final = _sign(store, final, files, Path(scratch), signer)
    # A rejection recorded meanwhile by another run of this version (the sweep's, say) decided it: the
    # manifest and the rejection record are two keys, so each commit checks the other first.
    _refuse_if_rejected(store, ref, artifact_prefix(ref, manifest.run_id))
    try:
        _put_json(store, manifest_key(ref), final, create_only=True, run_id=manifest.run_id)
    except ConflictError:
        return _resume_or_refuse(store, ref, manifest.run_id, actor)
    finish_promotion(store, ref, actor)
    return final


def _refuse_if_rejected(store: Store, ref: ModelRef, uploads: str | None = None) -> None:
    """Refuse to promote a version another run has rejected, after deleting this run's `uploads`."""
    if not store.exists(rejection_key(ref)):
        return
    if uploads is not None:
        _delete_prefix(store, uploads)
    by = load_rejection(store, ref).get("run_id")
    raise ConflictError(
        f"{ref} was already rejected by run {by} (a concurrent or earlier run); this run promoted nothing"
        + (" and removed its own uploads" if uploads is not None else "")
    )


def _upload_checked(
    store: Store, prefix: str, rel_prefix: str, rel: str, path: Path, run_id: str
) -> FileEntry:
    key = prefix + rel
    digest = store.put_file(key, path, run_id=run_id)
    stored = store.sha256_of(key)
    if stored is not None and stored != digest:
        raise IntegrityError(f"{key} was stored with sha256 {stored[:12]}…, expected {digest[:12]}…")
    return FileEntry(path=rel_prefix + rel, sha256=digest, size=path.stat().st_size)


def _sign(store: Store, final: Manifest, files: dict[str, Path], scratch: Path, signer: Signer) -> Manifest:
    """Upload promotion.json (the manifest's content) and model.sig (signed over every file of the run,
    promotion.json included); the manifest that lists both is written after them."""
    ref = ModelRef(name=final.model, version=final.version)
    prefix = artifact_prefix(ref, final.run_id)
    rel_prefix = prefix.removeprefix(promoted_prefix(ref))
    statement = scratch / STATEMENT_NAME
    statement.write_bytes(statement_bytes(final))
    statement_entry = _upload_checked(store, prefix, rel_prefix, STATEMENT_NAME, statement, final.run_id)
    signed = {**files, STATEMENT_NAME: statement}
    bundle = scratch / SIGNATURE_NAME
    bundle.write_bytes(signer.sign(signed, f"{ref.name}@{ref.version}"))
    listed = {e.path.removeprefix(rel_prefix): e.sha256 for e in [*final.files, statement_entry]}
    if unverified_digests(bundle.read_bytes()) != listed:  # a local file changed after its upload
        raise IntegrityError(
            f"{ref}: the signature does not cover the files as uploaded (a local file changed meanwhile): "
            "run the version again"
        )
    bundle_entry = _upload_checked(store, prefix, rel_prefix, SIGNATURE_NAME, bundle, final.run_id)
    return final.model_copy(update={"files": [*final.files, statement_entry, bundle_entry]})


def _resume_or_refuse(store: Store, ref: ModelRef, run_id: str, actor: str) -> Manifest:
    """The manifest exists: this run's own (finish it) or another run's (delete our uploads, refuse)."""
    existing, _ = _manifest_with_digest(store, ref)
    if existing.run_id == run_id:
        finish_promotion(store, ref, actor)
        return existing
    _delete_prefix(store, artifact_prefix(ref, run_id))
    raise ConflictError(
        f"{ref} was already promoted by run {existing.run_id} (a concurrent or earlier run); this run "
        "promoted nothing and removed its own uploads"
    )


def promotion_finished(store: Store, ref: ModelRef, event_keys: list[str] | None = None) -> bool:
    """True when the promotion's audit event exists (its pointer step is done, moved or superseded).
    `event_keys`: the version's promote-event keys when the caller listed the audit log already."""
    _, digest = _manifest_with_digest(store, ref)
    return _audited(store, ref, digest, event_keys)


def _audited(store: Store, ref: ModelRef, digest: str, event_keys: list[str] | None = None) -> bool:
    """Reads only this version's promote events (their key names say so), the one whose key carries this
    manifest's digest first: a finished promotion costs one GET however long the model's audit log."""
    if event_keys is None:
        event_keys = promote_event_keys(store, ref.name).get(ref.version, [])
    for key in sorted(event_keys, key=lambda k: event_token(k) != digest[:8]):
        event = read_event(store, key, ref.name)
        if (
            event is not None
            and event.action == "promote"
            and event.version == ref.version
            and event.manifest_sha256 == digest
        ):
            return True
    return False


def finish_promotion(store: Store, ref: ModelRef, actor: str, trusted: TrustedKeys = NO_TRUST) -> bool:
    """Idempotent tail of a promotion, run by the promoting run and by anyone who finds it unfinished
    (a re-run, the sweep): removes objects a quantgate run left under promoted/<m>/<v>/ that the manifest
    does not list, moves current.json to this version unless a later promotion or rollback already moved
    it, and records the audit event. True when it had something to finish. With trusted keys, a manifest
    whose signature does not verify (one written by someone with bucket access only) is not finished."""
    manifest, digest = _manifest_with_digest(store, ref)
    if trusted.enforced and not _audited(store, ref, digest):
        signature = _check_signature(store, ref, manifest, trusted)
        if signature.status == "invalid":
            raise IntegrityError(
                f"refusing to finish the promotion of {ref} (pointer and audit event): {signature.line()}; "
                f"{SIGNATURE_FIX}"
            )
    _remove_leftovers(store, ref, manifest)
    if _audited(store, ref, digest):
        return False
    moved, previous = _advance_pointer(store, ref, manifest, digest)
    event = AuditEvent(
        action="promote",
        model=ref.name,
        version=ref.version,
        previous_version=previous,
        run_id=manifest.run_id,
        actor=actor,
        manifest_sha256=digest,
        files=manifest.files,
        pointer_moved=moved,
    )
    # One key per promotion (its promotion time and manifest digest), written create-only: two finishers
    # racing (a re-run and the sweep) record it once. The key sorts by promotion time.
    promoted_at = parse_time(manifest.promoted_at)
    at_ns = int(promoted_at.timestamp() * 1e9) if promoted_at else time.time_ns()
    try:
        _append_audit(store, event, at_ns=at_ns, token=digest[:8])
    except ConflictError:
        if _audited(store, ref, digest):
            return False  # the other finisher recorded it
        _append_audit(store, event)  # a stray object squats the key: record it under a fresh one
    return True


def _remove_leftovers(store: Store, ref: ModelRef, manifest: Manifest) -> None:
    """Delete what killed or losing runs uploaded under promoted/<m>/<v>/<run-id>/ and no manifest lists:
    only objects tagged with the run id of the prefix they are under. Anything else there (a team's
    signature or notes file) is not ours and stays."""
    keep = {manifest_key(ref)} | {promoted_key(ref, f.path) for f in manifest.files}
    base = promoted_prefix(ref)
    for obj in list(store.list(base)):
        if obj.key in keep or "/" not in obj.key.removeprefix(base):
            continue
        run_segment = obj.key.removeprefix(base).split("/", 1)[0]
        try:
            tagged = store.head(obj.key).metadata.get(RUN_METADATA)
        except NotFoundError:
            continue
        if tagged == run_segment:
            store.delete(obj.key)
