"""quantgate: quantize trained models for CPU serving, promote only what passes the gates."""

import os

# PyTorch's OpenMP threads spin after each parallel region and steal the cores from whatever runs next:
# in the interleaved benchmark that is the ONNX Runtime engines (measured at 2 threads: INT8 p50 13.1 ms
# with spinning, 5.0 ms without). libgomp reads this once, when torch is first imported, which is after
# this package is (every entry point imports quantgate first). An explicit setting is left alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
