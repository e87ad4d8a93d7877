"""Where a run was measured: Python, the CPU, and the versions of the packages its decision depends on."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from quantgate.bench import cpu_info

_PACKAGES = (
    "quantgate",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "prefect",
    "great-expectations",
    "boto3",
    "numpy",
)


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "cpu": cpu_info()}
