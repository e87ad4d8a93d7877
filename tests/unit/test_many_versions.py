"""Issue #24 item 8 (many versions) on the in-memory store: the sweep and list_registered give what the
code before gave, in every state, and the requests they cost (counted as S3 would see them) do not grow
with the files a version holds nor, per promoted version, with the model's audit log. The figures on a
real server: benchmarks/many_versions.py; paging past 1,000 keys:
tests/integration/test_many_versions_s3.py."""

from __future__ import annotations

import hashlib

from quantgate import lifecycle
from quantgate.lifecycle._records import _json_bytes
from quantgate.registry import Manifest, ModelRef, manifest_key
from quantgate.store import MemoryStore
from tests.many_versions import (
    MAX_FAILURES,
    CountingStore,
    expected_plan,
    old_list_registered,
    old_sweep_plan,
    population,
    write_all,
)


def _store(versions: int, files: int, models: tuple[str, ...] = ("m",)) -> tuple[MemoryStore, dict]:
    store = MemoryStore()
    by_model = {}
    for model in models:
        objects, by_state = population(versions, files, model)
        write_all(store, objects)
        by_model[model] = by_state
    return store, by_model


def _same_plan(store: MemoryStore) -> lifecycle.SweepPlan:
    new = lifecycle.sweep_plan(store, MAX_FAILURES)
    old = old_sweep_plan(store, MAX_FAILURES)
    assert new.pending == old.pending
    assert new.skipped == old.skipped
    assert new.failures == old.failures
    return new


def test_the_sweep_finds_what_it_found_before_in_every_state():
    store, by_model = _store(40, 3, models=("m", "n"))
    plan = _same_plan(store)
    pending, skipped = [], set()
    for by_state in by_model.values():
        p, s = expected_plan(by_state)
        pending += p
        skipped |= s
    assert plan.pending == sorted(pending, key=lambda r: (r.name, r.version))
    assert set(plan.skipped) == skipped
    assert "limit 3" in plan.skipped[str(by_model["m"]["failed"][0])]
    assert "unreadable run report" in plan.skipped[str(by_model["m"]["unreadable"][0])]


def test_list_registered_finds_only_versions_with_a_registration_record():
    store, _ = _store(20, 3, models=("m", "n"))
    every = lifecycle.list_registered(store)
    assert every == old_list_registered(store)
    assert len(every) == 40
    assert all(r.version != "v99999-no-registration" for r in every)
    assert lifecycle.list_registered(store, "n") == old_list_registered(store, "n")


def test_a_damaged_or_replaced_manifest_skips_or_reruns_only_its_version():
    store, by_model = _store(20, 2)
    damaged, replaced = by_model["m"]["promoted"][:2]
    store.put_bytes(manifest_key(damaged), b"{not json")
    manifest = Manifest.model_validate_json(store.get_bytes(manifest_key(replaced)))
    store.put_bytes(manifest_key(replaced), _json_bytes(manifest.model_copy(update={"run_id": "again"})))
    plan = _same_plan(store)
    assert "IntegrityError" in plan.skipped[str(damaged)]
    assert replaced in plan.pending  # re-promoted: its older event does not name this manifest's digest
    assert by_model["m"]["promoted"][2] not in plan.pending


def test_a_promotion_finished_by_the_real_tail_is_not_swept_again():
    store, by_model = _store(10, 2)
    unfinished = by_model["m"]["unfinished"][0]
    assert unfinished in lifecycle.sweep_plan(store, MAX_FAILURES).pending
    assert lifecycle.finish_promotion(store, unfinished, actor="sweep")
    assert unfinished not in _same_plan(store).pending
    assert not lifecycle.finish_promotion(store, unfinished, actor="sweep")  # audited: nothing to finish


def test_an_interrupted_promotion_without_manifest_is_not_decided():
    store, by_model = _store(10, 2)
    interrupted = by_model["m"]["interrupted"][0]
    assert any(k.startswith(f"promoted/m/{interrupted.version}/") for k in store.snapshot())
    assert lifecycle.decision_of(store, interrupted) is None
    assert interrupted in _same_plan(store).pending


def _sweep_requests(versions: int, files: int) -> tuple[int, int, int]:
    """(sweep, list_registered, old sweep) requests on a fresh population."""
    store, _ = _store(versions, files)
    counted = CountingStore(store)
    lifecycle.sweep_plan(counted, MAX_FAILURES)
    sweep = counted.requests
    counted.counts.clear()
    lifecycle.list_registered(counted)
    listing = counted.requests
    counted.counts.clear()
    old_sweep_plan(counted, MAX_FAILURES)
    return sweep, listing, counted.requests


def test_requests_do_not_grow_with_the_files_a_version_holds():
    few = _sweep_requests(40, 10)
    many = _sweep_requests(40, 100)
    assert many[:2] == few[:2]
    assert many[2] > few[2]  # before: one listing of every object under registered/ and runs/


def test_requests_grow_linearly_with_versions_not_with_versions_times_audit_events():
    small_sweep, _, small_old = _sweep_requests(100, 2)
    big_sweep, big_list, big_old = _sweep_requests(400, 2)
    assert big_sweep <= 4 * small_sweep + 4  # a constant number of requests per version
    assert big_list <= 4  # listing 400 versions: a page or two, plus the model folders
    assert big_old > 10 * small_old  # before: every promoted version read the whole audit log


def test_a_finished_promotion_costs_two_gets_and_a_rejection_none():
    store, by_model = _store(10, 2)
    counted = CountingStore(store)
    lifecycle.sweep_plan(counted, MAX_FAILURES)
    by_state = by_model["m"]
    per_version = {
        "promoted": 2,  # the manifest, and the promote event its key names
        "rejected": 0,
        "undecided": 1,  # its run reports' listing
        "failed": 1 + MAX_FAILURES,  # listing and each report
        "unfinished": 1,  # the manifest; no event for it
        "interrupted": 2,  # the manifest (missing), its run reports' listing
        "unreadable": 2,
    }
    listings = 1 + 1 + 3  # model folders; versions; promoted/, rejected/, audit/ of the model
    expected = listings + sum(per_version[state] * len(refs) for state, refs in by_state.items())
    assert counted.requests == expected, counted.counts


def test_a_version_that_is_only_a_digest_prefix_apart_is_not_finished():
    """The event whose key carries the manifest digest's first 8 digits is read first, and believed only
    when its body names the whole digest."""
    store, by_model = _store(10, 2)
    ref = by_model["m"]["promoted"][0]
    raw = store.get_bytes(manifest_key(ref))
    digest = hashlib.sha256(raw).hexdigest()
    key = next(k for k in store.snapshot() if k.startswith("audit/m/") and k.endswith(f"-{ref.version}.json"))
    assert f"-{digest[:8]}-promote-" in key
    body = store.get_bytes(key).replace(digest.encode(), b"0" * 64)
    store.put_bytes(key, body)
    assert ref in _same_plan(store).pending


def test_refs_of_other_models_never_mix():
    store, _ = _store(10, 2, models=("a", "b"))
    plan = _same_plan(store)
    assert {r.name for r in plan.pending} == {"a", "b"}
    assert ModelRef(name="a", version="v00002") in plan.pending
