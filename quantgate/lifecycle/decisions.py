"""Read what was decided: a version's manifest or rejection record, its decision report, a promoted file
(found through the manifest), and the pointer to the version serving now."""

from __future__ import annotations

import json
from typing import Any

from quantgate.errors import IntegrityError, NotFoundError
from quantgate.lifecycle._records import _MANIFEST_FIX, _corrupt, _load_json, _parse_record
from quantgate.registry import (
    Manifest,
    ModelRef,
    Outcome,
    Pointer,
    current_key,
    manifest_key,
    promoted_key,
    rejection_key,
)
from quantgate.storage import sha256_bytes
from quantgate.store import Store


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


_POINTER_FIX = "point it at a promoted version again with `quantgate rollback MODEL --to VERSION`"


def _load_pointer(store: Store, model: str) -> tuple[Pointer, str] | None:
    key = current_key(model)
    found = store.get_with_etag(key)
    if found is None:
        return None
    return _parse_record(store, key, found[0], Pointer, "pointer", _POINTER_FIX), found[1]


def current(store: Store, model: str) -> Pointer | None:
    found = _load_pointer(store, model)
    return found[0] if found else None
