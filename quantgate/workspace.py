"""Local folders a run writes: the per-run work folder (removed when the run ends, whatever the outcome)
and the export cache. Both live under the user's own cache folder by default, and both are refused when
someone else could write into them: a cache entry another local user planted would skip the export's
parity check and could get their model promoted."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quantgate.errors import ConfigError, DiskFullError

OWNER_FILE = ".owner"
STALE_AFTER_S = 24 * 3600  # a work folder whose owner cannot be checked is removed after this long
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def user_cache_root() -> Path:
    """$XDG_CACHE_HOME/quantgate, else ~/.cache/quantgate (the XDG base-directory default)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "quantgate"


def _current_uid() -> int:
    return os.geteuid()


def private_dir(path: Path, setting: str) -> Path:
    """Create `path` (and missing parents) with mode 0700, or accept it only when this user owns it and
    nobody else can write to it. `setting` names the variable that moves it."""
    way_out = f"`chmod 700 {path}` if it is yours, or set {setting} to a folder of your own"
    try:
        missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
        for folder in reversed(missing):  # mkdir(parents=True) would give the parents default modes
            folder.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        what = "work folder" if setting == "QUANTGATE_WORK_DIR" else "folder"
        raise ConfigError(
            f"cannot write the {what} {path} ({exc.strerror}): set {setting} to a writable folder with a few "
            "hundred MB free"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{path} is a symbolic link: {way_out}")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a folder: set {setting} to a folder of your own")
    if info.st_uid != _current_uid():
        raise ConfigError(
            f"{path} is owned by another user (uid {info.st_uid}): set {setting} to a folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}): {way_out}"
        )
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_workspaces(root: Path, now: float | None = None) -> list[Path]:
    """Remove run folders that died with their run (SIGKILL, a crashed worker): on this host, those whose
    recorded process is gone; any other folder whose owner cannot be checked once it is a day old."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for folder in root.iterdir() if root.is_dir() else []:
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
            mine = owner.get("host") == host and isinstance(owner.get("pid"), int)
            stale = not _pid_alive(owner["pid"]) if mine else now - folder.stat().st_mtime > STALE_AFTER_S
        except (OSError, ValueError, KeyError, TypeError):
            try:
                stale = now - folder.stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def workspace(root: Path, run_id: str) -> Iterator[Path]:
    private_dir(root, "QUANTGATE_WORK_DIR")
    remove_stale_workspaces(root)
    path = root / run_id
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        (path / OWNER_FILE).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        )
        probe = path / ".write-probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise disk_full(exc, path) or ConfigError(
            f"cannot write the work folder {path} ({exc.strerror}): set QUANTGATE_WORK_DIR to a writable "
            "folder with a few hundred MB free"
        ) from None
    try:
        with translating_disk_full(path):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def disk_full(exc: OSError, path: Path) -> DiskFullError | None:
    """The clear error for a full disk (or quota), None for any other OSError."""
    if exc.errno not in _DISK_FULL:
        return None
    return DiskFullError(
        f"no space left on the device of {path} ({exc.strerror}): free some space there or set "
        "QUANTGATE_WORK_DIR to a folder on a bigger disk"
    )


@contextmanager
def translating_disk_full(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        clear = disk_full(exc, path)
        if clear is None:
            raise
        raise clear from None


def require_free_space(path: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start writing `what` when the disk of `path` has less than `needed_bytes` free."""
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DiskFullError(
            f"{what} needs about {needed_bytes / 1e6:.0f} MB in {path}, but only {free / 1e6:.0f} MB are "
            "free there: free some space or set QUANTGATE_WORK_DIR to a folder on a bigger disk"
        )
