"""A local cache of built candidates, keyed by what a build reads: the recipe, every file of the FP32 graph
(and of any other graph the recipe quantizes, such as ORT's fused one), the calibration batches, the
backend's package versions and the code. A re-run of a version (after a failed storage write, say), or a
new version with identical weights, takes its candidates from here instead of quantizing again; an NNCF
INT8 build is most of an OpenVINO run's time on a small model.

Only the build is cached: every candidate is still scored, timed and gated by its run. A hit is used only
when it re-verifies: the folder is this user's own (workspace.private_dir), the entry records the same key,
and every file copied into the run has the sha256 recorded when the entry was made. Anything else is built
again. A build that tunes against the run's own metric (NNCF's accuracy control) is never cached."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from quantgate.content_cache import (
    code_version,
    file_digest,
    host,
    key_packages,
    log_hit,
    mark_used,
    source_of,
    store_entry,
    tree_files,
    usable,
)
from quantgate.recipe import QuantizeResult, Recipe

MARKER = "build.json"


class BuildKey(BaseModel):
    """Everything a build's output depends on, by content."""

    recipe: dict[str, Any]
    backend: str
    backend_source: str
    packages: dict[str, str | None]
    host: dict[str, Any]
    code: str
    graphs: list[str]  # sha256 of every file the build reads (the FP32 graph's, then the recipe's own)
    calibration: str

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class BuildEntry(BaseModel):
    key: BuildKey
    result: dict[str, Any]  # the QuantizeResult but its recipe (the key has it), its path relative
    files: dict[str, str]  # the artifact's files (Runtime.files), relative path -> sha256


def calibration_digest(batches: list[dict[str, np.ndarray]] | None) -> str:
    """sha256 over every calibration batch: input names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for batch in batches or []:
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def build_key(
    recipe: Recipe,
    quantizer: Any,
    graph_files: list[Path],
    calibration: list[dict[str, np.ndarray]] | None,
) -> BuildKey:
    return BuildKey(
        recipe=quantizer.graph_of(recipe),
        backend=quantizer.name,
        backend_source=source_of(quantizer),
        packages=key_packages(quantizer.packages),
        host=host(),
        code=code_version(),
        graphs=[file_digest(p) for p in graph_files],
        calibration=calibration_digest(calibration),
    )


def _entry(folder: Path, key: BuildKey) -> BuildEntry | None:
    """The entry in `folder` when it was made for `key` and its files are intact, else None."""
    try:
        entry = BuildEntry.model_validate_json((folder / MARKER).read_text())
    except (OSError, ValidationError, ValueError):
        return None  # missing, unreadable or foreign
    if entry.key != key or str(entry.result.get("path")) not in entry.files:
        return None
    return entry if tree_files(folder, skip=MARKER) == entry.files else None


def _copy(files: list[str], source: Path, target: Path) -> None:
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


def _take(folder: Path, entry: BuildEntry, recipe: Recipe, out_dir: Path) -> QuantizeResult | None:
    """Copy the entry's files into the run's `out_dir` and check the copies (what the run will use); None
    when the entry went away meanwhile or a copy does not match (then the candidate is built)."""
    start = time.perf_counter()
    try:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        _copy(list(entry.files), folder, out_dir)
        if tree_files(out_dir, skip=MARKER) != entry.files:
            raise OSError("a copied file does not match its entry")
    except OSError:
        shutil.rmtree(out_dir, ignore_errors=True)
        return None
    return QuantizeResult.model_validate(
        {
            **entry.result,
            "recipe": recipe,
            "path": out_dir / entry.result["path"],
            "seconds": time.perf_counter() - start,
            "cached": True,
        }
    )


def cached_build(
    cache_root: Path,
    key: BuildKey,
    recipe: Recipe,
    out_dir: Path,
    build: Callable[[Path], QuantizeResult],
    artifact_files: Callable[[Path], list[Path]],
) -> QuantizeResult:
    """A verified entry copied into `out_dir` (`cached` set), else `build(out_dir)`, whose artifact
    (`artifact_files` of its path: the model, its external data, its settings) is published for the next
    run. A cache that cannot be written never fails the build."""
    if not usable(cache_root):
        return build(out_dir)  # a cache that cannot be made (read-only, full) costs the work only
    folder = cache_root / key.digest()
    entry = _entry(folder, key)
    if entry is not None:
        taken = _take(folder, entry, recipe, out_dir)
        if taken is not None:
            mark_used(folder)
            log_hit("build", recipe.name, folder.name)
            return taken
    result = build(out_dir)
    names = [p.relative_to(out_dir).as_posix() for p in artifact_files(result.path) if out_dir in p.parents]
    if out_dir not in result.path.parents or len(names) != len(artifact_files(result.path)):
        return result  # not all inside the run's folder: nothing this cache can hold whole
    stored = result.model_dump(mode="json", exclude={"recipe", "cached"})
    stored["path"] = result.path.relative_to(out_dir).as_posix()

    def write(staging: Path) -> None:
        _copy(names, out_dir, staging)
        entry = BuildEntry(key=key, result=stored, files=tree_files(staging, skip=MARKER))
        (staging / MARKER).write_text(entry.model_dump_json())

    store_entry(folder, write, lambda f: _entry(f, key), "build cache")
    return result
