"""The installed distributions a decision depends on, and their versions: what a run report and a
manifest record. The core ones are listed here; each task type and backend declares its own (`packages`),
so an OpenVINO promotion says which OpenVINO and NNCF judged it."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable

CORE = (
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


@functools.cache
def installed_version(name: str) -> str | None:
    """The version of an installed distribution; None when it is not installed here. Looked up once per
    process (each lookup scans the distributions on sys.path, ~1 ms, and every run's report asks for each
    of its packages); a worker starts each flow run in a new process, so the next run sees an upgrade."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(names: Iterable[str]) -> dict[str, str | None]:
    """Each distribution's installed version, in the order named, each once."""
    return {name: installed_version(name) for name in dict.fromkeys(names)}
