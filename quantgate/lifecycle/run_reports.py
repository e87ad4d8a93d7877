"""What every run leaves under its own prefix runs/<m>/<v>/<run-id>/: the run report (best effort) and the
held-out validation's Data Docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantgate.errors import StorageError
from quantgate.lifecycle._records import _put_json
from quantgate.registry import ModelRef, run_prefix
from quantgate.store import Store


def write_data_docs(
    store: Store, ref: ModelRef, run_id: str, docs_dir: Path, files: list[str], main: str = "index.html"
) -> str:
    """The held-out validation's GX Data Docs (pages and the static assets they load, made to render
    offline by quantgate.datadocs) under the run's own prefix. Returns the key of the `main` page."""
    prefix = f"{run_prefix(ref, run_id)}data_docs/"
    for rel in files:
        store.put_file(prefix + rel, docs_dir / rel)
    return prefix + main


def write_run_report(store: Store, ref: ModelRef, run_id: str, report: dict[str, Any]) -> str:
    key = f"{run_prefix(ref, run_id)}report.json"
    try:
        _put_json(store, key, report, run_id=run_id)
    except StorageError:
        # The run report is best effort: it must never hide the error that ended the run.
        return ""
    return key
