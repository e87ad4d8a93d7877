"""The candidate build cache (quantgate/build_cache.py): a build is taken from it only for the same recipe,
graph files, calibration batches and code, and only when every file still verifies; what it hands a run
is a copy in the run's own folder. Real ONNX Runtime quantization of a one-MatMul graph."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from quantgate.backends import get_quantizer, get_runtime
from quantgate.backends.onnxruntime import OrtRecipe
from quantgate.build_cache import MARKER
from quantgate.quantize import build_candidate
from quantgate.storage import sha256_file
from tests.conftest import matmul_graph

RECIPE = OrtRecipe(name="dynamic-int8-per-channel", per_channel=True)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the recipes the ORT quantizer really built."""
    quantizer = type(get_quantizer("onnxruntime"))
    real = quantizer.build
    calls: list[str] = []

    def build(self, recipe, *args, **kwargs):
        calls.append(recipe.name)
        return real(self, recipe, *args, **kwargs)

    monkeypatch.setattr(quantizer, "build", build)
    return calls


def _artifact(result) -> dict[str, str]:
    """The artifact's files (model, settings, external data) by name, with their sha256."""
    files = get_runtime("onnxruntime").files(result.path)
    return {p.relative_to(result.path.parent).as_posix(): sha256_file(p) for p in files}


def test_a_second_build_of_the_same_inputs_is_a_verified_copy_in_the_runs_own_folder(tmp_path, counted):
    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    first = build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", cache_root=cache)
    second = build_candidate(RECIPE, fp32, tmp_path / "run2" / "c", cache_root=cache)
    assert counted == [RECIPE.name]
    assert (first.cached, second.cached) == (False, True)
    assert second.path.parent == tmp_path / "run2" / "c"  # the run's own copy, not the cache's files
    assert _artifact(first) == _artifact(second)
    assert len(_artifact(second)) == 2  # the model and its session settings
    assert (second.op_counts, second.size_bytes) == (first.op_counts, first.size_bytes)
    # Off (no cache root): always built.
    build_candidate(RECIPE, fp32, tmp_path / "run3" / "c")
    assert counted == [RECIPE.name, RECIPE.name]


def test_a_recipe_that_differs_only_in_session_settings_takes_its_siblings_build_with_its_own_settings(
    tmp_path, counted
):
    """Issue #25: `-no-sln` is its sibling's graph served with other ORT session settings: built once,
    the twin gets the same model bytes and its own settings file."""
    from quantgate.backends.onnxruntime import _NO_SLN
    from quantgate.runtime import read_settings

    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    twin = RECIPE.model_copy(update={"name": f"{RECIPE.name}-no-sln", "session": _NO_SLN})
    first = build_candidate(RECIPE, fp32, tmp_path / "run" / RECIPE.name, cache_root=cache)
    second = build_candidate(twin, fp32, tmp_path / "run" / twin.name, cache_root=cache)
    assert counted == [RECIPE.name]
    assert second.cached
    assert sha256_file(second.path) == sha256_file(first.path)
    assert read_settings(second.path) == _NO_SLN
    assert read_settings(first.path) == RECIPE.session != _NO_SLN
    # Its size is its own files' (the settings file differs), not the cached sibling's.
    for built in (first, second):
        assert built.size_bytes == sum(p.stat().st_size for p in get_runtime("onnxruntime").files(built.path))
    assert second.size_bytes != first.size_bytes
    # The cache's own entry keeps the settings of the recipe that built it.
    third = build_candidate(RECIPE, fp32, tmp_path / "run2" / RECIPE.name, cache_root=cache)
    assert third.cached
    assert read_settings(third.path) == RECIPE.session


@pytest.mark.parametrize("change", ["recipe", "graph", "calibration"])
def test_a_different_recipe_graph_or_calibration_is_built_again(tmp_path, counted, change):
    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    calibration = [{"x": np.ones((2, 64), np.float32)}]
    build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", calibration=calibration, cache_root=cache)
    recipe = RECIPE.model_copy(update={"reduce_range": True}) if change == "recipe" else RECIPE
    if change == "graph":
        fp32 = matmul_graph(tmp_path / "fp32-other" / "model.onnx", seed=1)  # same path name, other weights
    if change == "calibration":
        calibration = [{"x": np.full((2, 64), 2.0, np.float32)}]
    again = build_candidate(recipe, fp32, tmp_path / "run2" / "c", calibration=calibration, cache_root=cache)
    assert again.cached is False
    assert len(counted) == 2


@pytest.mark.parametrize("poison", ["tamper-model", "plant-file", "drop-marker", "foreign-marker"])
def test_an_entry_that_does_not_reverify_is_not_used_and_is_replaced(tmp_path, counted, poison):
    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    first = build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", cache_root=cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    if poison == "tamper-model":
        model = entry / RECIPE.artifact_name
        model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)
    elif poison == "plant-file":
        (entry / "extra.onnx").write_bytes(b"planted")
    elif poison == "drop-marker":
        (entry / MARKER).unlink()
    else:
        (entry / MARKER).write_text('{"not": "an entry"}')
    again = build_candidate(RECIPE, fp32, tmp_path / "run2" / "c", cache_root=cache)
    assert again.cached is False
    assert len(counted) == 2
    assert _artifact(again) == _artifact(first)  # what was built, not what was planted
    # The bad entry was set aside and replaced: the next build is a hit again, with nothing left over.
    assert build_candidate(RECIPE, fp32, tmp_path / "run3" / "c", cache_root=cache).cached is True
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_an_accuracy_controlled_build_is_never_taken_from_the_cache(tmp_path):
    from quantgate.backends.openvino import OvRecipe

    quantizer = get_quantizer("openvino")
    tuned = OvRecipe(name="ov-ac", backend="openvino", accuracy_control=True)
    assert quantizer.build_inputs(tuned, None) is None
    assert quantizer.build_inputs(tuned.model_copy(update={"accuracy_control": False}), None) == []


def test_two_runs_building_the_same_candidate_at_once_each_get_a_complete_one(tmp_path):
    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    results = {}

    def run(tag: str) -> None:
        results[tag] = build_candidate(RECIPE, fp32, tmp_path / tag / "c", cache_root=cache)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["a", "b", "c"]
    assert len({tuple(_artifact(r).items()) for r in results.values()}) == 1
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [
        p.name for p in cache.iterdir()
    ]  # no staging or stale leftovers
    assert build_candidate(RECIPE, fp32, tmp_path / "d" / "c", cache_root=cache).cached is True


def test_an_entry_that_goes_away_while_it_is_copied_is_built_instead(tmp_path, counted, monkeypatch):
    """Another run set the entry aside (it no longer verified) between the check and the copy."""
    from quantgate import build_cache

    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    cache = tmp_path / "cache"
    build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", cache_root=cache)
    real = build_cache._copy

    def vanished(files, source, target):
        if source.parent == cache:
            raise FileNotFoundError(source)
        return real(files, source, target)

    monkeypatch.setattr(build_cache, "_copy", vanished)
    again = build_candidate(RECIPE, fp32, tmp_path / "run2" / "c", cache_root=cache)
    assert again.cached is False
    assert len(counted) == 2
    assert again.path.is_file()


def test_a_cache_that_cannot_be_made_costs_the_build_only(tmp_path, counted):
    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", cache_root=blocked / "cache")
    assert (result.cached, len(counted)) == (False, 1)


def test_a_backend_that_does_not_name_its_inputs_is_never_cached(tmp_path):
    """Opt-in: a plugin quantizer that reads what `prepare` made, or the run's metric, says nothing and
    is built every time."""
    from quantgate.backends import Quantizer

    class Plugin(Quantizer):
        def build(self, *args, **kwargs):
            raise NotImplementedError

    assert Plugin().build_inputs(RECIPE, None) is None
    assert get_quantizer("onnxruntime").build_inputs(RECIPE, None) == []


def test_pruning_keeps_the_cache_within_its_size_and_removes_the_least_used_first(tmp_path):
    import os
    import time

    from quantgate.content_cache import prune

    root = tmp_path / "builds"
    now = time.time()
    for name, age in [("old", 300), ("used-recently", 10), ("middle", 100)]:
        entry = root / name
        entry.mkdir(parents=True)
        (entry / "model.onnx").write_bytes(b"x" * 1000)
        os.utime(entry, (now - age, now - age))
    for name, age in [(".abc.staging", 7200), (".fresh.staging", 5)]:  # a killed run's leftovers; one live
        (root / name).mkdir()
        os.utime(root / name, (now - age, now - age))
    assert prune(root, max_bytes=2000) == ["old"]
    assert sorted(p.name for p in root.iterdir()) == [".fresh.staging", "middle", "used-recently"]
    assert prune(root, max_bytes=1000) == ["middle"]
    assert prune(root, max_bytes=10_000) == []


def test_a_build_from_a_graph_with_external_data_is_cached_and_verified_with_its_data_file(tmp_path, counted):
    """A model past 2 GB is stored with external data: the build (whose INT8 model ORT writes the same way)
    is cached, copied and re-verified with its data file, not just model.int8.onnx."""
    import onnx

    fp32 = matmul_graph(tmp_path / "fp32" / "model.onnx")
    onnx.save_model(
        onnx.load(str(fp32)),
        str(fp32),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    cache = tmp_path / "cache"
    first = build_candidate(RECIPE, fp32, tmp_path / "run1" / "c", cache_root=cache)
    names = set(_artifact(first))
    assert names == {"model.int8.onnx", "model.int8.onnx.data", "model.int8.session.json"}
    second = build_candidate(RECIPE, fp32, tmp_path / "run2" / "c", cache_root=cache)
    assert second.cached is True
    assert _artifact(second) == _artifact(first)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    data = entry / "model.int8.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")  # the graph file is intact, its data is not
    third = build_candidate(RECIPE, fp32, tmp_path / "run3" / "c", cache_root=cache)
    assert third.cached is False
    assert _artifact(third) == _artifact(first)
    # A graph whose data file changed is another input: built again, not taken from the cache.
    fp32_data = fp32.with_name("model.onnx.data")
    fp32_data.write_bytes(fp32_data.read_bytes()[:-4] + b"\0\0\0\0")
    assert build_candidate(RECIPE, fp32, tmp_path / "run4" / "c", cache_root=cache).cached is False
    assert counted == [RECIPE.name] * 3
