"""What an export and a quantization hold in memory (issue #24 item 7).

- An export whose weights go to ONNX external data has torch's exporter hand them over one tensor at a time
  (`defer_weight_export`) and writes each into the data file, instead of a ModelProto with every weight, its
  serialized copy and Python's copy of that beside the module (a random BERT-large: 6.1 -> 4.5 GB). The
  files must be the ones the round trip through `onnx.load` and `save_onnx` writes, byte for byte.
- ONNX Runtime's dynamic quantizer reloads its model for shape inference without its deep copy
  (BERT-large: 4.74 -> 3.90 GB, benchmarks/export_memory.py), writing the same INT8 model byte for byte."""

from pathlib import Path

import pytest

from quantgate import export
from quantgate.errors import ExportError
from quantgate.families.sentence_embedding import export_sentence_embedding

TEXTS = ["a short one", "a somewhat longer sentence about things", "third", "the fourth of them"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def deferred_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the graphs torch handed `_externalize` (one per export that deferred its weights)."""
    seen: list[int] = []
    real = export._externalize

    def counting(proto: bytes, weights: dict[str, bytes], data_path: Path) -> bytes:
        seen.append(len(proto))
        return real(proto, weights, data_path)

    monkeypatch.setattr(export, "_externalize", counting)
    return seen


def test_deferred_weights_write_the_files_the_round_trip_writes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deferred_calls: list[int]
) -> None:
    monkeypatch.setenv("QUANTGATE_EXTERNAL_DATA_MIN_BYTES", "0")
    deferred = export_sentence_embedding(tiny_model_dir, tmp_path / "deferred", TEXTS, atol=1e-4)
    assert len(deferred_calls) == 1
    assert deferred_calls[0] < 100_000  # the graph torch built holds no weights (they are ~1.5 MB)

    monkeypatch.setattr(export, "_install_weight_deferral", lambda: False)  # torch's one file, re-saved
    saved = export_sentence_embedding(tiny_model_dir, tmp_path / "saved", TEXTS, atol=1e-4)
    assert len(deferred_calls) == 1
    files = _files(deferred.onnx_path.parent)
    assert sorted(files) == ["model.onnx", "model.onnx.data"]
    assert len(files["model.onnx.data"]) > 1_000_000
    assert files == _files(saved.onnx_path.parent)
    assert deferred.max_abs_diff_vs_torch == saved.max_abs_diff_vs_torch


def test_an_export_below_the_threshold_is_torchs_own_one_file(
    tiny_model_dir: Path, tmp_path: Path, deferred_calls: list[int]
) -> None:
    result = export_sentence_embedding(tiny_model_dir, tmp_path / "one", TEXTS, atol=1e-4)
    assert deferred_calls == []
    assert sorted(_files(result.onnx_path.parent)) == ["model.onnx"]


def test_weights_near_the_protobuf_limit_are_left_to_torchs_own_external_files(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deferred_calls: list[int]
) -> None:
    """Past 2 GiB torch writes every weight to a file of its own and refuses to defer them (an internal
    assert): those exports keep that path, and the files are gathered into `model.onnx.data`."""
    monkeypatch.setenv("QUANTGATE_EXTERNAL_DATA_MIN_BYTES", "0")
    monkeypatch.setattr(export, "_module_weight_bytes", lambda _module: export.DEFER_MAX_BYTES)
    result = export_sentence_embedding(tiny_model_dir, tmp_path / "big", TEXTS, atol=1e-4)
    assert deferred_calls == []
    assert sorted(_files(result.onnx_path.parent)) == ["model.onnx", "model.onnx.data"]


def test_a_deferred_weight_the_graph_does_not_name_is_an_error_that_says_how_to_export(
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], b"\0" * 8, raw=True)
    weight.raw_data = b"__EXTERNAL"  # torch's placeholder for a deferred weight
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [weight],
    )
    proto = helper.make_model(graph).SerializeToString()
    with pytest.raises(ExportError, match="QUANTGATE_EXTERNAL_DATA_MIN_BYTES above"):
        export._externalize(proto, {"w": b"\0" * 8, "ghost": b"\0" * 8}, tmp_path / "m.onnx.data")
    model = onnx.load_model_from_string(
        export._externalize(proto, {"w": b"\0" * 8}, tmp_path / "m.onnx.data")
    )
    assert model.graph.initializer[0].raw_data == b"\0" * 8  # under 1 KiB: back in the graph


def test_the_dynamic_quantizer_reloads_its_model_without_a_copy_and_writes_the_same_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's dynamic quantizer deep-copies the whole model to run shape inference again;
    quantgate's replacement saves the quantizer's own model instead (it is replaced right after): no copy,
    the same INT8 model byte for byte."""
    import copy
    import importlib

    import onnx

    from quantgate.backends import onnxruntime as ort_backend
    from quantgate.quantize import get_recipe

    copies: list[str] = []
    real_deepcopy = copy.deepcopy

    def counting(value, *args, **kwargs):
        if isinstance(value, onnx.ModelProto):
            copies.append(value.graph.name)
        return real_deepcopy(value, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", counting)
    fp32 = export_sentence_embedding(tiny_model_dir, tmp_path / "fp32", TEXTS, atol=1e-4).onnx_path
    recipe = get_recipe("dynamic-int8-per-channel")
    ours = ort_backend.apply_recipe(recipe, fp32, tmp_path / "ours").path.read_bytes()
    assert copies == []

    module = importlib.import_module("onnxruntime.quantization.onnx_quantizer")
    original = importlib.import_module(
        "onnxruntime.quantization.quant_utils"
    ).save_and_reload_model_with_shape_infer
    monkeypatch.setattr(ort_backend, "_reload_without_copy", lambda: None)
    monkeypatch.setattr(module, "save_and_reload_model_with_shape_infer", original)
    theirs = ort_backend.apply_recipe(recipe, fp32, tmp_path / "theirs").path.read_bytes()
    assert len(copies) == 1  # ONNX Runtime's own copy, which ours leaves out
    assert ours == theirs
