"""The store is chosen by the scheme of QUANTGATE_STORE_URL (storage.open_store); S3 stays the default and
every older variable keeps its meaning."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quantgate.errors import ConfigError
from quantgate.settings import Settings
from quantgate.storage import ObjectStore, open_store, register_store, store_schemes
from quantgate.store import MemoryStore, drop_memory_store


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("QUANTGATE_STORE_URL", "QUANTGATE_BUCKET", "QUANTGATE_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_store_url_the_store_is_s3_at_the_bucket_and_endpoint_of_the_old_variables(monkeypatch):
    monkeypatch.setenv("QUANTGATE_BUCKET", "team-models")
    monkeypatch.setenv("QUANTGATE_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    settings = Settings()
    assert settings.store_address == "s3://team-models"
    store = open_store(settings)
    assert isinstance(store, ObjectStore)
    assert (store.bucket, store.endpoint) == ("team-models", "http://127.0.0.1:1")


def test_an_s3_url_names_the_bucket(monkeypatch):
    monkeypatch.setenv("QUANTGATE_STORE_URL", "s3://other-bucket")
    settings = Settings()
    assert settings.bucket == "other-bucket"
    store = open_store(settings)
    assert isinstance(store, ObjectStore)
    assert store.bucket == "other-bucket"


def test_a_memory_url_gives_one_store_per_name_to_every_caller_in_the_process(monkeypatch):
    monkeypatch.setenv("QUANTGATE_STORE_URL", "memory://sel-a")
    try:
        first = open_store(Settings())
        assert isinstance(first, MemoryStore)
        assert Settings().bucket == "sel-a"
        first.put_bytes("k", b"v")
        assert open_store(Settings()) is first  # what a task opens is what the test prepared
        assert open_store(Settings(store_url="memory://sel-b")).exists("k") is False
        drop_memory_store("sel-a")
        assert not open_store(Settings()).exists("k")  # dropped: the next use starts empty
    finally:
        drop_memory_store("sel-a")
        drop_memory_store("sel-b")


def test_an_unknown_scheme_is_a_clear_error_naming_the_url_and_the_known_schemes():
    with pytest.raises(ConfigError, match=r"'gs://models'.*'gs'.*memory://, s3://"):
        open_store(Settings(store_url="gs://models"))


@pytest.mark.parametrize("url", ["models", "s3://", "memory://a/b", "://x"])
def test_a_store_url_without_scheme_and_bucket_is_refused_with_an_example(url):
    with pytest.raises(ValidationError, match=r"not <scheme>://<bucket>.*s3://quantgate"):
        Settings(store_url=url)


def test_a_store_url_and_a_bucket_that_disagree_are_refused(monkeypatch):
    monkeypatch.setenv("QUANTGATE_BUCKET", "one-bucket")
    with pytest.raises(ValidationError, match="name different buckets"):
        Settings(store_url="s3://another")
    assert Settings(store_url="s3://one-bucket").bucket == "one-bucket"


def test_a_registered_scheme_is_opened_with_the_settings_and_the_urls_name():
    seen = []
    register_store(
        "test-sel", lambda settings, name: seen.append((settings.bucket, name)) or MemoryStore(name)
    )
    try:
        assert "test-sel" in store_schemes()
        assert open_store(Settings(store_url="test-sel://abc")).bucket == "abc"
        assert seen == [("abc", "abc")]
    finally:
        from quantgate import storage

        storage._STORES.pop("test-sel", None)


def test_a_memory_url_is_refused_outside_tests_naming_the_way_out(monkeypatch):
    """memory:// outside a test would let a worker report promotions that nothing stored."""
    monkeypatch.delenv("QUANTGATE_ALLOW_MEMORY_STORE", raising=False)
    with pytest.raises(ConfigError, match=r"loses everything when the process exits.*s3://<bucket>"):
        open_store(Settings(store_url="memory://prod"))
