"""The fault matrix of tests/fault_matrix.py on the real SeaweedFS, at representative positions: a 503 at
the manifest write (the commit point) and at the current.json write (the pointer swap), request lost
(`before`) and applied with its answer lost (`after`), for the ONNX Runtime recipe. Every write position x
every mode x both engines runs on the in-memory store in tests/flows/test_fault_matrix.py; this proves the
same outcomes with S3's conditional writes and boto3's error translation in the path."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from quantgate.settings import Settings
from quantgate.storage import ObjectStore
from tests.fault_matrix import walk_fault_matrix
from tests.faults import FaultPlan, install
from tests.integration.conftest import drop_bucket


@pytest.fixture
def fresh_bucket(
    seaweed, monkeypatch: pytest.MonkeyPatch, s3_env: Settings
) -> Iterator[Callable[[], ObjectStore]]:
    made: list[str] = []

    def make() -> ObjectStore:
        # One bucket at a time: every bucket holds its own SeaweedFS volumes, and a matrix of ~50 positions
        # kept to the end ran the server out of volumes (HTTP 500) on CI's disk. A position is checked before
        # the next one makes its bucket, so the previous one can go.
        while made:
            drop_bucket(seaweed, made.pop())
        bucket = "qg-fm-" + secrets.token_hex(5)
        monkeypatch.setenv("QUANTGATE_BUCKET", bucket)
        store = ObjectStore(Settings())
        store.ensure_bucket()
        made.append(bucket)
        return store

    yield make
    for bucket in made:
        drop_bucket(seaweed, bucket)


def _commit_writes(path: list[tuple[str, str]]) -> list[int]:
    """The manifest write and the current.json write of the promotion."""
    return [i for i, (_, key) in enumerate(path) if key.endswith(("/manifest.json", "/current.json"))]


@pytest.mark.usefixtures("prefect_api", "no_retry_delay")
def test_a_503_at_the_manifest_and_pointer_writes_of_a_promotion_on_s3(
    fresh_bucket, monkeypatch, tmp_path, tiny_model_dir, small_sts, signing
):
    def _install(_store: ObjectStore, plan: FaultPlan) -> FaultPlan:
        return install(monkeypatch, plan)

    outcomes = walk_fault_matrix(
        "dynamic-int8-per-channel",
        fresh_bucket,
        _install,
        _commit_writes,
        ("before", "after"),
        tmp_path,
        tiny_model_dir,
        small_sts,
        signing,
    )
    assert len(outcomes) == 4, outcomes  # 2 positions x 2 modes
