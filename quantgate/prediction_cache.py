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
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from quantgate.content_cache import code_version, file_digest, source_of, store_entry
from quantgate.packages import versions
from quantgate.storage import sha256_file
from quantgate.workspace import private_dir

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
    """`compute()` (a task type's per-row outputs of `model` on `rows`), through the cache in use."""
    from quantgate.backends import get_runtime

    root = _ROOT.get()
    if root is None:
        return compute()
    runtime = get_runtime(model.runtime)
    key = prediction_key(task, runtime, runtime.files(model.path), assets, rows, threads)
    return cached_predictions(root, key, compute)


class PredictionKey(BaseModel):
    task: str
    task_source: str
    code: str
    runtime: str
    packages: dict[str, str | None]
    model: list[str]  # sha256 of every file of the artifact (Runtime.files)
    assets: dict[str, str]  # side files (relative path -> sha256)
    rows: str
    threads: int

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class PredictionEntry(BaseModel):
    key: PredictionKey
    sha256: str


def rows_digest(frame: pd.DataFrame) -> str | None:
    """sha256 over the rows' columns, dtypes and values; None when a cell cannot be hashed (a list of
    tokens, say): those rows are not cached."""
    try:
        values = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    except TypeError:
        return None
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(values.tobytes())
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
        packages=versions(runtime.packages),
        model=[file_digest(p) for p in model_files],
        assets={p.relative_to(assets).as_posix(): file_digest(p) for p in side},
        rows=row_digest,
        threads=threads,
    )


def _entry(folder: Path, key: PredictionKey) -> np.ndarray | None:
    """The outputs in `folder` when the entry was made for `key` and the file is intact, else None."""
    try:
        entry = PredictionEntry.model_validate_json((folder / MARKER).read_text())
        if entry.key != key or sha256_file(folder / OUTPUTS) != entry.sha256:
            return None
        return np.load(folder / OUTPUTS, allow_pickle=False)
    except (OSError, ValidationError, ValueError):
        return None  # missing, unreadable, foreign or not a plain array


def cached_predictions(cache_root: Path | None, key: PredictionKey | None, compute: Callable[[], Any]) -> Any:
    """The verified outputs for `key`, else `compute()`, stored when it is a numeric array. No root or no
    key: `compute()`. A cache that cannot be written never fails the run."""
    if cache_root is None or key is None:
        return compute()
    private_dir(cache_root, "QUANTGATE_CACHE_DIR")
    folder = cache_root / key.digest()
    hit = _entry(folder, key)
    if hit is not None:
        return hit
    outputs = compute()
    if not (isinstance(outputs, np.ndarray) and outputs.dtype.kind in "fiub"):
        return outputs

    def write(staging: Path) -> None:
        np.save(staging / OUTPUTS, outputs, allow_pickle=False)
        entry = PredictionEntry(key=key, sha256=sha256_file(staging / OUTPUTS))
        (staging / MARKER).write_text(entry.model_dump_json())

    store_entry(folder, write, lambda f: _entry(f, key), "prediction cache")
    return outputs
