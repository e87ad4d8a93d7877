"""Multipart uploads against the real SeaweedFS 4.48, with a 5 MiB threshold and 5 MiB parts (S3's smallest)
so that a ~11 MiB file goes up in three parts: round trip with its sha256, create-only refused by the
server's own If-None-Match on the completion, a fault at each write of one upload aborting it (no
parts left) and leaving storage as it was, and an uploading process SIGKILLed mid-upload (no object, a
retry stores the right bytes). Six tests, one bucket each: ~40 s with the server's start."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantgate import storage
from quantgate.errors import ConflictError, StorageError
from quantgate.settings import Settings
from quantgate.storage import MIB, ObjectStore, make_client, sha256_file
from tests.conftest import HANG_S
from tests.faults import FaultPlan, FaultyClient
from tests.integration.conftest import snapshot

SIZE = 2 * 5 * MIB + 654_321
WRITES = ["create_multipart_upload", "upload_part", "upload_part", "upload_part", "complete_multipart_upload"]
KEY = "registered/m/v/uploads/u1/model/model.onnx_data"


@pytest.fixture
def settings(s3_env: Settings) -> Settings:
    return s3_env.model_copy(update={"multipart_threshold_mb": 5, "multipart_part_size_mb": 5})


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx_data"
    path.write_bytes(bytes(range(251)) * (SIZE // 251) + b"z" * (SIZE % 251))
    return path


def _store(settings: Settings, plan: FaultPlan) -> ObjectStore:
    return ObjectStore(settings, client=FaultyClient(make_client(settings), plan))


def _unfinished(store: ObjectStore) -> list[str]:
    return [u["Key"] for u in store._call("list_multipart_uploads").get("Uploads", [])]


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_a_multipart_upload_round_trips_with_its_sha256(settings, big, tmp_path, checksums):
    settings = settings.model_copy(update={"s3_checksums": checksums})  # boto3's CRCs on, then off
    plan = FaultPlan()
    store = _store(settings, plan)
    sent: list[int] = []
    digest = store.put_file(KEY, big, progress=sent.append)
    assert [op for op, _ in plan.writes] == WRITES
    assert sum(sent) == SIZE
    head = store.head(KEY)
    # SeaweedFS keeps a checksum of the part checksums ("…-3"); the file's sha256 is the metadata's.
    assert head.sha256 == digest == sha256_file(big)
    assert head.size == SIZE
    got: list[int] = []
    assert store.get_file(KEY, tmp_path / "back", max_bytes=SIZE, progress=got.append) == digest
    assert sum(got) == SIZE
    assert (tmp_path / "back").read_bytes() == big.read_bytes()
    assert _unfinished(store) == []


def test_seaweedfs_refuses_a_create_only_multipart_completion_on_an_existing_key(settings, big, monkeypatch):
    monkeypatch.setattr(storage, "SINGLE_PUT_MAX", MIB)  # the path a file past 5 GiB takes
    plan = FaultPlan()
    store = _store(settings, plan)
    store.put_file(KEY, big, create_only=True)
    assert [op for op, _ in plan.writes] == WRITES
    before = snapshot(store)
    other = big.with_name("other")
    other.write_bytes(b"o" * SIZE)
    with pytest.raises(ConflictError, match="already exists"):
        store.put_file(KEY, other, create_only=True)  # the HEAD before the upload refuses
    # Past the HEAD (another writer completed in between): the server's If-None-Match on the completion.
    monkeypatch.setattr(store, "exists", lambda key: False)
    plan.writes.clear()
    with pytest.raises(ConflictError, match="already exists"):
        store.put_file(KEY, other, create_only=True)
    assert [op for op, _ in plan.writes] == [*WRITES, "abort_multipart_upload"]
    assert snapshot(store) == before
    assert store.head(KEY).sha256 == sha256_file(big)
    assert _unfinished(store) == []


def test_a_fault_at_every_write_of_a_multipart_upload_aborts_it_and_leaves_storage_as_before(settings, big):
    """Each position in turn, before and after the server applies it, on one bucket (a bucket costs ~2 s
    here): no unfinished upload is ever left (ListMultipartUploads), and storage is unchanged, except that a
    completion whose answer was lost has stored the whole object (as a single PUT whose answer was lost)."""
    ObjectStore(settings).put_bytes("registered/m/v/registration.json", b"{}")
    for mode in ("before", "after"):
        for at, op in enumerate(WRITES):
            plan = FaultPlan(at=at, mode=mode)
            store = _store(settings, plan)
            before = snapshot(store)
            with pytest.raises(StorageError, match="ServiceUnavailable"):
                store.put_file(KEY, big)
            assert plan.injected == [(op, KEY)]
            assert _unfinished(store) == [], f"parts left after a fault {mode} {op}"
            if op == "complete_multipart_upload" and mode == "after":
                assert store.head(KEY).sha256 == sha256_file(big)
                store.delete(KEY)
            assert snapshot(store) == before, f"storage changed by a fault {mode} {op}"


_KILLED_UPLOAD = """
import os, signal, sys
from pathlib import Path
from quantgate.settings import Settings
from quantgate.storage import ObjectStore, make_client

class DiesAfterParts:
    def __init__(self, client, parts):
        self._client, self._parts = client, parts
    def __getattr__(self, name):
        return getattr(self._client, name)
    def upload_part(self, **kwargs):
        answer = self._client.upload_part(**kwargs)
        self._parts -= 1
        if self._parts == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return answer

settings = Settings()
store = ObjectStore(settings, client=DiesAfterParts(make_client(settings), int(sys.argv[3])))
store.put_file(sys.argv[1], Path(sys.argv[2]))
"""


@pytest.mark.parametrize("parts", [1, 3], ids=["after-the-first-part", "before-the-completion"])
def test_a_process_killed_mid_upload_leaves_no_object_and_a_new_upload_of_the_key_succeeds(
    settings, big, parts
):
    """SIGKILL gives the uploader no chance to abort: the server keeps the parts it received (a bucket's
    AbortIncompleteMultipartUpload rule removes them, docs/storage.md), but no object appears under the key,
    storage is otherwise as it was, and the next upload of the key (a retry) stores the right bytes."""
    import os
    import subprocess
    import sys

    store = ObjectStore(settings)
    store.put_bytes("registered/m/v/registration.json", b"{}")
    before = snapshot(store)
    env = {**os.environ, "QUANTGATE_MULTIPART_THRESHOLD_MB": "5", "QUANTGATE_MULTIPART_PART_SIZE_MB": "5"}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_UPLOAD, KEY, str(big), str(parts)],
        env=env, capture_output=True, text=True, timeout=HANG_S, check=False,
        cwd=Path(__file__).resolve().parents[2],  # this checkout's quantgate, whatever the venv points at
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    assert not store.exists(KEY)
    assert snapshot(store) == before
    assert _unfinished(store) == [KEY]  # what the kill left: parts, never an object
    assert store.put_file(KEY, big) == sha256_file(big)
    assert store.head(KEY).sha256 == sha256_file(big)
    assert store.sha256_of_content(KEY) == sha256_file(big)
