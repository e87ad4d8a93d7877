"""Test helper, run as a subprocess: runs quantize-and-promote and SIGKILLs its own process in the middle
of the promotion (`after-uploads`: once two artifact files are stored; `after-manifest`: right after the
commit point, before the pointer and audit log). Exit code 3 means the kill point was never reached."""

from __future__ import annotations

import os
import signal
import sys

from quantgate.bench import BenchSettings
from quantgate.storage import ObjectStore
from tests.conftest import TINY_GATES

model, version, mode = sys.argv[1:4]
_put_file, _put_bytes = ObjectStore.put_file, ObjectStore.put_bytes
uploads = 0


def put_file(self, key, path, **kwargs):
    global uploads  # noqa: PLW0603
    digest = _put_file(self, key, path, **kwargs)
    if key.startswith("promoted/"):
        uploads += 1
        if mode == "after-uploads" and uploads >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return digest


def put_bytes(self, key, data, **kwargs):
    digest = _put_bytes(self, key, data, **kwargs)
    if mode == "after-manifest" and key.endswith("/manifest.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return digest


ObjectStore.put_file = put_file  # type: ignore[method-assign]
ObjectStore.put_bytes = put_bytes  # type: ignore[method-assign]

from flows.quantize_and_promote import quantize_and_promote  # noqa: E402

quantize_and_promote(
    model=model,
    version=version,
    recipes=["dynamic-int8-per-channel"],
    thresholds=TINY_GATES,
    bench=BenchSettings(warmup_runs=1, repeat_runs=5),
)
sys.exit(3)
