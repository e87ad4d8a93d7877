"""A model version's life in storage: register → pull → (promote | reject). Every function takes an
`ObjectStore` and local paths; the key layout lives in registry.py.

Write order is what makes a crash harmless: data files first, the JSON record that makes them count
(registration.json, manifest.json, the rejection report) last and create-only. A reader that trusts only
files named by a record never sees a half-written version.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from quantgate.errors import ConflictError, IntegrityError, InvalidModelError, NotFoundError, StorageError
from quantgate.export import check_model_folder
from quantgate.heldout import read_utf8
from quantgate.registry import (
    AuditEvent,
    FileEntry,
    Manifest,
    ModelRef,
    Outcome,
    Pointer,
    Registration,
    artifact_prefix,
    audit_prefix,
    current_key,
    manifest_key,
    parse_registration_key,
    promoted_key,
    promoted_prefix,
    registered_heldout_key,
    registered_model_key,
    registration_key,
    rejected_prefix,
    rejection_key,
    run_prefix,
    source_checksum,
)
from quantgate.storage import ObjectStore, sha256_bytes, sha256_file
from quantgate.tasktypes import get_task_type


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


def _put_json(
    store: ObjectStore, key: str, data: Any, *, create_only: bool = False, if_match: str | None = None
) -> str:
    return store.put_bytes(
        key, _json_bytes(data), create_only=create_only, if_match=if_match, content_type="application/json"
    )


def model_files(model_dir: Path) -> list[Path]:
    """Every regular file of a model folder, hidden files skipped, links refused (they could point
    anywhere on the registering machine)."""
    if not model_dir.is_dir():
        raise InvalidModelError(f"model folder {model_dir} does not exist or is not a folder")
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise InvalidModelError(f"{rel} in {model_dir} is a symbolic link: copy the real file in")
        if path.is_file():
            files.append(path)
    return files


# --- register ----------------------------------------------------------------------------------------------


def register(
    store: ObjectStore, ref: ModelRef, model_dir: Path, heldout: Path, task: str, allow_pickle: bool = False
) -> Registration:
    task_type = get_task_type(task)
    check_model_folder(model_dir, allow_pickle)
    if not heldout.is_file():
        raise InvalidModelError(f"held-out file {heldout} does not exist")
    read_utf8(heldout)  # refuse a non-UTF-8 file before anything is uploaded
    if store.exists(registration_key(ref)):
        raise ConflictError(f"{ref} is already registered: register a new version instead")
    entries = []
    for path in model_files(model_dir):
        rel = path.relative_to(model_dir).as_posix()
        digest = store.put_file(registered_model_key(ref, rel), path)
        entries.append(FileEntry(path=rel, sha256=digest, size=path.stat().st_size))
    held_digest = store.put_file(registered_heldout_key(ref, heldout.name), heldout)
    registration = Registration(
        model=ref.name,
        version=ref.version,
        task=task_type.name,
        heldout_format=task_type.heldout_format,
        files=entries,
        heldout=FileEntry(path=heldout.name, sha256=held_digest, size=heldout.stat().st_size),
        source_checksum=source_checksum(entries),
    )
    try:
        _put_json(store, registration_key(ref), registration, create_only=True)
    except ConflictError:
        raise ConflictError(f"{ref} was registered concurrently by someone else: use a new version") from None
    return registration


def load_registration(store: ObjectStore, ref: ModelRef) -> Registration:
    try:
        raw = store.get_bytes(registration_key(ref))
    except NotFoundError:
        raise NotFoundError(
            f"{ref} is not registered (no {registration_key(ref)} in bucket {store.bucket!r}): "
            f"run `quantgate register {ref.name} {ref.version} --model-dir ... --heldout ...` or "
            "`quantgate list` to see registered versions"
        ) from None
    try:
        registration = Registration.model_validate_json(raw)
    except ValidationError as exc:
        raise IntegrityError(
            f"{registration_key(ref)} is not a valid registration: {exc.error_count()} errors"
        ) from None
    if registration.ref != ref:
        raise IntegrityError(f"{registration_key(ref)} describes {registration.ref}, not {ref}")
    return registration


def list_registered(store: ObjectStore, model: str | None = None) -> list[ModelRef]:
    prefix = f"registered/{model}/" if model else "registered/"
    refs = [parse_registration_key(obj.key) for obj in store.list(prefix)]
    return sorted({r for r in refs if r is not None}, key=lambda r: (r.name, r.version))


def failed_runs(store: ObjectStore, ref: ModelRef) -> int:
    prefix = f"runs/{ref.name}/{ref.version}/"
    return sum(
        1
        for obj in store.list(prefix)
        if obj.key.endswith("/report.json")
        and json.loads(store.get_bytes(obj.key)).get("outcome") == "failed"
    )


def undecided(store: ObjectStore, max_failures: int) -> list[ModelRef]:
    """Registered versions with no decision, oldest-named first, skipping those that failed too often."""
    return [
        ref
        for ref in list_registered(store)
        if decision_of(store, ref) is None and failed_runs(store, ref) < max_failures
    ]


# --- pull --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulledVersion:
    registration: Registration
    model_dir: Path
    heldout_path: Path


def _download_verified(store: ObjectStore, key: str, dest: Path, entry: FileEntry) -> None:
    store.get_file(key, dest)
    actual = sha256_file(dest)
    if actual != entry.sha256:
        dest.unlink()
        raise IntegrityError(
            f"{key} has sha256 {actual[:12]}… but its registration says {entry.sha256[:12]}…: "
            "the stored file changed after registration; register the model again as a new version"
        )


def pull(store: ObjectStore, ref: ModelRef, dest: Path) -> PulledVersion:
    registration = load_registration(store, ref)
    model_dir = dest / "model"
    for entry in registration.files:
        _download_verified(store, registered_model_key(ref, entry.path), model_dir / entry.path, entry)
    heldout_path = dest / "heldout" / registration.heldout.path
    _download_verified(
        store, registered_heldout_key(ref, registration.heldout.path), heldout_path, registration.heldout
    )
    return PulledVersion(registration, model_dir, heldout_path)


# --- decisions -------------------------------------------------------------------------------------------


def decision_of(store: ObjectStore, ref: ModelRef) -> Outcome | None:
    if store.exists(manifest_key(ref)):
        return "promoted"
    if store.exists(rejection_key(ref)):
        return "rejected"
    return None


def load_manifest(store: ObjectStore, ref: ModelRef) -> Manifest:
    return Manifest.model_validate_json(store.get_bytes(manifest_key(ref)))


def load_decision_report(store: ObjectStore, ref: ModelRef) -> dict[str, Any]:
    """The report of the run that decided a version (promoted or rejected)."""
    decision = decision_of(store, ref)
    if decision == "promoted":
        return json.loads(read_promoted_file(store, ref, "report.json"))
    if decision == "rejected":
        return json.loads(store.get_bytes(rejection_key(ref)))
    raise NotFoundError(f"{ref} has no decision yet: run `quantgate run {ref.name} {ref.version}`")


def read_promoted_file(store: ObjectStore, ref: ModelRef, name: str) -> bytes:
    """A promoted file by its name, found through the manifest (the only way readers should look)."""
    manifest = load_manifest(store, ref)
    for entry in manifest.files:
        if entry.path.rsplit("/", 1)[-1] == name or entry.path.endswith("/" + name):
            data = store.get_bytes(promoted_key(ref, entry.path))
            if sha256_bytes(data) != entry.sha256:
                raise IntegrityError(f"{ref}: {entry.path} does not match its manifest checksum")
            return data
    raise NotFoundError(f"{ref} has no promoted file {name!r}")


def promote(
    store: ObjectStore, manifest: Manifest, local_files: dict[str, Path], report: dict[str, Any], actor: str
) -> Manifest:
    """Promote one version: the guarantees (README, "Guarantees") rest on this order.

    1. upload every file under promoted/<m>/<v>/<run-id>/ (a prefix no other run writes), with its sha256
       checked by the server on receipt and compared again after;
    2. write manifest.json create-only: the commit point. Losing that race raises ConflictError after
       this run's own uploads are deleted;
    3. finish: delete leftovers of killed runs, swap promoted/<m>/current.json, append the audit event.
    `local_files` maps a path under the run prefix to a local file; report.json is added here."""
    ref = ModelRef(name=manifest.model, version=manifest.version)
    if store.exists(manifest_key(ref)):
        raise ConflictError(f"{ref} is already promoted: it is never overwritten; register a new version")
    prefix = artifact_prefix(ref, manifest.run_id)
    rel_prefix = prefix.removeprefix(promoted_prefix(ref))
    entries = []
    for rel, path in sorted(local_files.items()):
        key = prefix + rel
        digest = store.put_file(key, path)
        stored = store.sha256_of(key)
        if stored is not None and stored != digest:
            raise IntegrityError(f"{key} was stored with sha256 {stored[:12]}…, expected {digest[:12]}…")
        entries.append(FileEntry(path=rel_prefix + rel, sha256=digest, size=path.stat().st_size))
    report_bytes = _json_bytes(report)
    report_digest = _put_json(store, prefix + "report.json", report)
    entries.append(FileEntry(path=rel_prefix + "report.json", sha256=report_digest, size=len(report_bytes)))
    final = manifest.model_copy(update={"files": entries})
    try:
        _put_json(store, manifest_key(ref), final, create_only=True)
    except ConflictError:
        for obj in list(store.list(prefix)):
            store.delete(obj.key)
        raise ConflictError(f"{ref} was promoted by a concurrent run; this run promoted nothing") from None
    finish_promotion(store, ref, actor)
    return final


def _manifest_with_digest(store: ObjectStore, ref: ModelRef) -> tuple[Manifest, str]:
    raw = store.get_bytes(manifest_key(ref))
    return Manifest.model_validate_json(raw), sha256_bytes(raw)


def finish_promotion(store: ObjectStore, ref: ModelRef, actor: str) -> bool:
    """Idempotent tail of a promotion, also run when a decided version is run again: removes objects
    under promoted/<m>/<v>/ that the manifest does not list (left by a killed run), then points
    current.json at this version and records the audit event unless that was already done.
    True when it had something to finish."""
    manifest, digest = _manifest_with_digest(store, ref)
    keep = {manifest_key(ref)} | {promoted_key(ref, f.path) for f in manifest.files}
    for obj in list(store.list(promoted_prefix(ref))):
        if obj.key not in keep:
            store.delete(obj.key)
    if any(e.action == "promote" and e.version == ref.version for e in audit_log(store, ref.name)):
        return False
    previous = _swap_pointer(store, ref, digest, manifest.run_id, "promote")
    _append_audit(
        store,
        AuditEvent(
            action="promote",
            model=ref.name,
            version=ref.version,
            previous_version=previous,
            run_id=manifest.run_id,
            actor=actor,
            manifest_sha256=digest,
            files=manifest.files,
        ),
    )
    return True


def _swap_pointer(store: ObjectStore, ref: ModelRef, digest: str, run_id: str, action: str) -> str | None:
    """Compare-and-swap current.json (If-Match on its ETag, If-None-Match for the first); retried when
    another promotion or rollback of the same model moved it in between."""
    key = current_key(ref.name)
    for _ in range(10):
        found = store.get_with_etag(key)
        previous = Pointer.model_validate_json(found[0]).version if found else None
        pointer = Pointer(
            model=ref.name, version=ref.version, manifest_sha256=digest, run_id=run_id, action=action
        )  # type: ignore[arg-type]
        try:
            _put_json(store, key, pointer, create_only=found is None, if_match=found[1] if found else None)
        except ConflictError:
            continue
        return previous
    raise ConflictError(f"{key} kept changing under concurrent updates; run the command again")


def _append_audit(store: ObjectStore, event: AuditEvent) -> str:
    # Keys sort in time order: a zero-padded nanosecond clock, then a random tie-breaker.
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-{event.action}-{event.version}.json"
    key = audit_prefix(event.model) + name
    _put_json(store, key, event, create_only=True)
    return key


def audit_log(store: ObjectStore, model: str) -> list[AuditEvent]:
    """Every promotion and rollback of a model, oldest first (keys sort by time)."""
    return [AuditEvent.model_validate_json(store.get_bytes(o.key)) for o in store.list(audit_prefix(model))]


def current(store: ObjectStore, model: str) -> Pointer | None:
    found = store.get_with_etag(current_key(model))
    return Pointer.model_validate_json(found[0]) if found else None


def rollback(store: ObjectStore, model: str, to_version: str | None, actor: str) -> AuditEvent:
    """Point current.json back at an earlier promoted version (default: the one promoted before the
    current one). Only the pointer moves: every version's files stay as they were."""
    pointer = current(store, model)
    if pointer is None:
        raise NotFoundError(f"model {model!r} has no promoted version to roll back")
    if to_version is None:
        promoted = [e.version for e in audit_log(store, model) if e.action == "promote"]
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
    manifest, digest = _manifest_with_digest(store, ref)
    previous = _swap_pointer(store, ref, digest, manifest.run_id, "rollback")
    event = AuditEvent(
        action="rollback",
        model=model,
        version=ref.version,
        previous_version=previous,
        run_id=None,
        actor=actor,
        manifest_sha256=digest,
        files=manifest.files,
    )
    _append_audit(store, event)
    return event


def reject(
    store: ObjectStore,
    ref: ModelRef,
    report: dict[str, Any],
    parity: dict[str, Any],
    plots: dict[str, Path] | None = None,
) -> str:
    """Record a rejection where a person looks for it: rejected/<m>/<v>/. Nothing goes to promoted/."""
    _put_json(store, f"{rejected_prefix(ref)}parity_report.json", parity)
    for name, plot in (plots or {}).items():
        store.put_file(f"{rejected_prefix(ref)}{name}", plot)
    try:
        _put_json(store, rejection_key(ref), report, create_only=True)
    except ConflictError:
        raise ConflictError(f"{ref} was decided by a concurrent run; see `quantgate report`") from None
    return rejection_key(ref)


def write_data_docs(store: ObjectStore, ref: ModelRef, run_id: str, docs_dir: Path, pages: list[str]) -> str:
    """The held-out validation's GX Data Docs (HTML pages only; they load their styles from a CDN) under
    the run's own prefix. Returns the key of the site's index page."""
    prefix = f"{run_prefix(ref, run_id)}data_docs/"
    for page in pages:
        store.put_file(prefix + page, docs_dir / page)
    return prefix + "index.html"


def write_run_report(store: ObjectStore, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    key = f"{run_prefix(ref, run_id)}report.json"
    try:
        _put_json(store, key, report)
    except StorageError:
        # The run report is best effort: it must never hide the error that ended the run.
        return ""
    return key
