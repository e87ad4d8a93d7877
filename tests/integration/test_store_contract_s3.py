"""The S3 store on real SeaweedFS keeps the `Store` contract (tests/store_contract.py), the same checks
the in-memory store passes."""

from __future__ import annotations

import pytest

from tests.store_contract import CONTRACT, CONTRACT_WITH_TMP


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__)
def test_s3_store_contract(check, store):
    check(store)


@pytest.mark.parametrize("check", CONTRACT_WITH_TMP, ids=lambda c: c.__name__)
def test_s3_store_contract_with_files(check, store, tmp_path):
    check(store, tmp_path)
