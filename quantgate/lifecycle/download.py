"""Pull a version to local disk, every file checked against its sha256: a registered version for a run, a
promoted one for serving."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from quantgate.errors import ConfigError, IntegrityError, NotFoundError
from quantgate.lifecycle._records import NO_TRUST
from quantgate.lifecycle.decisions import current
from quantgate.lifecycle.registration import load_registration
from quantgate.lifecycle.verification import _require_verified
from quantgate.packages import versions
from quantgate.registry import FileEntry, Manifest, ModelRef, Registration, promoted_key
from quantgate.signing import TrustedKeys
from quantgate.storage import sha256_bytes, sha256_file
from quantgate.store import Store, TransferProgress
from quantgate.workspace import require_free_space


@dataclass(frozen=True)
class PulledVersion:
    registration: Registration
    model_dir: Path
    heldout_path: Path


def _download_verified(
    store: Store,
    key: str,
    dest: Path,
    entry: FileEntry,
    what: str = "registration",
    progress: TransferProgress | None = None,
) -> None:
    watch = progress(entry.path, entry.size) if progress is not None else None
    # Passed only when asked for: a Store written before get_file took `progress` keeps working.
    streamed = store.get_file(key, dest, max_bytes=entry.size, **({"progress": watch} if watch else {}))
    # The store hashes what it wrote while streaming; a store that returns nothing is hashed here.
    actual = streamed or sha256_file(dest)
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


def local_name(entry: FileEntry) -> str:
    """A promoted file's path without the run prefix it is stored under."""
    return entry.path.split("/", 1)[1] if "/" in entry.path else entry.path


def pull_promotion(
    store: Store,
    model: str,
    version: str | None,
    dest: Path,
    trusted: TrustedKeys = NO_TRUST,
    progress: TransferProgress | None = None,
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
            key = promoted_key(ref, entry.path)
            _download_verified(store, key, target, entry, what="promotion", progress=progress)
            paths.append(dest / local_name(entry))
        (staging / "manifest.json").write_bytes(raw)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, [*paths, dest / "manifest.json"]


@dataclass(frozen=True)
class EngineDrift:
    """A package that runs the promoted artifact, at another version here than the one that judged it."""

    package: str
    judged: str
    local: str | None  # None: not installed here


def engine_drift(manifest: Manifest) -> list[EngineDrift]:
    """The engine packages whose local version differs from the one the manifest records: another engine
    version may not reproduce the latency and accuracy the promotion was judged on. None for a manifest
    written before it recorded them."""
    local = versions(manifest.engine)
    return [
        EngineDrift(package, judged, local[package])
        for package, judged in manifest.engine.items()
        if local[package] != judged
    ]
