"""The migrated SQLite template every test server starts from (infra.prefect_server.sqlite_template):
built once however many servers race for it, never left half built, copied only where no database is."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from infra import prefect_server
from infra.prefect_server import TEMPLATE_ENV, seed_sqlite, sqlite_template


def _write(database: Path, mark: str) -> None:
    """A real SQLite database in WAL mode, as Prefect's, its last row still in the write-ahead log."""
    db = sqlite3.connect(database)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE mark (v TEXT)")
    db.execute("INSERT INTO mark VALUES (?)", (mark,))
    db.commit()
    _open.append(db)  # still open, as a process that has not exited yet: its log is not folded in


_open: list[sqlite3.Connection] = []


def _mark(database: Path) -> str:
    """The mark, read from a copy of the file alone (what seed_sqlite copies)."""
    copy = database.with_name("copy-" + database.name)
    copy.write_bytes(database.read_bytes())
    with contextlib.closing(sqlite3.connect(copy)) as db:
        mark = db.execute("SELECT v FROM mark").fetchone()[0]
    for leftover in copy.parent.glob(copy.name + "*"):
        leftover.unlink()
    return mark


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`prefect server database upgrade` replaced by a slow writer of the URL's file: each call recorded."""
    calls: list[str] = []

    def migrate(_env: dict[str, str], url: str) -> None:
        calls.append(url)
        time.sleep(0.3)  # long enough for every racer to reach the lock while the first builds
        _write(Path(url.removeprefix("sqlite+aiosqlite:///")), "migrated")

    monkeypatch.setattr(prefect_server, "migrate", migrate)
    return calls


def test_racing_servers_build_the_template_once(tmp_path: Path, builds: list[str]) -> None:
    target = tmp_path / "cache" / "prefect-x.db"
    got: list[Path] = []
    racers = [threading.Thread(target=lambda: got.append(sqlite_template(target))) for _ in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert got == [target] * 4
    assert len(builds) == 1, builds
    assert _mark(target) == "migrated"
    assert not target.with_name("prefect-x.db.building").exists()


def test_a_failed_build_leaves_no_template_and_the_next_call_builds_it(
    tmp_path: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "prefect-x.db"

    def broken(_env: dict[str, str], url: str) -> None:
        _write(Path(url.removeprefix("sqlite+aiosqlite:///")), "half")
        raise RuntimeError("prefect server database upgrade failed")

    with monkeypatch.context() as patch:
        patch.setattr(prefect_server, "migrate", broken)
        with pytest.raises(RuntimeError, match="upgrade failed"):
            sqlite_template(target)
    assert list(tmp_path.iterdir()) == [tmp_path / "prefect-x.db.lock"]  # no template, no half-built file
    assert _mark(sqlite_template(target)) == "migrated"
    assert len(builds) == 1


def test_seed_copies_only_when_asked_and_only_where_no_database_is(
    tmp_path: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TEMPLATE_ENV, raising=False)
    seed_sqlite(tmp_path / "off" / "prefect.db")
    assert not (tmp_path / "off").exists()  # not asked: the server migrates its own database

    monkeypatch.setenv(TEMPLATE_ENV, str(tmp_path / "cache" / "prefect-x.db"))
    seed_sqlite(tmp_path / "new" / "prefect.db")
    assert _mark(tmp_path / "new" / "prefect.db") == "migrated"

    existing = tmp_path / "old" / "prefect.db"
    existing.parent.mkdir()
    existing.write_bytes(b"a database with runs in it")
    seed_sqlite(existing)
    assert existing.read_bytes() == b"a database with runs in it"
    assert len(builds) == 1
