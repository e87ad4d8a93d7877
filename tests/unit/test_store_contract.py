"""The in-memory store keeps the same contract as S3 (tests/store_contract.py)."""

from __future__ import annotations

import pytest

from quantgate.errors import StorageError, StorageUnreachableError
from quantgate.store import MemoryStore
from tests.store_contract import CONTRACT, CONTRACT_WITH_TMP


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_memory_store_contract(check):
    check(MemoryStore())


@pytest.mark.parametrize("check", CONTRACT_WITH_TMP, ids=lambda c: c.__name__)
def test_memory_store_contract_with_files(check, tmp_path):
    check(MemoryStore(), tmp_path)


def test_an_injected_fault_loses_the_write_or_only_its_answer():
    def lose(op, key):
        if key == "lost":
            raise StorageUnreachableError("injected")
        return "after" if key == "answer-lost" else None

    store = MemoryStore(fault=lose)
    with pytest.raises(StorageUnreachableError):
        store.put_bytes("lost", b"x")
    assert not store.exists("lost")
    with pytest.raises(StorageError):
        store.put_bytes("answer-lost", b"x")
    assert store.get_bytes("answer-lost") == b"x"
