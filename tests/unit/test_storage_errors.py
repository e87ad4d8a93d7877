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
