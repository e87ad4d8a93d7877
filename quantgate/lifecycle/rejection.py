"""Record a rejection where a person looks for it (rejected/<m>/<v>/); nothing goes to promoted/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantgate.errors import ConflictError
from quantgate.lifecycle._records import _delete_prefix, _json_bytes, _put_json
from quantgate.lifecycle.decisions import load_rejection
from quantgate.registry import FileEntry, ModelRef, manifest_key, rejection_files_prefix, rejection_key
from quantgate.store import Store


def reject(
    store: Store,
    ref: ModelRef,
    report: dict[str, Any],
    parity: dict[str, Any] | None,
    plots: dict[str, Path] | None = None,
) -> str:
    """Record a rejection where a person looks for it: rejected/<m>/<v>/. Nothing goes to promoted/.
    The side files go under the run's own prefix and the create-only record names them, so concurrent
    rejections never mix one run's record with another's plots. A run decided before any candidate was
    built has no parity report and no plots: the record is its only write here."""
    run_id = str(report["run_id"])
    prefix = rejection_files_prefix(ref, run_id)
    _refuse_if_promoted(store, ref)
    side: list[FileEntry] = []
    if parity is not None:
        parity_bytes = _json_bytes(parity)
        digest = _put_json(store, prefix + "parity_report.json", parity, run_id=run_id)
        side.append(FileEntry(path=f"{run_id}/parity_report.json", sha256=digest, size=len(parity_bytes)))
    for name, plot in sorted((plots or {}).items()):
        digest = store.put_file(prefix + name, plot, run_id=run_id)
        side.append(FileEntry(path=f"{run_id}/{name}", sha256=digest, size=plot.stat().st_size))
    record = {**report, "side_files": [f.model_dump() for f in side]}
    # A promotion committed meanwhile by another run of this version decided it (see promotion.py).
    _refuse_if_promoted(store, ref, prefix if side else None)
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


def _refuse_if_promoted(store: Store, ref: ModelRef, side_files: str | None = None) -> None:
    """Refuse to reject a version another run has promoted, after deleting this run's `side_files`."""
    if not store.exists(manifest_key(ref)):
        return
    if side_files is not None:
        _delete_prefix(store, side_files)
    raise ConflictError(
        f"{ref} was already promoted by a concurrent or earlier run; this run recorded no rejection"
        " (see `quantgate report`)"
    )
