"""What the storage layer promises, checked against the real SeaweedFS."""

from __future__ import annotations

import pytest

from quantgate.errors import ConflictError, NotFoundError
from quantgate.storage import sha256_bytes


def test_create_only_write_refuses_an_existing_key(store):
    store.put_bytes("k/manifest.json", b"first", create_only=True)
    with pytest.raises(ConflictError, match="already exists"):
        store.put_bytes("k/manifest.json", b"second", create_only=True)
    assert store.get_bytes("k/manifest.json") == b"first"


def test_server_keeps_the_sha256_sent_with_the_upload(store, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100_000)
    digest = store.put_file("k/blob", path)
    assert store.sha256_of("k/blob") == digest == sha256_bytes(b"x" * 100_000)
    back = tmp_path / "back"
    store.get_file("k/blob", back)
    assert back.read_bytes() == path.read_bytes()


def test_missing_objects_and_listing(store):
    with pytest.raises(NotFoundError):
        store.get_bytes("nope")
    assert not store.exists("nope")
    for i in range(3):
        store.put_bytes(f"registered/m/v{i}/registration.json", b"{}")
    assert store.list_prefixes("registered/m/") == ["v0", "v1", "v2"]
    assert len(list(store.list("registered/"))) == 3


def test_compare_and_swap_refuses_a_stale_etag(store):
    store.put_bytes("k/current.json", b"v1")
    _, etag = store.get_with_etag("k/current.json")
    store.put_bytes("k/current.json", b"v2", if_match=etag)  # fresh ETag: the swap goes through
    with pytest.raises(ConflictError):
        store.put_bytes("k/current.json", b"v3", if_match=etag)  # stale ETag: refused
    assert store.get_bytes("k/current.json") == b"v2"
    assert store.get_with_etag("k/missing.json") is None


def test_seaweed_start_picks_new_ports_when_one_is_taken_before_it_binds(tmp_path):
    """Another process can take a picked port before weed binds it (seen in CI): start() retries."""
    import secrets
    import socket

    from infra.seaweed import SeaweedServer

    server = SeaweedServer(tmp_path / "s3", "k" + secrets.token_hex(4), secrets.token_urlsafe(20))
    picked = dict(server.ports)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", picked["volume"]))
        squatter.listen()
        with server:
            assert server.ports != picked
            assert server.process is not None
            assert server.process.poll() is None
    assert server.process is None  # stopped on exit


def test_each_test_bucket_is_dropped_so_the_shared_server_keeps_free_volumes(store):
    """Every bucket is a SeaweedFS collection holding volumes, and the volume count is capped by free
    disk: buckets left behind by earlier tests once exhausted it in CI (PutObject -> InternalError).
    Whatever ran before this test, only this test's bucket may exist on the shared server."""
    buckets = [b["Name"] for b in store._client.list_buckets()["Buckets"]]
    assert buckets == [store.bucket]


def test_the_servers_files_are_readable_by_their_owner_only(seaweed, store):
    """Volumes hold every stored object: the server's folders are private (0700), so nothing below them
    can be reached by another user, and the volume data and index files are private themselves (weed
    runs under umask 077; it chmods its small .vif info files to 644 itself, behind the 0700 folders)."""
    import stat

    store.put_bytes("some/object", b"secret model bytes")
    paths = [seaweed.data_dir, *seaweed.data_dir.rglob("*")]
    folders = [p for p in paths if p.is_dir() and not p.is_symlink()]
    volumes = [p for p in paths if p.suffix in {".dat", ".idx", ".log", ".json"} and p.is_file()]
    assert len(folders) > 1
    assert any(p.suffix == ".dat" for p in volumes)
    loose = [
        f"{p} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in folders + volumes
        if p.lstat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ]
    assert not loose, loose
