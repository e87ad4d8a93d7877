"""The local folders a run writes: private to the user, cleaned after dead runs, full disks named."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantgate.errors import ConfigError, DiskFullError
from quantgate.settings import Settings
from quantgate.workspace import (
    OWNER_FILE,
    private_dir,
    remove_stale_workspaces,
    require_free_space,
    translating_disk_full,
    workspace,
)


def test_default_folders_are_under_the_users_own_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTGATE_WORK_DIR", raising=False)
    monkeypatch.delenv("QUANTGATE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = Settings()
    assert settings.work_dir == tmp_path / "xdg" / "quantgate" / "work"
    assert settings.cache_dir == tmp_path / "xdg" / "quantgate" / "exports"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert Settings().cache_dir == Path.home() / ".cache" / "quantgate" / "exports"


def test_folders_are_created_private(tmp_path):
    path = private_dir(tmp_path / "a" / "b", "QUANTGATE_WORK_DIR")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_work_folder_others_can_write_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    refused = pytest.raises(ConfigError, match=r"can be written by other users.*QUANTGATE_WORK_DIR")
    with refused, workspace(shared, "run-1"):
        pass
    assert not (shared / "run-1").exists()


def test_a_work_folder_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("quantgate.workspace._current_uid", lambda: os.geteuid() + 1)
    with pytest.raises(ConfigError, match="owned by another user"), workspace(tmp_path, "run-1"):
        pass


def test_a_symlinked_work_folder_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="symbolic link"):
        private_dir(tmp_path / "link", "QUANTGATE_WORK_DIR")


def test_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for name, owner in {
        "dead": {"pid": dead.pid, "host": host, "started": time.time()},
        "alive": {"pid": os.getpid(), "host": host, "started": time.time()},
        "other-host": {"pid": 1, "host": "elsewhere", "started": time.time()},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / OWNER_FILE).write_text(json.dumps(owner))
    (tmp_path / "unknown-old").mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / "unknown-old", (old, old))
    (tmp_path / "unknown-new").mkdir()
    removed = remove_stale_workspaces(tmp_path)
    assert sorted(p.name for p in removed) == ["dead", "unknown-old"]
    assert {p.name for p in tmp_path.iterdir()} == {"alive", "other-host", "unknown-new"}


def test_a_new_run_cleans_up_after_a_killed_one(tmp_path):
    killed = tmp_path / "killed-run"
    killed.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (killed / OWNER_FILE).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    (killed / "model.onnx").write_bytes(b"x" * 1000)
    with workspace(tmp_path, "next-run") as path:
        assert path.is_dir()
        assert not killed.exists()
    assert not (tmp_path / "next-run").exists()


def test_a_full_disk_is_a_clear_error_not_an_oserror(tmp_path):
    full = pytest.raises(DiskFullError, match=r"no space left.*QUANTGATE_WORK_DIR")
    with full, translating_disk_full(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError), translating_disk_full(tmp_path):  # other OS errors pass through
        raise PermissionError(errno.EACCES, "denied")


def test_free_space_is_checked_before_writing(tmp_path):
    require_free_space(tmp_path, 1, "the pull")
    with pytest.raises(DiskFullError, match=r"the pull needs about .* MB .* free"):
        require_free_space(tmp_path / "not-yet", 10**18, "the pull")
