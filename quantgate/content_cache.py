"""What the local caches keyed by content share (the export cache, quantgate/export_cache.py, and the
candidate build cache, quantgate/build_cache.py): every file of an entry with its sha256, the digest of
the code that made an entry, and publishing an entry whole by one rename, so runs of the same source at the
same time (two workers, the test tiers' parallel workers) each get a complete entry and none is ever removed
from under a run that is reading it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from quantgate.storage import sha256_file

if TYPE_CHECKING:
    from quantgate.settings import Settings

T = TypeVar("T")
LOGGER = logging.getLogger("quantgate.cache")


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


@functools.cache
def host() -> dict[str, object]:
    """The CPU an entry was made on (model, machine, the instruction sets INT8 kernels choose by: AVX2 U8S8
    saturates, VNNI does not; BF16 needs the flag): a cache on a shared home is not used across CPUs."""
    from quantgate.bench import cpu_info

    info = cpu_info()
    return {"model": info["model"], "machine": info["machine"], "flags": info["flags"]}


def key_packages(*groups: tuple[str, ...]) -> dict[str, str | None]:
    """Versions of quantgate's core distributions and each group's (a task type's, a backend's): what the
    manifest records as the versions a decision was judged with."""
    from quantgate.packages import CORE, versions

    return versions((*CORE, *(name for group in groups for name in group)))


def log_hit(what: str, subject: str, digest: str) -> None:
    """Say on quantgate's logger (`quantgate.cache`) that work was read back, not done."""
    LOGGER.info("cache hit: %s of %s read back (entry %s)", what, subject, digest[:12])


def usable(root: Path) -> bool:
    """Whether the cache folder `root` can be used: made if missing, this user's own (workspace.private_dir).
    One that cannot (read-only, full, not a folder) costs the work, never the run: the flow refuses an
    unsafe one loudly before anything is pulled (prepare_caches)."""
    from quantgate.errors import ConfigError
    from quantgate.workspace import private_dir

    try:
        private_dir(root, "QUANTGATE_CACHE_DIR")
    except (ConfigError, OSError):
        return False
    return True


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


def mark_used(folder: Path) -> None:
    """Record that an entry was just read (its folder's mtime), so pruning removes the least used first."""
    with contextlib.suppress(OSError):
        os.utime(folder)


def prune(root: Path, max_bytes: int, stale_after_s: float = 3600) -> list[str]:
    """Keep the cache at `root` within `max_bytes`: the entries used longest ago go first, each renamed
    aside in one step before it is deleted (a run reading it meanwhile misses and does the work). Staging
    and set-aside folders left by a killed run are removed after `stale_after_s`. Returns what was removed."""
    if not root.is_dir():
        return []
    now, entries, removed = time.time(), [], []
    for child in root.iterdir():
        try:
            used = child.stat().st_mtime
            if child.name.startswith("."):
                if now - used > stale_after_s:
                    shutil.rmtree(child, ignore_errors=True)
                continue
            size = sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
        except OSError:
            continue  # removed by another run meanwhile
        entries.append((used, size, child))
    total = sum(size for _, size, _ in entries)
    for _, size, child in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        aside = root / f".stale.{child.name}.{uuid.uuid4().hex[:8]}"
        try:
            child.rename(aside)
        except OSError:
            continue
        shutil.rmtree(aside, ignore_errors=True)
        total -= size
        removed.append(child.name)
    return removed


def prepare_caches(settings: Settings) -> None:
    """Before a run pulls anything: the cache folders are this user's own (refused loudly otherwise, with
    the way out), and the build and prediction caches are pruned to QUANTGATE_CACHE_MAX_GB each."""
    from quantgate.workspace import private_dir

    private_dir(settings.cache_dir, "QUANTGATE_CACHE_DIR")
    for cache in (settings.build_cache_dir, settings.prediction_cache_dir):
        if cache is not None:
            private_dir(cache, "QUANTGATE_CACHE_DIR")
            prune(cache, int(settings.cache_max_gb * 1e9))
