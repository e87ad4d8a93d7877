import json
import os
from pathlib import Path

import pytest

from quantgate.errors import ConfigError
from quantgate.export import ExportResult
from quantgate.export_cache import MARKER, cached_export

SOURCE = {"source_checksum": "a" * 64, "atol": 1e-4}


def _builder(calls: list[Path]):
    def build(out: Path) -> ExportResult:
        calls.append(out)
        (out / "tokenizer").mkdir(parents=True)
        (out / "model.onnx").write_bytes(b"onnx-bytes")
        (out / "tokenizer" / "tokenizer.json").write_text("{}")
        return ExportResult(
            onnx_path=out / "model.onnx",
            tokenizer_files=[out / "tokenizer" / "tokenizer.json"],
            input_names=["input_ids"],
            output_names=["sentence_embedding"],
            opset=17,
            pooling="mean",
            normalize=True,
            max_abs_diff_vs_torch={"sentence_embedding": 0.0},
            parity_samples=1,
            size_bytes=10,
        )

    return build


def test_second_export_of_the_same_checksum_is_served_from_the_cache(tmp_path):
    calls: list[Path] = []
    first, hit1 = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    second, hit2 = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    assert (hit1, hit2) == (False, True)
    assert len(calls) == 1
    assert second == first
    assert second.onnx_path.read_bytes() == b"onnx-bytes"  # paths point into the cache, not the staging dir
    assert second.tokenizer_files[0].is_file()
    assert not list(tmp_path.glob(".key.*"))  # no staging leftovers


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_an_entry_whose_external_data_changed_is_rebuilt(tmp_path, damage):
    """A model past 2 GB is exported with its weights in model.onnx.data: that file is verified with the
    graph, so a hit never hands a run a graph with other weights (or none)."""
    calls: list[Path] = []

    def build(out: Path) -> ExportResult:
        result = _builder(calls)(out)
        (out / "model.onnx.data").write_bytes(b"weights" * 100)
        return result

    first, _ = cached_export(tmp_path, "key", build, **SOURCE)
    data = first.onnx_path.with_name("model.onnx.data")
    if damage == "tamper":
        data.write_bytes(b"WEIGHTS" * 100)
    else:
        data.unlink()
    again, hit = cached_export(tmp_path, "key", build, **SOURCE)
    assert hit is False
    assert len(calls) == 2
    assert again.onnx_path.with_name("model.onnx.data").read_bytes() == b"weights" * 100


def test_altered_cache_entry_is_rebuilt_not_used(tmp_path):
    calls: list[Path] = []
    first, _ = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    first.onnx_path.write_bytes(b"tampered")
    again, hit = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    assert hit is False
    assert len(calls) == 2
    assert again.onnx_path.read_bytes() == b"onnx-bytes"


def test_different_keys_do_not_share_entries(tmp_path):
    calls: list[Path] = []
    cached_export(tmp_path, "a", _builder(calls), **SOURCE)
    _, hit = cached_export(tmp_path, "b", _builder(calls), **SOURCE)
    assert hit is False
    assert len(calls) == 2


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(lambda e: e.update(source_checksum="b" * 64), id="made-for-another-source"),
        pytest.param(
            lambda e: e["result"]["max_abs_diff_vs_torch"].update(sentence_embedding=0.5),
            id="parity-over-atol",
        ),
        pytest.param(
            lambda e: e["result"]["max_abs_diff_vs_torch"].update(sentence_embedding=float("nan")),
            id="parity-nan",
        ),
        pytest.param(lambda e: e["result"].update(max_abs_diff_vs_torch={}), id="no-parity"),
        pytest.param(lambda e: e.update(atol=1.0), id="looser-atol"),
    ],
)
def test_a_cache_entry_that_does_not_reverify_is_rebuilt(tmp_path, poison):
    """An entry whose own export.json claims another source, or a parity the export did not pass, is
    never served: the export (and its PyTorch parity check) runs again."""
    calls: list[Path] = []
    cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    marker = tmp_path / "key" / MARKER
    entry = json.loads(marker.read_text())
    poison(entry)
    marker.write_text(json.dumps(entry))
    _, hit = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    assert hit is False
    assert len(calls) == 2


def test_a_planted_file_in_an_entry_is_rebuilt(tmp_path):
    calls: list[Path] = []
    first, _ = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    first.tokenizer_files[0].write_text('{"planted": true}')
    _, hit = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    assert hit is False


def test_a_cache_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"can be written by other users.*QUANTGATE_CACHE_DIR"):
        cached_export(shared, "key", _builder([]), **SOURCE)


def test_a_cache_folder_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("quantgate.workspace._current_uid", lambda: os.geteuid() + 1)
    with pytest.raises(ConfigError, match=r"owned by another user.*QUANTGATE_CACHE_DIR"):
        cached_export(tmp_path, "key", _builder([]), **SOURCE)


def test_two_runs_exporting_the_same_source_at_once_share_the_first_entry_and_neither_loses_files(tmp_path):
    """Two workers (or two test workers) run the same source at the same time: both miss, both build. The
    entry published first is never replaced under the run reading its model from it; the second run uses
    it. (Before, the second builder removed the first one's folder and renamed its own in: the first run's
    reference found no model.onnx.)"""
    import threading
    import time

    both_building = threading.Barrier(2)
    results: dict[str, tuple[ExportResult, bool]] = {}

    def builder(tag: str, delay: float):
        inner = _builder([])

        def build(out: Path) -> ExportResult:
            result = inner(out)
            (out / "model.onnx").write_bytes(f"onnx-{tag}".encode())  # whose build it is
            both_building.wait(timeout=10)
            time.sleep(delay)
            return result

        return build

    def run(tag: str, delay: float) -> None:
        results[tag] = cached_export(tmp_path, "key", builder(tag, delay), **SOURCE)

    threads = [threading.Thread(target=run, args=args) for args in (("first", 0.0), ("late", 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    first, late = results["first"][0], results["late"][0]
    assert first.onnx_path.read_bytes() == b"onnx-first"  # the first run's model is still its own
    assert late == first  # the late run uses the published entry, not a replacement
    assert cached_export(tmp_path, "key", _builder([]), **SOURCE)[1] is True  # and it verifies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no staging or stale leftovers


def test_an_entry_that_no_longer_verifies_is_set_aside_and_replaced_in_one_step(tmp_path):
    calls: list[Path] = []
    cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    (tmp_path / "key" / MARKER).unlink()  # half-written by an older version: files, no marker
    again, hit = cached_export(tmp_path, "key", _builder(calls), **SOURCE)
    assert hit is False
    assert len(calls) == 2
    assert again.onnx_path.read_bytes() == b"onnx-bytes"
    assert cached_export(tmp_path, "key", _builder(calls), **SOURCE)[1] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
