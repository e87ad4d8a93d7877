"""A local cache of ONNX exports, keyed by the model's source checksum and the export settings, so a
re-run of a version (or a new version with identical weights) skips the export. Entries are built in a
temporary folder and renamed into place, then checked against their recorded sha256 on every use: a
half-written or altered entry is rebuilt, never used."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from quantgate.export import ExportResult
from quantgate.storage import sha256_file

MARKER = "export.json"


class CacheEntry(BaseModel):
    result: ExportResult
    onnx_sha256: str


def _relocate(result: ExportResult, old: Path, new: Path) -> ExportResult:
    return result.model_copy(
        update={
            "onnx_path": new / result.onnx_path.relative_to(old),
            "tokenizer_files": [new / p.relative_to(old) for p in result.tokenizer_files],
        }
    )


def cached_export(
    cache_root: Path, key: str, build: Callable[[Path], ExportResult]
) -> tuple[ExportResult, bool]:
    """(result, True) from the cache when a verified entry exists, else (build(folder), False)."""
    folder = cache_root / key
    marker = folder / MARKER
    if marker.is_file():
        entry = CacheEntry.model_validate_json(marker.read_text())
        if entry.result.onnx_path.is_file() and sha256_file(entry.result.onnx_path) == entry.onnx_sha256:
            return entry.result, True
        shutil.rmtree(folder, ignore_errors=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{key}.{uuid.uuid4().hex[:8]}"
    try:
        result = _relocate(build(staging), staging, folder)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry = CacheEntry(result=result, onnx_sha256=sha256_file(result.onnx_path))
    marker.write_text(entry.model_dump_json(indent=2))
    return result, False
