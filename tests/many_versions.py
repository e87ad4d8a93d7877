"""Many versions, cheaply: a registry of synthetic versions in every state the sweep tells apart, written
with the real key layout (no model is built or run), a Store wrapper that counts the requests an S3
server would see, and the sweep as it was before issue #24 item 8 (one listing of every object under
registered/, the whole audit log read per promoted version) to compare against. Used by
tests/unit/test_many_versions.py and benchmarks/many_versions.py."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quantgate.errors import IntegrityError, NotFoundError, QuantgateError
from quantgate.lifecycle import SweepPlan, audit_log, decision_of
from quantgate.lifecycle._records import _json_bytes, _load_json
from quantgate.lifecycle.decisions import _manifest_with_digest
from quantgate.lifecycle.sweep import RunHistory
from quantgate.registry import (
    AuditEvent,
    FileEntry,
    Manifest,
    ModelRef,
    Pointer,
    Registration,
    audit_key,
    current_key,
    manifest_key,
    parse_registration_key,
    registered_heldout_key,
    registered_model_key,
    registered_model_prefix,
    registration_key,
    rejection_key,
    runs_prefix,
    source_checksum,
)
from quantgate.store import ObjectHead, Store, StoredObject

PAGE = 1000  # S3's ListObjectsV2 page: keys plus common prefixes

# The states the sweep tells apart, in the order versions cycle through them.
STATES = (
    "promoted",  # finished: manifest, pointer step, audit event
    "rejected",  # rejected/<m>/<v>/report.json and a side file
    "undecided",  # registered, never run
    "promoted",
    "failed",  # undecided, its runs failed MAX_FAILURES times (each run with a Data Docs site)
    "unfinished",  # manifest written, no audit event (crashed before its tail)
    "interrupted",  # files under promoted/<m>/<v>/<run>/, no manifest: not decided
    "unreadable",  # undecided, one run report that is not JSON
    "promoted",
    "rejected",
)
MAX_FAILURES = 3


class CountingStore(Store):
    """Forwards to `inner` and counts requests as an S3 server would: one per object call, one per page
    of `page` listed entries (an empty listing is one request too)."""

    def __init__(self, inner: Store, page: int = PAGE) -> None:
        self.inner = inner
        self.bucket = inner.bucket
        self.page = page
        self.counts: Counter[str] = Counter()

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def _pages(self, op: str, entries: int) -> None:
        self.counts[op] += max(1, math.ceil(entries / self.page))

    def require_bucket(self) -> None:
        self.inner.require_bucket()

    def put_bytes(self, key: str, data: bytes, **kwargs: object) -> str:  # type: ignore[override]
        self.counts["put"] += 1
        return self.inner.put_bytes(key, data, **kwargs)  # type: ignore[arg-type]

    def put_file(self, key: str, path: Path, **kwargs: object) -> str:  # type: ignore[override]
        self.counts["put"] += 1
        return self.inner.put_file(key, path, **kwargs)  # type: ignore[arg-type]

    def get_bytes(self, key: str) -> bytes:
        self.counts["get"] += 1
        return self.inner.get_bytes(key)

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        self.counts["get"] += 1
        return self.inner.get_with_etag(key)

    def get_file(
        self, key: str, path: Path, max_bytes: int | None = None, progress: Any = None
    ) -> str | None:
        self.counts["get"] += 1
        return self.inner.get_file(key, path, max_bytes, progress)

    def head(self, key: str) -> ObjectHead:
        self.counts["head"] += 1
        return self.inner.head(key)

    def exists(self, key: str) -> bool:
        self.counts["head"] += 1
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.counts["delete"] += 1
        self.inner.delete(key)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        found = list(self.inner.list(prefix))
        self._pages("list", len(found))
        yield from found

    def list_prefixes(self, prefix: str) -> list[str]:
        found = self.inner.list_prefixes(prefix)
        self._pages("list", len(found))
        return found

    def list_grouped(self, prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
        keys, groups = self.inner.list_grouped(prefix, delimiter)
        self._pages("list", len(keys) + len(groups))
        return keys, groups


# --- a synthetic registry ----------------------------------------------------------------------------


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def version_objects(ref: ModelRef, state: str, files: int, at_ns: int) -> dict[str, bytes]:
    """Every object one synthetic version in `state` holds, with `files` model files per upload/run."""
    upload = hashlib.sha256(str(ref).encode()).hexdigest()[:16]
    out: dict[str, bytes] = {}
    entries = []
    for i in range(files):
        data = f"{ref}:weights-{i}".encode()
        out[registered_model_key(ref, f"shard-{i:04d}.bin", upload)] = data
        entries.append(_entry(f"shard-{i:04d}.bin", data))
    held = b"sentence1,sentence2,score\na,b,1.0\n"
    out[registered_heldout_key(ref, "heldout.csv", upload)] = held
    registration = Registration(
        model=ref.name, version=ref.version, task="sentence-embedding", heldout_format="csv",
        files=entries, heldout=_entry("heldout.csv", held), source_checksum=source_checksum(entries),
        upload_id=upload,
    )  # fmt: skip
    out[registration_key(ref)] = _json_bytes(registration)
    run = f"run-{upload[:8]}"
    if state in ("promoted", "unfinished", "interrupted"):
        promoted = []
        for i in range(files):
            data = f"{ref}:int8-{i}".encode()
            out[f"promoted/{ref.name}/{ref.version}/{run}/shard-{i:04d}.bin"] = data
            promoted.append(_entry(f"{run}/shard-{i:04d}.bin", data))
        report = json.dumps({"run_id": run, "outcome": "promoted"}).encode()
        out[f"promoted/{ref.name}/{ref.version}/{run}/report.json"] = report
        promoted.append(_entry(f"{run}/report.json", report))
        if state != "interrupted":
            manifest = Manifest(
                model=ref.name, version=ref.version, run_id=run, task="sentence-embedding", recipe={},
                files=promoted, source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
                promoted_at="2026-11-30T00:00:00Z",
            )  # fmt: skip
            raw = _json_bytes(manifest)
            out[manifest_key(ref)] = raw
            digest = hashlib.sha256(raw).hexdigest()
            if state == "promoted":
                event = AuditEvent(
                    action="promote", model=ref.name, version=ref.version, previous_version=None, run_id=run,
                    actor="synthetic", manifest_sha256=digest, files=promoted, pointer_moved=True,
                )  # fmt: skip
                out[audit_key(ref.name, at_ns, digest[:8], "promote", ref.version)] = _json_bytes(event)
    elif state == "rejected":
        out[rejection_key(ref)] = _json_bytes({"run_id": run, "outcome": "rejected"})
        out[f"rejected/{ref.name}/{ref.version}/{run}/parity_report.json"] = b"{}"
    elif state == "failed":
        for k in range(MAX_FAILURES):
            prefix = f"{runs_prefix(ref)}{run}-{k}/"
            out[prefix + "report.json"] = json.dumps(
                {"outcome": "failed", "failed_at": f"2026-11-30T00:00:0{k}Z", "run_id": f"{run}-{k}"}
            ).encode()
            for i in range(files):
                out[f"{prefix}data_docs/static/asset-{i:04d}.css"] = b"/* */"
    elif state == "unreadable":
        out[f"{runs_prefix(ref)}{run}/report.json"] = b"{broken"
    return out


def population(
    versions: int, files: int, model: str = "m"
) -> tuple[dict[str, bytes], dict[str, list[ModelRef]]]:
    """`versions` versions of `model` cycling through STATES (names v00000…), plus one registered/ folder
    whose registration.json never landed: (objects, refs by state)."""
    objects: dict[str, bytes] = {}
    by_state: dict[str, list[ModelRef]] = {s: [] for s in STATES}
    for i in range(versions):
        ref = ModelRef(name=model, version=f"v{i:05d}")
        state = STATES[i % len(STATES)]
        by_state[state].append(ref)
        objects |= version_objects(ref, state, files, at_ns=1_700_000_000_000_000_000 + i)
    orphan = ModelRef(name=model, version="v99999-no-registration")
    objects[registered_model_key(orphan, "shard-0000.bin", "0" * 16)] = b"left by a failed register"
    last = by_state["promoted"][-1] if by_state["promoted"] else None
    if last is not None:
        raw = objects[manifest_key(last)]
        pointer = Pointer(
            model=model, version=last.version, manifest_sha256=hashlib.sha256(raw).hexdigest(),
            run_id=Manifest.model_validate_json(raw).run_id, action="promote",
        )  # fmt: skip
        objects[current_key(model)] = _json_bytes(pointer)
    return objects, by_state


def write_all(store: Store, objects: dict[str, bytes], threads: int = 1) -> None:
    if threads <= 1:
        for key, data in objects.items():
            store.put_bytes(key, data)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: store.put_bytes(*item), objects.items()))


def expected_plan(by_state: dict[str, list[ModelRef]]) -> tuple[list[ModelRef], set[str]]:
    """(pending, skipped) the sweep must give with MAX_FAILURES for a population."""
    pending = sorted(
        by_state["undecided"] + by_state["unfinished"] + by_state["interrupted"] + by_state["unreadable"],
        key=lambda r: (r.name, r.version),
    )
    skipped = {str(r) for r in by_state["failed"] + by_state["unreadable"]}
    return pending, skipped


# --- before: the code as it was at the base of issue #24 item 8, kept to compare against ---------------


def old_list_registered(store: Store, model: str | None = None) -> list[ModelRef]:
    refs = [parse_registration_key(obj.key) for obj in store.list(registered_model_prefix(model))]
    return sorted({r for r in refs if r is not None}, key=lambda r: (r.name, r.version))


def old_run_history(store: Store, ref: ModelRef) -> RunHistory:
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
            if history.last_failure is None or str(report.get("failed_at") or "") >= str(
                history.last_failure.get("failed_at") or ""
            ):
                history.last_failure = report
    return history


def old_promotion_finished(store: Store, ref: ModelRef) -> bool:
    _, digest = _manifest_with_digest(store, ref)
    return any(
        e.action == "promote" and e.version == ref.version and e.manifest_sha256 == digest
        for e in audit_log(store, ref.name)
    )


def old_sweep_plan(store: Store, max_failures: int) -> SweepPlan:
    plan = SweepPlan()
    for ref in old_list_registered(store):
        try:
            decision = decision_of(store, ref)
            if decision == "promoted":
                if not old_promotion_finished(store, ref):
                    plan.pending.append(ref)
                continue
            if decision is not None:
                continue
            history = old_run_history(store, ref)
            plan.failures[str(ref)] = history.failures
            if history.unreadable:
                plan.skipped[str(ref)] = f"unreadable run report(s) counted as failed: {history.unreadable}"
            if history.failures >= max_failures:
                plan.skipped[str(ref)] = f"{history.failures} failed run(s) (limit {max_failures})"
                continue
            plan.pending.append(ref)
        except QuantgateError as exc:
            plan.skipped[str(ref)] = f"{type(exc).__name__}: {exc}"
    return plan
