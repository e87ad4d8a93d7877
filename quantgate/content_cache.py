"""What the local caches keyed by content share (the export cache, quantgate/export_cache.py, and the
candidate build cache, quantgate/build_cache.py): every file of an entry with its sha256, the digest of
the code that made an entry, and publishing an entry whole by one rename, so runs of the same source at the
same time (two workers, the test tiers' parallel workers) each get a complete entry and none is ever removed
from under a run that is reading it."""

from __future__ import annotations

import functools
import hashlib
import inspect
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from quantgate.storage import sha256_file

T = TypeVar("T")


def tree_files(folder: Path, *, skip: str) -> dict[str, str]:
    """Every file under `folder` but the marker `skip` (relative path -> sha256), in path order."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != skip
    }


@functools.cache
def _source_digest(path: str) -> str:
    return sha256_file(Path(path))


@functools.lru_cache(maxsize=4096)
def _stat_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))


def file_digest(path: Path) -> str:
    """sha256 of a file, computed once per process while its size, mtime and inode stay the same (the
    caches' keys hash the same model and tokenizer files for every candidate of a run)."""
    info = path.stat()
    return _stat_digest(str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino)


@functools.cache
def code_version() -> str:
    """sha256 over quantgate's own source files: an entry made by other code is never used."""
    import quantgate

    root = Path(quantgate.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(_source_digest(str(path)).encode())
    return digest.hexdigest()


def source_of(obj: object) -> str:
    """sha256 of the file defining `obj`'s class: a plugin outside quantgate is versioned by its source."""
    return _source_digest(inspect.getfile(type(obj)))


def store_entry(
    folder: Path, write: Callable[[Path], None], verified: Callable[[Path], object], what: str
) -> None:
    """Write a new entry for `folder` apart (`write(staging)`) and publish it (see `publish`). A cache that
    cannot be written costs the next run the work, never this run its result: OSError is swallowed."""
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        write(staging)
        publish(staging, folder, verified, what)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, folder: Path, verified: Callable[[Path], T | None], what: str) -> T | None:
    """Rename the finished `staging` entry into place; None when it landed. A published entry is never
    removed while it verifies: other runs read from it. When another run published first, its entry is
    returned if it verifies; one that does not (tampered, or half-written by an older version) is renamed
    aside in one step, so nothing is ever deleted from under a reader of a good entry."""
    for _ in range(5):
        try:
            staging.rename(folder)  # fails when `folder` exists and is not empty
            return None
        except OSError:
            won = verified(folder)
            if won is not None:
                return won
            stale = folder.parent / f".stale.{folder.name}.{uuid.uuid4().hex[:8]}"
            try:
                folder.rename(stale)
            except FileNotFoundError:
                continue  # another run moved it aside first
            shutil.rmtree(stale, ignore_errors=True)
    raise OSError(f"could not publish the {what} entry {folder} (five tries against other runs)")
