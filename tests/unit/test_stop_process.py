"""infra's stop_process: a stack's processes stop when asked, without waiting out the timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from infra.prefect_server import stop_process


def test_a_child_that_exits_on_sigterm_is_reaped_and_stopped_at_once():
    child = subprocess.Popen(  # a process group like the worker's: a leader and one child of its own
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"],
        start_new_session=True,
    )
    time.sleep(0.5)
    started = time.monotonic()
    stop_process(child.pid, timeout=15)
    assert time.monotonic() - started < 5  # was the whole timeout: the zombie leader kept its group "alive"
    try:
        os.killpg(child.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    # Not a fixed sleep: on a loaded machine the child had not yet ignored SIGTERM half a second later.
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop_process(child.pid, timeout=1)
    assert 1 <= time.monotonic() - started < 5
    assert child.wait(5) == -9
