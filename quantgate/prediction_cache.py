"""A local cache of a model's per-row outputs on held-out rows, keyed by content: the task type and the code,
every file of the model and of its side files (tokenizer), the rows themselves, the thread count and the
engine's version. The FP32 reference of a re-run (or of a new version with the same weights), the serving
version's outputs on the same rows, and a candidate whose build came from the build cache are then read back
instead of computed again. Only the outputs are cached: every metric, interval and gate is computed by the
run from them.

Only numeric arrays are cached (stored as .npy, read back without pickle). A hit is used only when it
re-verifies: the folder is this user's own, the entry records the same key, and the file has the sha256
recorded when it was made. Off with QUANTGATE_PREDICTION_CACHE=false.

The search says where the cache is for the steps it runs (`using`): the FP32 reference, the champion and
each candidate's scoring; a task type's outputs go through `predictions`."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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
    usable,
)
from quantgate.storage import sha256_file

MARKER = "entry.json"
OUTPUTS = "outputs.npy"
_ROOT: ContextVar[Path | None] = ContextVar("quantgate_prediction_cache", default=None)


@contextmanager
def using(root: Path | None) -> Iterator[None]:
    """Outputs computed inside go through the cache at `root` (None: not cached). Prefect copies the
    context into the threads its tasks run in."""
    token = _ROOT.set(root)
    try:
        yield
    finally:
        _ROOT.reset(token)


def predictions(
    task: Any, model: Any, assets: Path, rows: pd.DataFrame, threads: int, compute: Callable[[], Any]
) -> Any:
    """`compute()` (a task type's per-row outputs of `model` on `rows`), through the cache in use. A model
    that is not files on disk (NNCF accuracy control's in-memory candidates) is never cached."""
    from quantgate.backends import get_runtime

    root = _ROOT.get()
    if root is None:
        return compute()
    runtime = get_runtime(model.runtime)
    files = runtime.files(model.path)
    if not files or not all(p.is_file() for p in files):
        return compute()
    key = prediction_key(task, runtime, files, assets, rows, threads)
    return cached_predictions(root, key, compute)


class PredictionKey(BaseModel):
    task: str
    task_source: str
    code: str
    runtime: str
    runtime_source: str
    packages: dict[str, str | None]
    host: dict[str, Any]
    model: list[str]  # sha256 of every file of the artifact (Runtime.files)
    assets: dict[str, str]  # side files (relative path -> sha256)
    rows: str
    threads: int

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class PredictionEntry(BaseModel):
    key: PredictionKey
    sha256: str


def _plain(value: Any) -> bool:
    """Data that prints the same wherever it is (a string, a number, a list of them): not an object whose
    repr names a memory address, which two processes could share for different contents."""
    if value is None or isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _canonical(value: Any) -> bytes | None:
    """Bytes that stand for `value` exactly: a frame as CSV (index, columns and every value; floats as
    round-trip reprs) with its dtypes, JSON for plain data; None for anything else."""
    if isinstance(value, pd.DataFrame):
        cells = value.select_dtypes(include="object")
        if not all(_plain(v) for column in cells for v in cells[column]):
            return None
        dtypes = json.dumps([[str(c), str(t)] for c, t in value.dtypes.items()])
        return dtypes.encode() + b"\n" + value.to_csv(index=True).encode()
    if not _plain(value):
        return None
    try:
        return json.dumps(value, allow_nan=True, default=float).encode()  # in order: order is meaning
    except (TypeError, ValueError):
        return None


def rows_digest(frame: pd.DataFrame) -> str | None:
    """sha256 over the rows (columns, dtypes, index and every value) and whatever the frame carries beside
    them (`attrs`: a retrieval set's corpus); None when something cannot be written down exactly: those
    rows are not cached."""
    parts = [_canonical(frame)]
    for name, value in sorted(frame.attrs.items()):
        parts += [str(name).encode(), _canonical(value)]
    if any(part is None for part in parts):
        return None
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))  # type: ignore[arg-type]
        digest.update(part)  # type: ignore[arg-type]
    return digest.hexdigest()


def prediction_key(
    task: Any, runtime: Any, model_files: list[Path], assets: Path, rows: pd.DataFrame, threads: int
) -> PredictionKey | None:
    row_digest = rows_digest(rows)
    if row_digest is None:
        return None
    side = sorted(p for p in assets.rglob("*") if p.is_file()) if assets.is_dir() else []
    return PredictionKey(
        task=task.name,
        task_source=source_of(task),
        code=code_version(),
        runtime=runtime.name,
        runtime_source=source_of(runtime),
        packages=key_packages(getattr(task, "packages", ()), runtime.packages),
        host=host(),
        model=[file_digest(p) for p in model_files],
        assets={p.relative_to(assets).as_posix(): file_digest(p) for p in side},
        rows=row_digest,
        threads=threads,
    )


def _entry(folder: Path, key: PredictionKey) -> np.ndarray | None:
    """The outputs in `folder` when the entry was made for `key` and the file is intact, else None. The
    array is read from the very bytes whose sha256 was checked."""
    try:
        entry = PredictionEntry.model_validate_json((folder / MARKER).read_text())
        if entry.key != key:
            return None
        data = (folder / OUTPUTS).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            return None
        outputs = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValidationError, ValueError):
        return None  # missing, unreadable, foreign or not a plain array
    return outputs if _storable(outputs) else None


def task_label(key: PredictionKey) -> str:
    return f"{key.task} on {key.runtime}"


def _storable(outputs: Any) -> bool:
    return type(outputs) is np.ndarray and outputs.dtype.kind in "fiub"


def cached_predictions(cache_root: Path | None, key: PredictionKey | None, compute: Callable[[], Any]) -> Any:
    """The verified outputs for `key`, else `compute()`, stored when it is a numeric array. No root or no
    key: `compute()`. A cache that cannot be written never fails the run."""
    if cache_root is None or key is None:
        return compute()
    if not usable(cache_root):
        return compute()  # a cache that cannot be made (read-only, full) costs the work only
    folder = cache_root / key.digest()
    hit = _entry(folder, key)
    if hit is not None:
        mark_used(folder)
        log_hit("outputs", task_label(key), folder.name)
        return hit
    outputs = compute()
    if not _storable(outputs):
        return outputs

    def write(staging: Path) -> None:
        np.save(staging / OUTPUTS, outputs, allow_pickle=False)
        entry = PredictionEntry(key=key, sha256=sha256_file(staging / OUTPUTS))
        (staging / MARKER).write_text(entry.model_dump_json())

    store_entry(folder, write, lambda f: _entry(f, key), "prediction cache")
    return outputs
