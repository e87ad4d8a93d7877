"""S3 error responses become quantgate errors that name the problem and the way out (botocore's Stubber
plays the server's answers; the real-server behaviour is in tests/integration/test_storage.py)."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from quantgate.errors import ConflictError, NotFoundError, StorageAuthError, StorageError
from quantgate.settings import Settings
from quantgate.storage import ObjectStore


def _store(code: str, status: int) -> ObjectStore:
    client = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="stub",  # noqa: S106 - never sent: the Stubber answers
    )
    stub = Stubber(client)
    stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
    stub.activate()
    return ObjectStore(Settings(bucket="quantgate-test", s3_endpoint_url="http://127.0.0.1:1"), client=client)


@pytest.mark.parametrize(
    ("code", "status", "error", "says"),
    [
        ("InternalError", 500, StorageError, "server itself failed, see its log"),
        ("SlowDown", 503, StorageError, "HTTP 503"),
        ("AccessDenied", 403, StorageAuthError, "check AWS_ACCESS_KEY_ID"),
        ("NoSuchBucket", 404, NotFoundError, "quantgate init"),
        ("NoSuchKey", 404, NotFoundError, "does not exist"),
        ("PreconditionFailed", 412, ConflictError, "create-only"),
    ],
)
def test_s3_errors_name_the_problem_and_the_way_out(code, status, error, says):
    with pytest.raises(error, match=says):
        _store(code, status).get_bytes("runs/m/v/report.json")


def test_a_deep_digest_reads_the_object_a_chunk_at_a_time():
    """`verify --deep` of a model past 2 GB must not hold it in memory: the body is read in bounded chunks."""
    import hashlib
    import io

    from botocore.response import StreamingBody

    data = b"w" * (3 * 2**20 + 5)
    reads: list[int | None] = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    client = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="stub",  # noqa: S106
    )
    stub = Stubber(client)
    body = StreamingBody(Recording(data), len(data))
    stub.add_response("get_object", {"Body": body, "ContentLength": len(data), "ETag": '"e1"'})
    stub.activate()
    store = ObjectStore(
        Settings(bucket="quantgate-test", s3_endpoint_url="http://127.0.0.1:1"), client=client
    )
    assert store.sha256_of_content("m/model.onnx.data") == hashlib.sha256(data).hexdigest()
    assert len(reads) > 3, reads
    assert all(size is not None and 0 < size <= 2**20 for size in reads), reads
