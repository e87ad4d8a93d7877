"""Where a run was measured: Python, the CPU, and the versions of the distributions its decision depends
on (the core ones, the run's task type's and the candidate's backend's)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

from quantgate.backends import backend_packages
from quantgate.bench import cpu_info
from quantgate.packages import CORE, versions
from quantgate.tasktypes import task_types


def run_packages(task: str, backend: str | None = None) -> tuple[str, ...]:
    """The core distributions, then those the run's task type and the candidate's backend declare (a task
    type that declares none, such as a plugin's, adds none; no candidate, no backend's)."""
    backend_side = backend_packages(backend) if backend else ()
    return (*CORE, *getattr(task_types().get(task), "packages", ()), *backend_side)


def environment(packages: Iterable[str] = CORE) -> dict[str, Any]:
    return {"python": platform.python_version(), "packages": versions(packages), "cpu": cpu_info()}
