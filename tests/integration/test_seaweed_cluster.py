"""SeaweedFS as a cluster (infra/seaweed_cluster.py): 1 master, 3 volume servers with replication 001,
2 filers sharing one PostgreSQL metadata store, each filer with its own S3 gateway. One cluster per
module, on ports 4650-4658 (gRPC 14650-14657), stopped in teardown also when a test fails."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from infra.seaweed_cluster import FILERS, VOLUMES, SeaweedCluster
from quantgate.errors import ConflictError
from quantgate.settings import Settings
from quantgate.storage import ObjectStore
from tests.integration.conftest import ACCESS_KEY, SECRET_KEY
from tests.store_contract import CONTRACT, CONTRACT_WITH_TMP

pytestmark = pytest.mark.scale

RACERS = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedCluster]:
    cluster = SeaweedCluster(tmp_path_factory.mktemp("seaweed-cluster"), ACCESS_KEY, SECRET_KEY)
    cluster.start()
    try:
        yield cluster
    finally:
        # Throwaway data: a filer still in its 15 s gRPC graceful stop after 5 s is killed.
        cluster.stop(timeout=5)


def _client(endpoint: str):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )


@pytest.fixture
def stores(cluster: SeaweedCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ObjectStore]]:
    """One ObjectStore per S3 gateway, all on one fresh bucket (created through the first gateway)."""
    bucket = "qg-" + secrets.token_hex(6)
    monkeypatch.delenv("QUANTGATE_STORE_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    out = [ObjectStore(Settings(s3_endpoint_url=url, bucket=bucket)) for url in cluster.endpoint_urls]
    out[0].ensure_bucket()
    yield out
    client = _client(cluster.endpoint_urls[0])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("gateway", range(FILERS))
@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_store_contract_through_each_gateway(check, gateway, stores):
    check(stores[gateway])


@pytest.mark.parametrize("gateway", range(FILERS))
@pytest.mark.parametrize("check", CONTRACT_WITH_TMP, ids=lambda c: c.__name__)
def test_store_contract_with_files_through_each_gateway(check, gateway, stores, tmp_path):
    check(stores[gateway], tmp_path)


def test_a_bucket_and_key_made_through_one_gateway_are_seen_through_the_other(stores):
    stores[0].put_bytes("one/namespace", b"shared")
    assert stores[1].get_bytes("one/namespace") == b"shared"
    stores[1].delete("one/namespace")
    assert not stores[0].exists("one/namespace")


@pytest.mark.parametrize("round_", range(3))
def test_racing_create_only_writes_across_both_gateways_have_one_winner(stores, round_):
    """8 writers released together by a barrier, 4 through each gateway, all create-only on one key:
    exactly one is accepted, the other 7 get 412 (ConflictError), and every reader through either
    gateway sees the winner's bytes."""
    key = f"race/{round_}/manifest.json"
    wins: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(RACERS)

    def write(i: int) -> None:
        body = f"writer {i} ".encode() * 100
        barrier.wait()
        try:
            stores[i % FILERS].put_bytes(key, body, create_only=True)
            wins.append(i)
        except ConflictError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(wins) == 1, f"{len(wins)} create-only writers won: {wins}"
    expected = f"writer {wins[0]} ".encode() * 100
    for store in stores:
        assert store.get_bytes(key) == expected


def test_reads_keep_working_with_one_volume_server_stopped(cluster, stores):
    """Objects written with replication 001 have every chunk on two volume servers: with the server
    holding the most of them stopped, every object still reads back with its sha256 through both
    gateways, at once (the filers still have the stopped server's address cached) and again once the
    master has dropped it. Runs last in this module: the volume server stays stopped."""
    objects = {f"rep/{i}.bin": secrets.token_bytes(1000 + 40_000 * i) for i in range(12)}
    for i, (key, data) in enumerate(objects.items()):
        stores[i % FILERS].put_bytes(key, data)
    holders = [servers for key in objects for servers in cluster.volume_servers_of(stores[0].bucket, key)]
    assert holders, "the objects have no chunks on volume servers"
    assert all(len(servers) == 2 for servers in holders), holders  # 001: two copies of every chunk
    victim = max(range(VOLUMES), key=lambda v: sum(v in servers for servers in holders))
    assert any(victim in servers for servers in holders)
    cluster.stop_volume(victim)

    def read_all() -> None:
        for store in stores:
            for key, data in objects.items():
                assert sha256(store.get_bytes(key)) == sha256(data), f"{key} through {store.endpoint}"

    read_all()
    deadline = time.monotonic() + 30
    while cluster.volume_servers_seen() == VOLUMES and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.volume_servers_seen() == VOLUMES - 1
    read_all()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
