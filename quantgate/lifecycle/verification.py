"""Verify a promotion in place: manifest digest against the audit log and the pointer, every file's size
and sha256, and (with trusted keys) its signature."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from quantgate.errors import IntegrityError, NotFoundError
from quantgate.lifecycle._records import NO_TRUST
from quantgate.lifecycle.audit import event_keys, read_event
from quantgate.lifecycle.decisions import _parse_manifest, current
from quantgate.registry import FileEntry, Manifest, ModelRef, manifest_key, promoted_key
from quantgate.signing import SIGNATURE_FIX, SignatureCheck, TrustedKeys, check_promotion, signed_entries
from quantgate.storage import sha256_bytes
from quantgate.store import Store


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
    store: Store,
    ref: ModelRef,
    deep: bool = False,
    trusted: TrustedKeys = NO_TRUST,
    audit_keys: dict[str, list[str]] | None = None,
) -> Verification:
    """Check a promotion in place: the manifest parses and matches the digest its audit event (and the
    pointer, when it names this version) recorded; every file it lists exists with its size and sha256
    (the checksum the server stored at upload, or the bytes themselves with `deep`); and, with trusted
    keys, its signature verifies and covers exactly the manifest's files and content. `audit_keys`: the
    model's `event_keys`, when the caller verifies many versions (one audit listing for all)."""
    return _verify(store, ref, deep, trusted, audit_keys)[0]


def _verify(
    store: Store,
    ref: ModelRef,
    deep: bool,
    trusted: TrustedKeys,
    audit_keys: dict[str, list[str]] | None = None,
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
    if audit_keys is None:
        audit_keys = event_keys(store, ref.name)
    # Only the events whose key names this version are read: the cost does not grow with the log.
    events = [read_event(store, key, ref.name) for key in audit_keys.get(ref.version, [])]
    recorded = {e.manifest_sha256 for e in events if e is not None and e.version == ref.version}
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
        actual = store.sha256_of_content(key) if deep or head.sha256 is None else head.sha256
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
