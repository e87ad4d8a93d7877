"""The flows tier: the real Prefect flows (a session-scoped Prefect test harness) on the in-memory store,
`memory://<name>` (QUANTGATE_STORE_URL), with tiny models. No SeaweedFS: every task of a run opens the same
process-held store, fault hook included."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quantgate.settings import Settings
from quantgate.storage import open_store
from quantgate.store import MemoryStore, drop_memory_store


@pytest.fixture
def memory_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[], MemoryStore]]:
    """Makes a fresh, empty `memory://<name>` store the flow's Settings open (and forgets the previous
    one, so a long matrix holds one bucket at a time)."""
    monkeypatch.delenv("QUANTGATE_BUCKET", raising=False)
    monkeypatch.delenv("QUANTGATE_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("QUANTGATE_WORK_DIR", str(tmp_path / "work"))
    made: list[str] = []

    def make() -> MemoryStore:
        while made:
            drop_memory_store(made.pop())
        name = "qg-mem-" + secrets.token_hex(5)
        monkeypatch.setenv("QUANTGATE_STORE_URL", f"memory://{name}")
        made.append(name)
        store = open_store(Settings())
        assert isinstance(store, MemoryStore)
        return store

    yield make
    for name in made:
        drop_memory_store(name)
