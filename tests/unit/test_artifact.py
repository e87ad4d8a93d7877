"""An artifact is a set of files: a model saved with ONNX external data (how models over 2 GB are stored)
is collected, and so promoted, with its data file and its session settings, each with size and sha256."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantgate.artifact import Artifact
from quantgate.backends import Servable
from quantgate.runtime import SessionSettings, write_settings


def _matmul_model(path, external: bool) -> None:
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(
        model, str(path), save_as_external_data=external, location="model.int8.onnx.data", size_threshold=0
    )


def test_external_data_and_session_settings_travel_with_the_model(tmp_path):
    path = tmp_path / "model.int8.onnx"
    _matmul_model(path, external=True)
    write_settings(path, SessionSettings(disabled_optimizers=["SkipLayerNormFusion"]))
    tokenizer = tmp_path / "tok" / "vocab.txt"
    tokenizer.parent.mkdir()
    tokenizer.write_text("[PAD]\n")

    artifact = Artifact.collect(Servable(path), [tokenizer])
    files = {f.path: f for f in artifact.files}
    assert set(files) == {
        "model.int8.onnx",
        "model.int8.onnx.data",
        "model.int8.session.json",
        "tokenizer/vocab.txt",
    }
    data = (tmp_path / "model.int8.onnx.data").read_bytes()
    assert files["model.int8.onnx.data"].sha256 == hashlib.sha256(data).hexdigest()
    assert files["model.int8.onnx.data"].size == len(data) == 64 * 4
    assert artifact.local_files()["tokenizer/vocab.txt"] == tokenizer


def test_a_model_without_external_data_or_settings_is_one_file(tmp_path):
    path = tmp_path / "model.onnx"
    _matmul_model(path, external=False)
    assert [f.path for f in Artifact.collect(Servable(path)).files] == ["model.onnx"]
