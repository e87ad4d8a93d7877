"""A per-run local work folder, removed when the run ends whatever the outcome."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quantgate.errors import ConfigError


@contextmanager
def workspace(root: Path, run_id: str) -> Iterator[Path]:
    path = root / run_id
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the work folder {path} ({exc.strerror}): set QUANTGATE_WORK_DIR to a writable "
            "folder with a few hundred MB free"
        ) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
