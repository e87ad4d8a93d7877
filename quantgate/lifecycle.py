"""A model version's life in storage: register → pull → (promote | reject). Every function takes an
`Store` and local paths; the key layout lives in registry.py.

Write order is what makes a crash harmless: data files first, each under a prefix of its own writer (an
upload id, a run id), the JSON record that makes them count (registration.json, manifest.json, the
rejection report) last and create-only. A reader that trusts only files named by a record never sees a
half-written version, and a writer that lost the race for the record deletes only its own prefix.

Every write can fail, including one whose effect landed while its answer was lost. So each step can be
repeated: a run recognises its own record (by run id or upload id) and carries on from it, and the tail of
a promotion (pointer, audit event) is finished by whoever finds it unfinished, without ever moving the
pointer back to an older promotion.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from quantgate.backends import Servable
from quantgate.bench import ServingProfile
from quantgate.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidModelError,
    NotFoundError,
    QuantgateError,
    StorageError,
)
from quantgate.heldout import pack_folder
from quantgate.registry import (
    AUDIT_NAME_RE,
    SIGNATURE_NAME,
    STATEMENT_NAME,
    AuditEvent,
    ExpectedMetric,
    FileEntry,
    Manifest,
    ModelRef,
    Outcome,
    Pointer,
    Registration,
    artifact_prefix,
    audit_key,
    audit_prefix,
    current_key,
    manifest_key,
    parse_registration_key,
    parse_time,
    promoted_key,
    promoted_prefix,
    registered_heldout_key,
    registered_model_key,
    registered_model_prefix,
    registration_key,
    rejection_files_prefix,
    rejection_key,
    run_prefix,
    runs_prefix,
    source_checksum,
    upload_prefix,
    utcnow,
)
from quantgate.signing import (
    SIGNATURE_FIX,
    SignatureCheck,
    Signer,
    TrustedKeys,
    check_promotion,
    signed_entries,
    statement_bytes,
    unverified_digests,
)
from quantgate.storage import sha256_bytes, sha256_file
from quantgate.store import RUN_METADATA, Store
from quantgate.tasktypes import check_profile, get_task_type
from quantgate.workspace import require_free_space

M = TypeVar("M", bound=BaseModel)
NO_TRUST = TrustedKeys()  # signatures not checked: quantgate's behaviour before signing (README, Guarantees)


def _json_bytes(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


def _put_json(
    store: Store,
    key: str,
    data: Any,
    *,
    create_only: bool = False,
    if_match: str | None = None,
    run_id: str | None = None,
) -> str:
    return store.put_bytes(
        key,
        _json_bytes(data),
        create_only=create_only,
        if_match=if_match,
        content_type="application/json",
        run_id=run_id,
    )


def _corrupt(store: Store, key: str, what: str, problem: str, fix: str) -> IntegrityError:
    return IntegrityError(f"s3://{store.bucket}/{key} is not a valid {what} ({problem}): {fix}")


def _parse_record(store: Store, key: str, raw: bytes, model: type[M], what: str, fix: str) -> M:
    """A stored JSON record, or a clear error naming its key and the way out (never a pydantic trace)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "document"
        problem = f"{exc.error_count()} problem(s), first: {where}: {first['msg']}"
        raise _corrupt(store, key, what, problem[:300], fix) from None


def _load_json(store: Store, key: str, what: str, fix: str) -> dict[str, Any]:
    raw = store.get_bytes(key)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(store, key, what, f"not JSON: {exc}"[:200], fix) from None
    if not isinstance(data, dict):
        raise _corrupt(store, key, what, "not a JSON object", fix)
    return data


def _delete_prefix(store: Store, prefix: str) -> None:
    for obj in list(store.list(prefix)):
        store.delete(obj.key)


_MANIFEST_FIX = (
    "restore it from the audit log's manifest_sha256 and a backup, or remove the version's promoted/ "
    "prefix and run the version again"
)
_POINTER_FIX = "point it at a promoted version again with `quantgate rollback MODEL --to VERSION`"


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
    store: Store,
    ref: ModelRef,
    model_dir: Path,
    heldout: Path,
    task: str,
    allow_pickle: bool = False,
    expect_metric: ExpectedMetric | None = None,
    profile: ServingProfile | None = None,
) -> Registration:
    task_type = get_task_type(task)
    task_type.check_model(model_dir, allow_pickle)
    check_profile(task_type, model_dir, profile)
    if heldout.is_dir():  # an image folder: uploaded as one deterministic tar
        with tempfile.TemporaryDirectory(prefix="quantgate-heldout-") as scratch:
            packed = pack_folder(heldout, Path(scratch))
            return register(store, ref, model_dir, packed, task, allow_pickle, expect_metric, profile)
    if not heldout.is_file():
        raise InvalidModelError(f"held-out file {heldout} does not exist")
    # Parsed before anything is uploaded: a file the task type cannot read (not UTF-8, not its format) or
    # that disagrees with the model (labels it lacks) is refused here.
    task_type.check_heldout(model_dir, task_type.read_heldout(heldout), allow_pickle)
    if store.exists(registration_key(ref)):
        raise ConflictError(f"{ref} is already registered: register a new version instead")
    # Every upload goes to a prefix of its own; registration.json (create-only) decides which one counts.
    upload_id = uuid.uuid4().hex[:16]
    try:
        entries = []
        for path in model_files(model_dir):
            rel = path.relative_to(model_dir).as_posix()
            digest = store.put_file(registered_model_key(ref, rel, upload_id), path)
            entries.append(FileEntry(path=rel, sha256=digest, size=path.stat().st_size))
        held_digest = store.put_file(registered_heldout_key(ref, heldout.name, upload_id), heldout)
        registration = Registration(
            model=ref.name,
            version=ref.version,
            task=task_type.name,
            heldout_format=task_type.heldout_format,
            files=entries,
            heldout=FileEntry(path=heldout.name, sha256=held_digest, size=heldout.stat().st_size),
            source_checksum=source_checksum(entries),
            upload_id=upload_id,
            expect_metric=expect_metric,
            profile=profile,
        )
        _put_json(store, registration_key(ref), registration, create_only=True)
    except ConflictError:
        if _registered_upload(store, ref) == upload_id:  # our own write landed; its answer was lost
            return load_registration(store, ref)
        _cleanup_upload(store, ref, upload_id)
        raise ConflictError(f"{ref} was registered concurrently by someone else: use a new version") from None
    except BaseException:
        if _registered_upload(store, ref, quiet=True) != upload_id:
            _cleanup_upload(store, ref, upload_id)
        raise
    return registration


def _registered_upload(store: Store, ref: ModelRef, quiet: bool = False) -> str | None:
    """The upload id the stored registration.json names (None without one)."""
    try:
        return load_registration(store, ref).upload_id
    except QuantgateError:
        if quiet:
            return None
        raise


def _cleanup_upload(store: Store, ref: ModelRef, upload_id: str) -> None:
    """Best effort: a failed or losing registration removes its own upload, and only that."""
    # What cannot be deleted stays under uploads/<id>/, which no registration names: never read.
    with contextlib.suppress(StorageError):
        _delete_prefix(store, upload_prefix(ref, upload_id))


def load_registration(store: Store, ref: ModelRef) -> Registration:
    try:
        raw = store.get_bytes(registration_key(ref))
    except NotFoundError:
        store.require_bucket()  # a missing bucket is not "not registered"
        raise NotFoundError(
            f"{ref} is not registered (no {registration_key(ref)} in bucket {store.bucket!r}): "
            f"run `quantgate register {ref.name} {ref.version} --model-dir ... --heldout ...` or "
            "`quantgate list` to see registered versions"
        ) from None
    registration = _parse_record(
        store,
        registration_key(ref),
        raw,
        Registration,
        "registration",
        "register the model again as a new version",
    )
    if registration.ref != ref:
        raise IntegrityError(f"{registration_key(ref)} describes {registration.ref}, not {ref}")
    return registration


def list_registered(store: Store, model: str | None = None) -> list[ModelRef]:
    prefix = registered_model_prefix(model)
    refs = [parse_registration_key(obj.key) for obj in store.list(prefix)]
    return sorted({r for r in refs if r is not None}, key=lambda r: (r.name, r.version))


@dataclass
class RunHistory:
    failed: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Failed runs; an unreadable run report counts as one (it never said it succeeded)."""
        return self.failed + len(self.unreadable)


def run_history(store: Store, ref: ModelRef) -> RunHistory:
    history = RunHistory()
    for obj in store.list(runs_prefix(ref)):
        if not obj.key.endswith("/report.json") or obj.key.count("/") != 4:
            continue
        try:
            report = _load_json(store, obj.key, "run report", "delete it")
        except (IntegrityError, NotFoundError):
            history.unreadable.append(obj.key)
            continue
        if report.get("outcome") == "failed":
            history.failed += 1
    return history


def failed_runs(store: Store, ref: ModelRef) -> int:
    return run_history(store, ref).failures


@dataclass
class SweepPlan:
    """What the registry sweep should run, and what it skipped and why (one line per version)."""

    pending: list[ModelRef] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def sweep_plan(store: Store, max_failures: int) -> SweepPlan:
    """Registered versions with no decision, and promotions whose tail (pointer, audit) is unfinished,
    oldest-named first; versions that failed `max_failures` times are skipped. One unreadable object
    skips its own version (and says so), never the whole sweep."""
    plan = SweepPlan()
    for ref in list_registered(store):
        try:
            decision = decision_of(store, ref)
            if decision == "promoted":
                if not promotion_finished(store, ref):
                    plan.pending.append(ref)
                continue
            if decision is not None:
                continue
            history = run_history(store, ref)
            if history.unreadable:
                plan.skipped[str(ref)] = f"unreadable run report(s) counted as failed: {history.unreadable}"
            if history.failures >= max_failures:
                plan.skipped[str(ref)] = f"{history.failures} failed run(s) (limit {max_failures})"
                continue
            plan.pending.append(ref)
        except QuantgateError as exc:
            plan.skipped[str(ref)] = f"{type(exc).__name__}: {exc}"
    return plan


def undecided(store: Store, max_failures: int) -> list[ModelRef]:
    return sweep_plan(store, max_failures).pending


# --- pull --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PulledVersion:
    registration: Registration
    model_dir: Path
    heldout_path: Path


def _download_verified(
    store: Store, key: str, dest: Path, entry: FileEntry, what: str = "registration"
) -> None:
    store.get_file(key, dest, max_bytes=entry.size)
    actual = sha256_file(dest)
    if actual != entry.sha256:
        dest.unlink()
        way_out = (
            "register the model again as a new version"
            if what == "registration"
            else "the promotion was tampered with or damaged: roll back or promote another version"
        )
        raise IntegrityError(
            f"{key} has sha256 {actual[:12]}… but its {what} says {entry.sha256[:12]}…: "
            f"the stored file changed after {what}; {way_out}"
        )


# Local space a run needs, from the registration's sizes: the download itself, the FP32 ONNX export (about
# the size of the weights), and the candidates (INT8 is a quarter of FP32; up to 8 of them, FP16 half).
RUN_SPACE_FACTOR = 4


def pull(store: Store, ref: ModelRef, dest: Path) -> PulledVersion:
    registration = load_registration(store, ref)
    model_bytes = sum(f.size for f in registration.files)
    require_free_space(
        dest, RUN_SPACE_FACTOR * model_bytes + 2 * registration.heldout.size, f"the run of {ref}"
    )
    model_dir = dest / "model"
    for entry in registration.files:
        _download_verified(store, registration.model_key(entry.path), model_dir / entry.path, entry)
    heldout_path = dest / "heldout" / registration.heldout.path
    _download_verified(store, registration.heldout_key(), heldout_path, registration.heldout)
    return PulledVersion(registration, model_dir, heldout_path)


# --- decisions -------------------------------------------------------------------------------------------


def decision_of(store: Store, ref: ModelRef) -> Outcome | None:
    if store.exists(manifest_key(ref)):
        return "promoted"
    if store.exists(rejection_key(ref)):
        return "rejected"
    return None


def load_manifest(store: Store, ref: ModelRef) -> Manifest:
    return _manifest_with_digest(store, ref)[0]


def _manifest_with_digest(store: Store, ref: ModelRef) -> tuple[Manifest, str]:
    raw = store.get_bytes(manifest_key(ref))
    return _parse_manifest(store, ref, raw), sha256_bytes(raw)


def _parse_manifest(store: Store, ref: ModelRef, raw: bytes) -> Manifest:
    key = manifest_key(ref)
    manifest = _parse_record(store, key, raw, Manifest, "manifest", _MANIFEST_FIX)
    if (manifest.model, manifest.version) != (ref.name, ref.version):
        raise _corrupt(
            store, key, "manifest", f"it describes {manifest.model}@{manifest.version}", _MANIFEST_FIX
        )
    return manifest


def load_rejection(store: Store, ref: ModelRef) -> dict[str, Any]:
    return _load_json(
        store, rejection_key(ref), "rejection record", "delete it and run the version again to re-decide"
    )


def load_decision_report(store: Store, ref: ModelRef) -> dict[str, Any]:
    """The report of the run that decided a version (promoted or rejected)."""
    decision = decision_of(store, ref)
    if decision == "promoted":
        key = promoted_key(ref, "report.json")
        raw = read_promoted_file(store, ref, "report.json")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _corrupt(store, key, "run report", "not JSON", _MANIFEST_FIX) from None
    if decision == "rejected":
        return load_rejection(store, ref)
    store.require_bucket()
    raise NotFoundError(f"{ref} has no decision yet: run `quantgate run {ref.name} {ref.version}`")


def read_promoted_file(store: Store, ref: ModelRef, name: str) -> bytes:
    """A promoted file by its name, found through the manifest (the only way readers should look)."""
    manifest = load_manifest(store, ref)
    for entry in manifest.files:
        if entry.path.rsplit("/", 1)[-1] == name or entry.path.endswith("/" + name):
            data = store.get_bytes(promoted_key(ref, entry.path))
            if sha256_bytes(data) != entry.sha256:
                raise IntegrityError(
                    f"{ref}: {entry.path} does not match its manifest checksum: the promoted file was "
                    f"changed or damaged; `quantgate verify {ref.name} {ref.version}` lists every file"
                )
            return data
    raise NotFoundError(f"{ref} has no promoted file {name!r}")


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
    try:
        _put_json(store, manifest_key(ref), final, create_only=True, run_id=manifest.run_id)
    except ConflictError:
        return _resume_or_refuse(store, ref, manifest.run_id, actor)
    finish_promotion(store, ref, actor)
    return final


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


def promotion_finished(store: Store, ref: ModelRef) -> bool:
    """True when the promotion's audit event exists (its pointer step is done, moved or superseded)."""
    _, digest = _manifest_with_digest(store, ref)
    return _audited(store, ref, digest)


def _audited(store: Store, ref: ModelRef, digest: str) -> bool:
    return any(
        e.action == "promote" and e.version == ref.version and e.manifest_sha256 == digest
        for e in audit_log(store, ref.name)
    )


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


def _load_pointer(store: Store, model: str) -> tuple[Pointer, str] | None:
    key = current_key(model)
    found = store.get_with_etag(key)
    if found is None:
        return None
    return _parse_record(store, key, found[0], Pointer, "pointer", _POINTER_FIX), found[1]


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
        if not AUDIT_NAME_RE.fullmatch(obj.key.removeprefix(prefix)):
            log.skipped.append(obj.key)
            continue
        try:
            event = AuditEvent.model_validate_json(store.get_bytes(obj.key))
        except (ValidationError, NotFoundError):
            log.skipped.append(obj.key)
            continue
        if event.model != model:
            log.skipped.append(obj.key)
            continue
        log.events.append(event)
    return log


def audit_log(store: Store, model: str) -> list[AuditEvent]:
    return read_audit_log(store, model).events


def current(store: Store, model: str) -> Pointer | None:
    found = _load_pointer(store, model)
    return found[0] if found else None


# --- verify and pull ----------------------------------------------------------------------------------


class FileCheck(BaseModel):
    path: str
    status: Literal["ok", "missing", "size", "sha256"]
    detail: str = ""


class Verification(BaseModel):
    model: str
    version: str
    manifest_sha256: str
    files: list[FileCheck]
    problems: list[str]
    signature: SignatureCheck = SignatureCheck(status="unsigned")

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "; ".join(self.problems[:5]) + (
            f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        )


def verify_promotion(
    store: Store, ref: ModelRef, deep: bool = False, trusted: TrustedKeys = NO_TRUST
) -> Verification:
    """Check a promotion in place: the manifest parses and matches the digest its audit event (and the
    pointer, when it names this version) recorded; every file it lists exists with its size and sha256
    (the checksum the server stored at upload, or the bytes themselves with `deep`); and, with trusted
    keys, its signature verifies and covers exactly the manifest's files and content."""
    return _verify(store, ref, deep, trusted)[0]


def _verify(
    store: Store, ref: ModelRef, deep: bool, trusted: TrustedKeys
) -> tuple[Verification, Manifest, bytes]:
    """The verification, and the manifest (parsed and raw) it was made on: callers act on these bytes,
    never on a second read an attacker could swap in between."""
    if not store.exists(manifest_key(ref)):
        store.require_bucket()
        raise NotFoundError(f"{ref} was never promoted: `quantgate list {ref.name}` shows promoted versions")
    raw = store.get_bytes(manifest_key(ref))
    manifest = _parse_manifest(store, ref, raw)
    digest = sha256_bytes(raw)
    problems: list[str] = []
    recorded = {e.manifest_sha256 for e in audit_log(store, ref.name) if e.version == ref.version}
    if recorded and digest not in recorded:
        problems.append(
            f"manifest.json changed after it was promoted (sha256 {digest[:12]}… not in the audit log)"
        )
    pointer = current(store, ref.name)
    if pointer is not None and pointer.version == ref.version and pointer.manifest_sha256 != digest:
        problems.append(
            f"current.json names manifest sha256 {pointer.manifest_sha256[:12]}…, found {digest[:12]}…"
        )
    checks = []
    for entry in manifest.files:
        key = promoted_key(ref, entry.path)
        try:
            head = store.head(key)
        except NotFoundError:
            checks.append(FileCheck(path=entry.path, status="missing", detail=f"s3://{store.bucket}/{key}"))
            continue
        if head.size != entry.size:
            checks.append(
                FileCheck(
                    path=entry.path, status="size", detail=f"{head.size} bytes, manifest says {entry.size}"
                )
            )
            continue
        actual = sha256_bytes(store.get_bytes(key)) if deep or head.sha256 is None else head.sha256
        if actual != entry.sha256:
            checks.append(
                FileCheck(
                    path=entry.path,
                    status="sha256",
                    detail=f"{actual[:12]}…, manifest says {entry.sha256[:12]}…",
                )
            )
            continue
        checks.append(FileCheck(path=entry.path, status="ok"))
    problems += [f"{c.path}: {c.status} ({c.detail})" for c in checks if c.status != "ok"]
    signature = _check_signature(store, ref, manifest, trusted)
    if signature.status == "invalid":
        problems.insert(0, signature.line())
    verification = Verification(
        model=ref.name,
        version=ref.version,
        manifest_sha256=digest,
        files=checks,
        problems=problems,
        signature=signature,
    )
    return verification, manifest, raw


def _check_signature(store: Store, ref: ModelRef, manifest: Manifest, trusted: TrustedKeys) -> SignatureCheck:
    """The promotion's signature against the trusted keys; model.sig and promotion.json are read here
    (small), the other files' bytes are checked against the manifest by the caller."""
    _, statement, signature = signed_entries(manifest)

    def read(entry: FileEntry | None) -> bytes | None:
        if entry is None:
            return None
        try:
            return store.get_bytes(promoted_key(ref, entry.path))
        except NotFoundError:
            return None

    return check_promotion(manifest, read(signature), read(statement), trusted)


def _require_verified(
    store: Store, ref: ModelRef, action: str, trusted: TrustedKeys, deep: bool = False
) -> tuple[Manifest, bytes]:
    verification, manifest, raw = _verify(store, ref, deep, trusted)
    if verification.signature.status == "invalid":
        raise IntegrityError(
            f"refusing to {action} {ref}: {verification.signature.line()}; {SIGNATURE_FIX}; "
            f"`quantgate verify {ref.name} {ref.version}` shows every file"
        )
    if not verification.ok:
        raise IntegrityError(
            f"refusing to {action} {ref}: its promotion fails verification ({verification.summary()}); "
            f"`quantgate verify {ref.name} {ref.version}` shows every file; choose another version"
        )
    return manifest, raw


def local_name(entry: FileEntry) -> str:
    """A promoted file's path without the run prefix it is stored under."""
    return entry.path.split("/", 1)[1] if "/" in entry.path else entry.path


def pull_promotion(
    store: Store, model: str, version: str | None, dest: Path, trusted: TrustedKeys = NO_TRUST
) -> tuple[Manifest, list[Path]]:
    """Download a promotion (default: the one current.json names) into `dest`, every file checked against
    the manifest's sha256 after download, and the manifest against the signature with `trusted` keys.
    Files land in a hidden folder beside `dest` and are moved into place only when all of them verified:
    a tampered, unsigned (when keys are trusted) or half-written promotion leaves `dest` untouched."""
    expected_digest = None
    if version is None:
        pointer = current(store, model)
        if pointer is None:
            store.require_bucket()
            raise NotFoundError(f"model {model!r} has no current promoted version: promote one first")
        version, expected_digest = pointer.version, pointer.manifest_sha256
    ref = ModelRef(name=model, version=version)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"{dest} exists and is not an empty folder: pull into a new or empty folder")
    manifest, raw = _require_verified(store, ref, "pull", trusted)
    if expected_digest is not None and sha256_bytes(raw) != expected_digest:
        raise IntegrityError(
            f"{ref}: manifest.json does not match the sha256 current.json names: it changed after promotion"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        paths = []
        for entry in manifest.files:
            target = staging / local_name(entry)
            _download_verified(store, promoted_key(ref, entry.path), target, entry, what="promotion")
            paths.append(dest / local_name(entry))
        (staging / "manifest.json").write_bytes(raw)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, [*paths, dest / "manifest.json"]


@dataclass(frozen=True)
class Champion:
    """The promoted version serving now, pulled and verified, to be judged beside a new version."""

    version: str
    manifest: Manifest
    model_path: Path
    tokenizer_dir: Path  # the promoted assets folder (tokenizer or preprocessor)
    runtime: str = "onnxruntime"

    @property
    def servable(self) -> Servable:
        return Servable(self.model_path, self.runtime)


def pull_champion(
    store: Store, model: str, task: str, dest: Path, trusted: TrustedKeys = NO_TRUST
) -> Champion | None:
    """The model's current promoted version, every file verified (None for a first version, or when
    the current one is of another task type)."""
    pointer = current(store, model)
    if pointer is None:
        return None
    manifest, _ = pull_promotion(store, model, pointer.version, dest, trusted)
    if manifest.task != task:
        return None
    from quantgate.serving import servable_in

    try:
        servable = servable_in(dest, manifest)
    except (ValidationError, ConfigError):
        return None  # promoted by another tool, or an older recipe schema: nothing to run it with
    return Champion(
        version=pointer.version,
        manifest=manifest,
        model_path=servable.path,
        tokenizer_dir=dest / "tokenizer",
        runtime=servable.runtime,
    )


# --- rollback and reject ------------------------------------------------------------------------------


def rollback(
    store: Store, model: str, to_version: str | None, actor: str, trusted: TrustedKeys = NO_TRUST
) -> AuditEvent:
    """Point current.json back at an earlier promoted version (default: the one promoted before the
    current one), after verifying every file of its manifest (and, with trusted keys, its signature and
    every file's bytes). One compare-and-swap against the pointer as read: if it moved meanwhile, nothing
    changes and the operator is told. Only the pointer moves."""
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
        previous_version=pointer.version,
    )
    try:
        _put_json(store, current_key(model), new, if_match=etag)
    except ConflictError:
        raise ConflictError(
            f"current.json of {model!r} changed while rolling back (another promotion or rollback): "
            "check `quantgate list` and run the rollback again"
        ) from None
    event = AuditEvent(
        action="rollback",
        model=model,
        version=ref.version,
        previous_version=pointer.version,
        run_id=None,
        actor=actor,
        manifest_sha256=digest,
        files=manifest.files,
    )
    _append_audit(store, event)
    return event


def reject(
    store: Store,
    ref: ModelRef,
    report: dict[str, Any],
    parity: dict[str, Any],
    plots: dict[str, Path] | None = None,
) -> str:
    """Record a rejection where a person looks for it: rejected/<m>/<v>/. Nothing goes to promoted/.
    The side files go under the run's own prefix and the create-only record names them, so concurrent
    rejections never mix one run's record with another's plots."""
    run_id = str(report["run_id"])
    prefix = rejection_files_prefix(ref, run_id)
    side: list[FileEntry] = []
    parity_bytes = _json_bytes(parity)
    digest = _put_json(store, prefix + "parity_report.json", parity, run_id=run_id)
    side.append(FileEntry(path=f"{run_id}/parity_report.json", sha256=digest, size=len(parity_bytes)))
    for name, plot in sorted((plots or {}).items()):
        digest = store.put_file(prefix + name, plot, run_id=run_id)
        side.append(FileEntry(path=f"{run_id}/{name}", sha256=digest, size=plot.stat().st_size))
    record = {**report, "side_files": [f.model_dump() for f in side]}
    try:
        _put_json(store, rejection_key(ref), record, create_only=True, run_id=run_id)
    except ConflictError:
        existing = load_rejection(store, ref)
        if existing.get("run_id") == run_id:  # our own write landed; its answer was lost
            return rejection_key(ref)
        _delete_prefix(store, prefix)
        raise ConflictError(
            f"{ref} was decided by a concurrent run ({existing.get('run_id')}); see `quantgate report`"
        ) from None
    return rejection_key(ref)


def write_data_docs(store: Store, ref: ModelRef, run_id: str, docs_dir: Path, pages: list[str]) -> str:
    """The held-out validation's GX Data Docs (HTML pages only; they load their styles from a CDN) under
    the run's own prefix. Returns the key of the site's index page."""
    prefix = f"{run_prefix(ref, run_id)}data_docs/"
    for page in pages:
        store.put_file(prefix + page, docs_dir / page)
    return prefix + "index.html"


def write_run_report(store: Store, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    key = f"{run_prefix(ref, run_id)}report.json"
    try:
        _put_json(store, key, report, run_id=run_id)
    except StorageError:
        # The run report is best effort: it must never hide the error that ended the run.
        return ""
    return key
