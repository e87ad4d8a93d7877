"""The `Store` contract (quantgate/store.py), written once and run against every implementation: the
in-memory store in tests/unit, the S3 store on real SeaweedFS in tests/integration."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from quantgate.errors import ConflictError, NotFoundError, SizeExceededError
from quantgate.store import RUN_METADATA, Store


def check_create_only_never_overwrites(store: Store) -> None:
    store.put_bytes("c/key", b"first", create_only=True)
    with pytest.raises(ConflictError):
        store.put_bytes("c/key", b"second", create_only=True)
    assert store.get_bytes("c/key") == b"first"


def check_racing_create_only_writers_have_one_winner(store: Store) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("race/key", str(i).encode(), create_only=True)
            wins.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_bytes("race/key") == str(wins[0]).encode()


def check_compare_and_swap(store: Store) -> None:
    store.put_bytes("cas/key", b"v1")
    found = store.get_with_etag("cas/key")
    assert found is not None
    data, etag = found
    assert data == b"v1"
    store.put_bytes("cas/key", b"v2", if_match=etag)
    with pytest.raises(ConflictError):  # the ETag read before v2 is stale now
        store.put_bytes("cas/key", b"v3", if_match=etag)
    assert store.get_bytes("cas/key") == b"v2"
    with pytest.raises((ConflictError, NotFoundError)):
        store.put_bytes("cas/missing", b"x", if_match=etag)
    assert not store.exists("cas/missing")


def check_missing_keys(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        store.get_bytes("missing/key")
    with pytest.raises(NotFoundError):
        store.head("missing/key")
    with pytest.raises(NotFoundError):
        store.get_file("missing/key", tmp_path / "out")
    assert store.get_with_etag("missing/key") is None
    assert not store.exists("missing/key")
    store.delete("missing/key")  # not an error


def check_checksums_and_run_tags(store: Store, tmp_path: Path) -> None:
    data = b"model bytes" * 100
    digest = store.put_bytes("m/model.onnx", data, run_id="run-1")
    assert digest == hashlib.sha256(data).hexdigest()
    head = store.head("m/model.onnx")
    assert (head.size, head.sha256) == (len(data), digest)
    assert head.metadata.get(RUN_METADATA) == "run-1"
    path = tmp_path / "f.bin"
    path.write_bytes(b"file")
    assert store.put_file("m/f.bin", path) == hashlib.sha256(b"file").hexdigest()
    assert RUN_METADATA not in store.head("m/f.bin").metadata
    moved: list[int] = []
    # get_file returns the SHA-256 of what it wrote, hashed as it streamed, and reports its progress.
    got = store.get_file("m/f.bin", tmp_path / "down" / "f.bin", progress=moved.append)
    assert got == hashlib.sha256(b"file").hexdigest()
    assert sum(moved) == 4
    assert (tmp_path / "down" / "f.bin").read_bytes() == b"file"


def check_content_digest_is_read_back(store: Store) -> None:
    """`sha256_of_content` hashes the bytes as stored now, over several read chunks (an object larger than
    one), and a missing key is NotFoundError, as for every read."""
    data = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB: more than one 1 MiB chunk, not a multiple of it
    store.put_bytes("d/model.onnx.data", data)
    assert store.sha256_of_content("d/model.onnx.data") == hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFoundError):
        store.sha256_of_content("d/missing")


def check_a_download_stops_at_its_declared_size(store: Store, tmp_path: Path) -> None:
    data = b"x" * (3 << 20)  # larger than one read chunk
    store.put_bytes("big/blob", data)
    out = tmp_path / "capped" / "blob"
    out.parent.mkdir()
    with pytest.raises(SizeExceededError, match="more than the 1 its record declares"):
        store.get_file("big/blob", out, max_bytes=1)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no .part left behind either
    store.get_file("big/blob", out, max_bytes=len(data))
    assert out.read_bytes() == data


def check_listing(store: Store) -> None:
    for key in ("l/b/2", "l/a/1", "l/a/sub/3", "l/top", "other/x"):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("l/")] == ["l/a/1", "l/a/sub/3", "l/b/2", "l/top"]
    assert sorted(store.list_prefixes("l/")) == ["a", "b"]
    store.delete("l/top")
    assert not store.exists("l/top")


def check_grouped_listing(store: Store) -> None:
    """S3's Delimiter of more than one character: searched after the prefix, cut after its first match."""
    keys = ["g/v1/registration.json", "g/v1/uploads/u/model/a", "g/v1/uploads/u/model/b"]
    keys += ["g/v2/uploads/u/model/a", "g/uploads/registration.json", "g/uploads/uploads/u/x", "h/x"]
    for key in keys:
        store.put_bytes(key, key.encode())
    keys, groups = store.list_grouped("g/", "/uploads/")
    assert keys == ["g/uploads/registration.json", "g/v1/registration.json"]
    assert groups == ["g/uploads/uploads/", "g/v1/uploads/", "g/v2/uploads/"]


CONTRACT = [
    check_create_only_never_overwrites,
    check_racing_create_only_writers_have_one_winner,
    check_compare_and_swap,
    check_listing,
    check_grouped_listing,
    check_content_digest_is_read_back,
]
CONTRACT_WITH_TMP = [
    check_missing_keys,
    check_checksums_and_run_tags,
    check_a_download_stops_at_its_declared_size,
]
