"""The prediction cache (quantgate/prediction_cache.py): a model's outputs on held-out rows are read back
only for the same model files, side files, rows, threads and code, and only when the stored array still
verifies; everything computed from them (metric, intervals) is the same as when computed. A real ONNX
Runtime session of a one-MatMul graph stands in for the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantgate.backends import Servable, open_session
from quantgate.prediction_cache import OUTPUTS, using
from quantgate.tasktypes import ResampledTaskType, TaskMetric
from tests.conftest import matmul_graph


class Probe(ResampledTaskType):
    """Mean of the model's outputs per row, judged by mean absolute error against `target`; counts how
    often the model really ran."""

    name = "cache-probe"
    metric = TaskMetric(name="mae", higher_is_better=False)

    def __init__(self) -> None:
        self.runs = 0

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> np.ndarray:
        self.runs += 1
        x = heldout[[f"f{i}" for i in range(64)]].to_numpy(np.float32)
        (y,) = open_session(model, threads).run(["y"], {"x": x})
        return y.mean(axis=1)

    def score(self, predicted, assets, heldout, idx):
        errors = np.abs(heldout["target"].to_numpy() - predicted)
        return float(errors.mean()), errors[idx].mean(axis=1)


def _rows(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.standard_normal((n, 64)), columns=[f"f{i}" for i in range(64)])
    frame["target"] = rng.standard_normal(n)
    return frame


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Probe, Servable, Path, Path]:
    model = Servable(matmul_graph(tmp_path / "fp32" / "model.onnx"))
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "tokenizer.json").write_text("{}")
    return Probe(), model, assets, tmp_path / "cache"


def test_a_second_reference_on_the_same_model_and_rows_reads_the_outputs_back(setup):
    probe, model, assets, cache = setup
    rows = _rows()
    with using(cache):
        first = probe.reference(model, assets, rows, threads=1)
        second = probe.reference(model, assets, rows, threads=1)
        champion = probe.score_champion(first, "v1", model, assets, rows, threads=1)
    assert probe.runs == 1
    np.testing.assert_array_equal(first.outputs, second.outputs)
    assert (first.task_metric, list(first.interval)) == (second.task_metric, list(second.interval))
    assert champion.champion_metric == first.task_metric
    # Not in use: the model runs every time.
    probe.reference(model, assets, rows, threads=1)
    assert probe.runs == 2


@pytest.mark.parametrize("change", ["rows", "model", "side-file", "threads"])
def test_other_rows_model_side_files_or_threads_run_the_model_again(setup, tmp_path, change):
    probe, model, assets, cache = setup
    rows = _rows()
    threads = 1
    with using(cache):
        probe.reference(model, assets, rows, threads)
        if change == "rows":
            rows = rows.assign(target=rows["target"] + 1)  # other gold values: other rows
        elif change == "model":
            model = Servable(matmul_graph(tmp_path / "other" / "model.onnx", seed=1))
        elif change == "side-file":
            (assets / "tokenizer.json").write_text('{"lowercase": true}')
        else:
            threads = 2
        probe.reference(model, assets, rows, threads)
    assert probe.runs == 2


@pytest.mark.parametrize("poison", ["flip-a-value", "foreign-marker", "pickled-object"])
def test_stored_outputs_that_do_not_reverify_are_computed_again_and_replaced(setup, poison):
    probe, model, assets, cache = setup
    rows = _rows()
    with using(cache):
        truth = probe.reference(model, assets, rows, threads=1)
        (entry,) = list(cache.iterdir())
        if poison == "flip-a-value":
            stored = np.load(entry / OUTPUTS)
            stored[0] += 1.0
            np.save(entry / OUTPUTS, stored)
        elif poison == "foreign-marker":
            (entry / "entry.json").write_text('{"not": "an entry"}')
        else:
            np.save(entry / OUTPUTS, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        again = probe.reference(model, assets, rows, threads=1)
        assert probe.runs == 2
        np.testing.assert_array_equal(again.outputs, truth.outputs)
        probe.reference(model, assets, rows, threads=1)  # the replaced entry is a hit again
    assert probe.runs == 2
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no staging or stale leftovers


def test_outputs_that_are_not_a_numeric_array_and_rows_that_cannot_be_hashed_are_not_cached(setup):
    probe, model, assets, cache = setup

    class Tagged(Probe):
        def predict(self, model, assets, heldout, threads):
            return list(super().predict(model, assets, heldout, threads))

        def score(self, predicted, assets, heldout, idx):
            return super().score(np.asarray(predicted), assets, heldout, idx)

        def stored(self, predicted):
            return np.asarray(predicted)

    tagged = Tagged()
    listed = _rows().assign(handle=[object() for _ in range(40)])  # cells whose print is an address
    with using(cache):
        for _ in range(2):
            tagged.reference(model, assets, _rows(), threads=1)
            probe.reference(model, assets, listed, threads=1)
    assert (tagged.runs, probe.runs) == (2, 2)


def test_what_the_rows_carry_beside_them_is_part_of_their_identity(setup):
    """A retrieval set keeps its corpus in `attrs`: another corpus with the same queries is other rows."""
    probe, model, assets, cache = setup
    rows = _rows()
    rows.attrs["corpus"] = pd.DataFrame({"doc": ["a", "b"]})
    other = _rows()
    other.attrs["corpus"] = pd.DataFrame({"doc": ["a", "b", "c"]})
    # The corpus as retrieval keeps it, a dict of documents: the same documents in another order are
    # embedded in that order, so they are other outputs too.
    ordered, reordered = _rows(), _rows()
    ordered.attrs["corpus"] = {"d1": "first", "d2": "second"}
    reordered.attrs["corpus"] = {"d2": "second", "d1": "first"}
    with using(cache):
        for frame in (rows, other, rows, ordered, reordered, ordered):
            probe.reference(model, assets, frame, threads=1)
    assert probe.runs == 4


def test_a_model_that_is_not_files_on_disk_is_never_cached(setup, tmp_path):
    """NNCF's accuracy control scores candidates held in memory (a runtime that lists no files): each
    is another model under the same empty key, so none may be read back for another."""
    from quantgate.backends import Runtime

    probe, model, assets, cache = setup
    real = Runtime.registry["onnxruntime"]

    class InMemory(real):  # opens the graph like ORT, lists no files (as openvino-live)
        name = "test-in-memory"

        def files(self, path: Path) -> list[Path]:
            return []

    try:
        live = Servable(model.path, "test-in-memory")
        with using(cache):
            probe.reference(live, assets, _rows(), threads=1)
            probe.reference(live, assets, _rows(), threads=1)
    finally:
        Runtime.registry.pop("test-in-memory", None)
    assert probe.runs == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_a_cache_that_cannot_be_made_costs_the_computation_only(setup, tmp_path):
    probe, model, assets, _ = setup
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with using(blocked / "cache"):
        ref = probe.reference(model, assets, _rows(), threads=1)
    assert probe.runs == 1
    assert np.isfinite(ref.task_metric)
