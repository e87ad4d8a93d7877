"""Many versions on SeaweedFS: past S3's 1,000-entry pages, list_registered and the sweep still find every
version (issue #24 item 8). The request counts and timings: benchmarks/many_versions.py."""

from __future__ import annotations

from quantgate import lifecycle
from quantgate.storage import ObjectStore
from tests.many_versions import MAX_FAILURES, expected_plan, population, write_all

VERSIONS = 1100  # two listed entries per version (registration.json, uploads/): three pages


def test_listing_and_sweep_stay_correct_past_one_page(store: ObjectStore):
    objects, by_state = population(VERSIONS, files=1)
    write_all(store, objects, threads=16)
    registered = lifecycle.list_registered(store)
    assert len(registered) == VERSIONS
    assert registered == sorted((r for refs in by_state.values() for r in refs), key=lambda r: r.version)
    assert lifecycle.list_registered(store, "m") == registered
    keys, groups = store.list_grouped("registered/m/", "/uploads/")
    assert len(keys) + len(groups) > 2000  # the listing really crossed pages
    plan = lifecycle.sweep_plan(store, MAX_FAILURES)
    pending, skipped = expected_plan(by_state)
    assert plan.pending == pending
    assert set(plan.skipped) == skipped
