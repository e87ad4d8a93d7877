"""Register a model version: its files and held-out set under an upload id of their own, then
registration.json (create-only) that makes that upload count."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path

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
from quantgate.lifecycle._records import _delete_prefix, _parse_record, _put_json
from quantgate.registry import (
    ExpectedMetric,
    FileEntry,
    ModelRef,
    Registration,
    parse_registration_key,
    registered_heldout_key,
    registered_model_key,
    registered_model_prefix,
    registration_key,
    source_checksum,
    upload_prefix,
)
from quantgate.store import Store, TransferProgress
from quantgate.tasktypes import check_profile, get_task_type


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


def _upload(store: Store, key: str, path: Path, name: str, progress: TransferProgress | None) -> str:
    watch = progress(name, path.stat().st_size) if progress is not None else None
    # Passed only when asked for: a Store written before put_file took `progress` keeps working.
    return store.put_file(key, path, **({"progress": watch} if watch else {}))


def register(
    store: Store,
    ref: ModelRef,
    model_dir: Path,
    heldout: Path,
    task: str,
    allow_pickle: bool = False,
    expect_metric: ExpectedMetric | None = None,
    profile: ServingProfile | None = None,
    progress: TransferProgress | None = None,
) -> Registration:
    """Upload the model folder and the held-out set, then write registration.json (create-only).
    `progress`, given a file's name and size, returns the callback its upload reports to (the CLI's bar)."""
    task_type = get_task_type(task)
    task_type.check_model(model_dir, allow_pickle)
    check_profile(task_type, model_dir, profile)
    if heldout.is_dir():  # an image folder: uploaded as one deterministic tar
        with tempfile.TemporaryDirectory(prefix="quantgate-heldout-") as scratch:
            packed = pack_folder(heldout, Path(scratch))
            return register(
                store, ref, model_dir, packed, task, allow_pickle, expect_metric, profile, progress
            )
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
            digest = _upload(store, registered_model_key(ref, rel, upload_id), path, rel, progress)
            entries.append(FileEntry(path=rel, sha256=digest, size=path.stat().st_size))
        held_key = registered_heldout_key(ref, heldout.name, upload_id)
        held_digest = _upload(store, held_key, heldout, heldout.name, progress)
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
    """Registered versions (those with a registration.json), by model then version. Costs a page per
    1,000 models and, per model, a page per ~500 versions, however many files each version holds."""
    if model:
        return registered_versions(store, registered_model_prefix(model))
    refs: list[ModelRef] = []
    for name in sorted(store.list_prefixes(registered_model_prefix(None))):
        try:
            prefix = registered_model_prefix(name)
        except ConfigError:
            continue  # a folder no quantgate name could have made: nothing registered there
        refs += registered_versions(store, prefix)
    return refs


def registered_versions(store: Store, prefix: str) -> list[ModelRef]:
    """The registration.json keys under registered/<m>/, from one delimited listing: the server rolls each
    version's uploads up into one `…/<v>/uploads/` entry, so a version costs about two listed entries
    whatever its file count (a registration from before upload ids lists its files)."""
    keys, _ = store.list_grouped(prefix, "/uploads/")
    refs = {parse_registration_key(key) for key in keys}
    return sorted((r for r in refs if r is not None), key=lambda r: (r.name, r.version))
