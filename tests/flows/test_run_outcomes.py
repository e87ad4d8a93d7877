"""Events read back through the Prefect client: `quantgate rollback` announces
quantgate.model.rolled-back. The in-memory store."""

from __future__ import annotations

import time

import pytest

from quantgate import announce, lifecycle

pytestmark = pytest.mark.usefixtures("prefect_api")


def _events(name: str, version: str, timeout: float = 30):
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(labels={"quantgate.version": [version]}),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:  # the server writes events asynchronously: poll, bounded
            events = client.read_events(filter=flt, limit=50).events
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.3)


def test_a_rollback_is_announced(memory_env, tmp_path):
    from typer.testing import CliRunner

    from quantgate.cli import app
    from quantgate.registry import Manifest

    store = memory_env()
    for version in ("rb1", "rb2"):
        path = tmp_path / version / "model.int8.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(version.encode() * 100)
        manifest = Manifest(
            model="rolled", version=version, run_id=f"r-{version}", task="sentence-embedding", recipe={},
            files=[], source={}, thresholds={}, metrics={}, gates=[], benchmark={}, environment={},
        )  # fmt: skip
        lifecycle.promote(store, manifest, {"model.int8.onnx": path}, {}, actor="ci")
    result = CliRunner().invoke(app, ["rollback", "rolled", "--yes"])
    assert result.exit_code == 0, result.output
    (event,) = _events(announce.ROLLED_BACK, "rb1")
    assert event.resource.id == "quantgate.model.rolled"
    assert (event.payload["version"], event.payload["previous_version"]) == ("rb1", "rb2")
    assert not _events(announce.ROLLED_BACK, "rb2", timeout=0)  # the version rolled back to is the resource
