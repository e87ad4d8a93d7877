"""Big files: multipart uploads (every request seen by the fault hook, any failure aborted, the file checked
against its digest before the upload commits), create-only past one PUT, downloads hashed as they stream and
resumed where a body broke off. A small S3 in a dict plays the server; the same behaviour against the real
SeaweedFS is tests/integration/test_multipart_s3.py."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from quantgate import storage
from quantgate.errors import ConflictError, IntegrityError, StorageError
from quantgate.lifecycle.download import _download_verified
from quantgate.registry import FileEntry
from quantgate.settings import Settings
from quantgate.storage import MIB, ObjectStore, make_client, sha256_file
from quantgate.store import MemoryStore
from tests.faults import FaultPlan, FaultyClient

PART = 5 * MIB
SIZE = 2 * PART + 123_456  # three parts: 5 MiB, 5 MiB and the rest
MULTIPART_WRITES = ["create_multipart_upload", "upload_part", "upload_part", "upload_part"]
MULTIPART_WRITES += ["complete_multipart_upload"]


def _error(code: str, status: int, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class _Body:
    """A streaming body that can break off after `fail_after` bytes, once."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._io = io.BytesIO(data)
        self._fail_after = fail_after

    def read(self, n: int) -> bytes:
        if self._fail_after is not None and self._io.tell() >= self._fail_after:
            raise ResponseStreamingError(error="connection reset (test)")
        return self._io.read(n)

    def close(self) -> None:
        pass


class FakeS3:
    """Just enough of S3 for put_file/get_file: objects, multipart uploads, If-None-Match, If-Match, Range."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.uploads: dict[str, tuple[str, dict[str, str], dict[int, bytes]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.break_next_body_after: int | None = None
        self.complete_hook: Any = None  # called after a completion: a racing writer's overwrite

    def _log(self, op: str, **kwargs: Any) -> None:
        self.requests.append((op, {k: v for k, v in kwargs.items() if k != "Body"}))

    def put_object(self, Bucket: str, Key: str, Body: Any, Metadata: dict[str, str], **kw: Any) -> dict:
        self._log("put_object", Key=Key, **kw)
        if kw.get("IfNoneMatch") == "*" and Key in self.objects:
            raise _error("PreconditionFailed", 412, "PutObject")
        data = Body.read() if hasattr(Body, "read") else Body
        self.objects[Key] = (data, hashlib.md5(data).hexdigest(), Metadata)  # noqa: S324 - an ETag
        return {"ETag": f'"{self.objects[Key][1]}"'}

    def create_multipart_upload(self, Bucket: str, Key: str, Metadata: dict[str, str], **kw: Any) -> dict:
        self._log("create_multipart_upload", Key=Key, **kw)
        upload_id = f"u{len(self.requests)}"
        self.uploads[upload_id] = (Key, Metadata, {})
        return {"UploadId": upload_id}

    def upload_part(
        self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes, **kw: Any
    ) -> dict:
        self._log("upload_part", Key=Key, PartNumber=PartNumber, **kw)
        if UploadId not in self.uploads:
            raise _error("NoSuchUpload", 404, "UploadPart")
        self.uploads[UploadId][2][PartNumber] = Body
        return {"ETag": f'"{hashlib.md5(Body).hexdigest()}"'}  # noqa: S324

    def complete_multipart_upload(self, Bucket: str, Key: str, UploadId: str, **kw: Any) -> dict:
        self._log("complete_multipart_upload", Key=Key, **kw)
        if kw.get("IfNoneMatch") == "*" and Key in self.objects:
            raise _error("PreconditionFailed", 412, "CompleteMultipartUpload")
        key, metadata, parts = self.uploads.pop(UploadId)
        data = b"".join(parts[p["PartNumber"]] for p in kw["MultipartUpload"]["Parts"])
        etag = hashlib.md5(data).hexdigest() + f"-{len(parts)}"  # noqa: S324
        self.objects[key] = (data, etag, metadata)
        if self.complete_hook:
            self.complete_hook(key)
        return {"ETag": f'"{etag}"'}

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict:
        self._log("abort_multipart_upload", Key=Key)
        self.uploads.pop(UploadId, None)
        return {}

    def list_multipart_uploads(self, Bucket: str, Prefix: str = "") -> dict:
        self._log("list_multipart_uploads", Prefix=Prefix)
        ups = [{"Key": k, "UploadId": u} for u, (k, _, _) in self.uploads.items() if k.startswith(Prefix)]
        return {"Uploads": ups}

    def head_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        if Key not in self.objects:
            raise _error("404", 404, "HeadObject")
        data, etag, metadata = self.objects[Key]
        return {"ContentLength": len(data), "ETag": f'"{etag}"', "Metadata": metadata}

    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict:
        self._log("get_object", Key=Key, **kw)
        if Key not in self.objects:
            raise _error("NoSuchKey", 404, "GetObject")
        data, etag, _ = self.objects[Key]
        if "IfMatch" in kw and kw["IfMatch"] != f'"{etag}"':
            raise _error("PreconditionFailed", 412, "GetObject")
        start = int(kw["Range"].removeprefix("bytes=").rstrip("-")) if "Range" in kw else 0
        fail_after, self.break_next_body_after = self.break_next_body_after, None
        body = _Body(data[start:], fail_after)
        return {"Body": body, "ContentLength": len(data) - start, "ETag": f'"{etag}"'}


def _settings(**update: Any) -> Settings:
    return Settings(
        bucket="quantgate-test",
        s3_endpoint_url="http://127.0.0.1:1",
        multipart_threshold_mb=5,
        multipart_part_size_mb=5,
        **update,
    )


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx_data"
    path.write_bytes(bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256))
    return path


def _store(server: FakeS3, plan: FaultPlan | None = None) -> ObjectStore:
    client = FaultyClient(server, plan) if plan else server
    return ObjectStore(_settings(), client=client)


def test_each_request_of_a_multipart_upload_is_a_write_the_fault_hook_sees(big):
    server, plan = FakeS3(), FaultPlan()
    seen: list[int] = []
    digest = _store(server, plan).put_file("registered/m/v/model.onnx_data", big, progress=seen.append)
    assert [op for op, _ in plan.writes] == MULTIPART_WRITES
    assert seen == [PART, PART, SIZE - 2 * PART]
    data, _, metadata = server.objects["registered/m/v/model.onnx_data"]
    assert data == big.read_bytes()
    assert metadata["sha256"] == digest == sha256_file(big)  # the whole file's sha256, as for one PUT
    parts = [kw for op, kw in server.requests if op == "upload_part"]
    # Each part carries its own SHA-256 (S3 has no full-object SHA-256 for a multipart object).
    assert all(p["ChecksumSHA256"] for p in parts)
    assert server.requests[0][0] == "create_multipart_upload"
    assert server.requests[0][1]["ChecksumAlgorithm"] == "SHA256"


def test_a_file_at_or_below_the_threshold_is_one_put(tmp_path):
    server, plan = FakeS3(), FaultPlan()
    small = tmp_path / "config.json"
    small.write_bytes(b"{}" * 1000)
    seen: list[int] = []
    _store(server, plan).put_file("k/config.json", small, progress=seen.append)
    assert [op for op, _ in plan.writes] == ["put_object"]
    assert seen == [2000]


@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("at", range(len(MULTIPART_WRITES)))
def test_a_fault_at_any_multipart_write_aborts_the_upload(big, at, mode):
    server = FakeS3()
    plan = FaultPlan(at=at, mode=mode)
    with pytest.raises(StorageError, match="ServiceUnavailable"):
        _store(server, plan).put_file("k/model.onnx_data", big)
    assert server.uploads == {}  # no parts left behind, even when the create's answer was lost
    committed = at == len(MULTIPART_WRITES) - 1 and mode == "after"
    # Only a completion whose answer was lost has stored the object (as a PUT whose answer was lost).
    assert ("k/model.onnx_data" in server.objects) == committed
    if committed:
        assert server.objects["k/model.onnx_data"][0] == big.read_bytes()
    assert plan.writes[-1][0] == "abort_multipart_upload" or (at == 0 and mode == "before")


def test_a_file_that_changed_since_it_was_hashed_is_never_stored(big):
    server, plan = FakeS3(), FaultPlan()
    stale = hashlib.sha256(b"the file as it was registered").hexdigest()
    with pytest.raises(IntegrityError, match="changed while it was uploaded"):
        _store(server, plan).put_file("k/model.onnx_data", big, digest=stale)
    assert server.objects == {}
    assert server.uploads == {}
    assert [op for op, _ in plan.writes] == [*MULTIPART_WRITES[:-1], "abort_multipart_upload"]


def test_create_only_stays_one_put_below_five_gib(big):
    server, plan = FakeS3(), FaultPlan()
    _store(server, plan).put_file("k/model.onnx_data", big, create_only=True)
    assert [op for op, _ in plan.writes] == ["put_object"]
    with pytest.raises(ConflictError, match="already exists"):
        _store(server, plan).put_file("k/model.onnx_data", big, create_only=True)


def test_create_only_multipart_refuses_an_existing_key_and_sends_if_none_match(big, monkeypatch):
    monkeypatch.setattr(storage, "SINGLE_PUT_MAX", MIB)  # as for a file past 5 GiB
    server, plan = FakeS3(), FaultPlan()
    store = _store(server, plan)
    store.put_file("k/model.onnx_data", big, create_only=True)
    complete = [kw for op, kw in server.requests if op == "complete_multipart_upload"]
    assert complete[0]["IfNoneMatch"] == "*"
    before = len(plan.writes)
    with pytest.raises(ConflictError, match="already exists"):
        store.put_file("k/model.onnx_data", big, create_only=True)
    assert len(plan.writes) == before  # refused by a HEAD before a byte was uploaded
    # The HEAD passed, another writer committed meanwhile: the completion's 412 refuses, the upload aborts.
    monkeypatch.setattr(store, "exists", lambda key: False)
    with pytest.raises(ConflictError, match="already exists"):
        store.put_file("k/model.onnx_data", big, create_only=True)
    assert server.uploads == {}


def test_create_only_multipart_overwritten_by_a_racing_completion_is_a_conflict(big, monkeypatch):
    """SeaweedFS 4.48 answered 200 to up to 6 of 8 racing conditional completions (benchmarks/
    multipart_race.py): the HEAD after ours shows whether the object is still ours."""
    monkeypatch.setattr(storage, "SINGLE_PUT_MAX", MIB)
    server = FakeS3()
    server.complete_hook = lambda key: server.objects.__setitem__(key, (b"theirs", "other-1", {}))
    with pytest.raises(ConflictError, match="another writer"):
        _store(server).put_file("k/model.onnx_data", big, create_only=True)


def test_part_size_grows_to_fit_ten_thousand_parts():
    store = ObjectStore(_settings(), client=FakeS3())
    assert store._part_size(SIZE) == PART
    size = 200 * 2**30  # 200 GiB: 10,000 parts of 5 MiB hold only 48.8 GiB
    assert store._part_size(size) % MIB == 0
    assert -(-size // store._part_size(size)) <= storage.MAX_PARTS


def test_download_returns_the_sha256_of_what_it_wrote_and_reports_progress(big, tmp_path):
    server = FakeS3()
    store = _store(server)
    digest = store.put_file("k/model.onnx_data", big)
    seen: list[int] = []
    assert store.get_file("k/model.onnx_data", tmp_path / "back", progress=seen.append) == digest
    assert sum(seen) == SIZE
    assert (tmp_path / "back").read_bytes() == big.read_bytes()


def test_a_body_that_breaks_off_resumes_from_where_it_stopped_on_the_same_object(big, tmp_path):
    server = FakeS3()
    store = _store(server)
    digest = store.put_file("k/model.onnx_data", big)
    server.break_next_body_after = 3 * MIB
    assert store.get_file("k/model.onnx_data", tmp_path / "back") == digest
    gets = [kw for op, kw in server.requests if op == "get_object"]
    assert gets[1]["Range"] == f"bytes={3 * MIB}-"
    assert gets[1]["IfMatch"] == f'"{server.objects["k/model.onnx_data"][1]}"'
    assert (tmp_path / "back").read_bytes() == big.read_bytes()


def test_an_object_replaced_mid_download_is_not_stitched_together(big, tmp_path):
    server = FakeS3()
    store = _store(server)
    store.put_file("k/model.onnx_data", big)
    server.break_next_body_after = MIB
    real_get = server.get_object

    def replaced_then_get(**kw: Any) -> dict:
        if "Range" in kw:
            server.objects["k/model.onnx_data"] = (b"new", "other", {})
        return real_get(**kw)

    server.get_object = replaced_then_get  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="replaced while it was downloaded"):
        store.get_file("k/model.onnx_data", tmp_path / "back")
    assert not (tmp_path / "back").exists()
    assert not (tmp_path / "back.part").exists()


def test_a_download_whose_sha256_differs_from_the_record_is_refused(tmp_path):
    store = MemoryStore()
    store.put_bytes("k/model.onnx", b"tampered")
    entry = FileEntry(path="model.onnx", sha256=hashlib.sha256(b"original").hexdigest(), size=8)
    with pytest.raises(IntegrityError, match="changed after registration"):
        _download_verified(store, "k/model.onnx", tmp_path / "model.onnx", entry)
    assert not (tmp_path / "model.onnx").exists()


def test_a_store_whose_get_file_returns_nothing_is_hashed_by_the_caller(tmp_path):
    """Stores written before get_file returned the digest keep working, and are still checked."""

    class OldStore(MemoryStore):
        def get_file(self, key: str, path: Path, max_bytes: int | None = None) -> None:  # type: ignore[override]
            super().get_file(key, path, max_bytes)

    store = OldStore()
    store.put_bytes("k/model.onnx", b"tampered")
    entry = FileEntry(path="model.onnx", sha256=hashlib.sha256(b"original").hexdigest(), size=8)
    with pytest.raises(IntegrityError):
        _download_verified(store, "k/model.onnx", tmp_path / "model.onnx", entry)
    good = FileEntry(path="model.onnx", sha256=hashlib.sha256(b"tampered").hexdigest(), size=8)
    _download_verified(store, "k/model.onnx", tmp_path / "model.onnx", good)


@pytest.mark.parametrize("mode", ["when_supported", "when_required"])
def test_botocore_default_checksums_follow_the_setting(mode, monkeypatch):
    other = "when_required" if mode == "when_supported" else "when_supported"
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", other)  # the setting wins over AWS's variable
    config = make_client(_settings(s3_checksums=mode)).meta.config
    assert config.request_checksum_calculation == mode
    assert config.response_checksum_validation == mode


def test_unset_the_checksum_choice_is_botocores_own(monkeypatch):
    """Unset, AWS's own environment variables still decide: the setting never silently overrides them."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    config = make_client(_settings()).meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


def test_no_progress_bar_without_a_terminal():
    from quantgate import cli

    with cli._transfer_bars() as progress:
        assert progress is None


def test_a_terminal_gets_a_bar_for_large_files_only(monkeypatch):
    from rich.console import Console

    from quantgate import cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=100))
    monkeypatch.setenv("QUANTGATE_MULTIPART_THRESHOLD_MB", "5")
    with cli._transfer_bars() as progress:
        assert progress("config.json", 2000) is None
        advance = progress("model.onnx_data", SIZE)
        advance(SIZE)
    assert "model.onnx_data" in screen.getvalue()
    assert "config.json" not in screen.getvalue()


def test_clients_share_the_parsed_service_models_and_still_read_their_own_credentials(monkeypatch):
    """Each client has a session of its own (credentials resolved anew) and the process's one loader of
    S3's service model: a second client parses no model file again."""
    from botocore.loaders import JSONFileLoader

    make_client(_settings())  # whichever client comes first in this process parses the models
    reads: list[str] = []
    real = JSONFileLoader.load_file
    monkeypatch.setattr(
        JSONFileLoader, "load_file", lambda self, path: reads.append(path) or real(self, path)
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    one = make_client(_settings())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "second-secret")
    two = make_client(_settings())
    assert reads == []
    # botocore keeps a client's credentials on its request signer (no public accessor).
    assert one._request_signer._credentials.access_key == "first-key"
    assert two._request_signer._credentials.access_key == "second-key"
