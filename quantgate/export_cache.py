"""A local cache of ONNX exports, keyed by the model's source checksum and the export settings, so a
re-run of a version (or a new version with identical weights) skips the export. Entries are built in a
temporary folder and renamed into place. A hit is used only when it is re-verified: the cache folder is
this user's own (no other local user can plant an entry), the entry was made for the same registered
source checksum and tolerance, its recorded export parity against PyTorch is finite and within that
tolerance, and every file still has the sha256 recorded when it was made. Anything else is rebuilt."""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from quantgate.content_cache import publish, tree_files
from quantgate.export import ExportResult
from quantgate.workspace import private_dir

MARKER = "export.json"


class CacheEntry(BaseModel):
    result: ExportResult
    onnx_sha256: str
    source_checksum: str
    atol: float
    files: dict[str, str]  # every file of the entry (relative path -> sha256)


def _relocate(result: ExportResult, old: Path, new: Path) -> ExportResult:
    return result.model_copy(
        update={
            "onnx_path": new / result.onnx_path.relative_to(old),
            "tokenizer_files": [new / p.relative_to(old) for p in result.tokenizer_files],
        }
    )


def _files(folder: Path) -> dict[str, str]:
    return tree_files(folder, skip=MARKER)


def _trustworthy(entry: CacheEntry, folder: Path, source_checksum: str, atol: float) -> bool:
    parity = entry.result.max_abs_diff_vs_torch
    return (
        entry.source_checksum == source_checksum
        and entry.atol == atol
        and entry.result.parity_samples > 0
        and bool(parity)
        and all(math.isfinite(v) and v <= atol for v in parity.values())
        and folder in entry.result.onnx_path.parents
        and entry.result.onnx_path.is_file()
        and _files(folder) == entry.files
        and entry.files.get(entry.result.onnx_path.relative_to(folder).as_posix()) == entry.onnx_sha256
    )


def _verified(folder: Path, source_checksum: str, atol: float) -> ExportResult | None:
    """The entry in `folder` when it re-verifies, else None."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        entry = CacheEntry.model_validate_json(marker.read_text())
    except (ValidationError, ValueError, OSError):
        return None  # unreadable or foreign
    return entry.result if _trustworthy(entry, folder, source_checksum, atol) else None


def cached_export(
    cache_root: Path,
    key: str,
    build: Callable[[Path], ExportResult],
    *,
    source_checksum: str,
    atol: float,
) -> tuple[ExportResult, bool]:
    """(result, True) from the cache when a re-verified entry exists, else (build(folder), False). Entries
    are built apart and published whole, marker included, by one rename: runs of the same source at the
    same time (two workers, or the test tiers' parallel workers) each get a complete entry."""
    private_dir(cache_root, "QUANTGATE_CACHE_DIR")
    folder = cache_root / key
    hit = _verified(folder, source_checksum, atol)
    if hit is not None:
        return hit, True
    staging = cache_root / f".{key}.{uuid.uuid4().hex[:8]}"
    try:
        result = _relocate(build(staging), staging, folder)
        files = _files(staging)
        entry = CacheEntry(
            result=result,
            onnx_sha256=files[result.onnx_path.relative_to(folder).as_posix()],
            source_checksum=source_checksum,
            atol=atol,
            files=files,
        )
        (staging / MARKER).write_text(entry.model_dump_json(indent=2))
        won = publish(staging, folder, lambda f: _verified(f, source_checksum, atol), "export cache")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (won if won is not None else result), False
