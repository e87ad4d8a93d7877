"""Real parts: one SeaweedFS server (`weed mini` on 127.0.0.1, access keys required) per session, stopped
when the session ends, also on failure; the Prefect test harness is tests/conftest.py's `prefect_api`.
Every test gets its own bucket."""

from __future__ import annotations

import os
import secrets
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.prefect_stack import PrefectStack
from infra.seaweed import SeaweedServer
from quantgate.settings import Settings
from quantgate.storage import ObjectStore

ACCESS_KEY = "qgtest" + secrets.token_hex(4)
SECRET_KEY = "s3cr3t-" + secrets.token_urlsafe(24)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET_KEY)
    server.start()
    try:
        yield server
    finally:
        # The session's data is thrown away: a weed that has not exited 5 s after SIGTERM is killed (now
        # and then it took the whole default 20 s, on the slow tier's critical path).
        server.stop(timeout=5)


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    bucket = "qg-" + secrets.token_hex(6)
    monkeypatch.setenv("QUANTGATE_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("QUANTGATE_BUCKET", bucket)
    monkeypatch.delenv("QUANTGATE_STORE_URL", raising=False)  # an exported memory:// must not leak in
    monkeypatch.setenv("QUANTGATE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    settings = Settings()
    ObjectStore(settings).ensure_bucket()
    yield settings
    drop_bucket(seaweed, bucket)


def drop_bucket(server: SeaweedServer, bucket: str) -> None:
    """Empty and delete a test's bucket. SeaweedFS gives every bucket its own collection of volumes and
    caps the volume count at free disk / volume size, so a session that kept its ~100 buckets ran out
    of volumes on a smaller disk ("No writable volumes and no free volumes left", an S3 InternalError).
    Uses the session's own keys: a test may have put wrong ones in the environment on purpose."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )
    try:
        # Uploads cut short (the SIGKILL tests) leave multipart parts that keep a bucket non-empty.
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            warnings.warn(f"test bucket {bucket} not dropped: {exc}", stacklevel=1)


@pytest.fixture
def store(s3_env: Settings) -> ObjectStore:
    return ObjectStore(s3_env)


@contextmanager
def prefect_stack(tmp_path: Path, **settings: int) -> Iterator[PrefectStack]:
    """A real Prefect server, the process pool, the deployments and a worker on 127.0.0.1 (a free port),
    stopped also when the test fails. The sweep's hourly schedule is off: a test's runs are its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "prefect").mkdir()
    stack = PrefectStack(tmp_path / "prefect", port, **{"sweep_schedule": False, **settings})
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def snapshot(store: ObjectStore, prefix: str = "") -> dict[str, str]:
    """Every key under prefix with its ETag: equal snapshots mean storage was left exactly as it was."""
    return {obj.key: obj.etag for obj in store.list(prefix)}


def secret_in(text: str) -> bool:
    return SECRET_KEY in text


__all__ = ["ACCESS_KEY", "SECRET_KEY", "os", "secret_in", "snapshot"]
