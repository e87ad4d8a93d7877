"""Process-wide settings an entry point applies before the heavy libraries load; importing quantgate
itself sets nothing (a library must not change its host's environment)."""

from __future__ import annotations

import os


def configure_process() -> None:
    """PyTorch's OpenMP threads spin after each parallel region and steal the cores from whatever runs
    next: in the interleaved benchmark that is the ONNX Runtime engines (measured at 2 threads: INT8 p50
    13.1 ms with spinning, 5.0 ms without). libgomp reads OMP_WAIT_POLICY once, when torch is first
    imported, so the entry points (the flows package, the CLI, the test and benchmark harnesses) call this
    before anything imports torch. An explicit setting is left alone."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
