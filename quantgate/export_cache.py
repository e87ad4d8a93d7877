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

from quantgate.export import ExportResult
from quantgate.storage import sha256_file
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
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


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


def cached_export(
    cache_root: Path,
    key: str,
    build: Callable[[Path], ExportResult],
    *,
    source_checksum: str,
    atol: float,
) -> tuple[ExportResult, bool]:
    """(result, True) from the cache when a re-verified entry exists, else (build(folder), False)."""
    private_dir(cache_root, "QUANTGATE_CACHE_DIR")
    folder = cache_root / key
    marker = folder / MARKER
    if marker.is_file():
        try:
            entry = CacheEntry.model_validate_json(marker.read_text())
            if _trustworthy(entry, folder, source_checksum, atol):
                return entry.result, True
        except (ValidationError, ValueError, OSError):
            pass  # unreadable or foreign: rebuilt below
        shutil.rmtree(folder, ignore_errors=True)
    staging = cache_root / f".{key}.{uuid.uuid4().hex[:8]}"
    try:
        result = _relocate(build(staging), staging, folder)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = _files(folder)
    entry = CacheEntry(
        result=result,
        onnx_sha256=files[result.onnx_path.relative_to(folder).as_posix()],
        source_checksum=source_checksum,
        atol=atol,
        files=files,
    )
    marker.write_text(entry.model_dump_json(indent=2))
    return result, False
