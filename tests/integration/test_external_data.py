"""The CI-sized twin of a model past 2 GB: QUANTGATE_EXTERNAL_DATA_MIN_BYTES=0 makes the tiny BERT's export
store its weights as ONNX external data, as a model past the protobuf limit must. The real flow then
quantizes it on each engine (ONNX Runtime writes its INT8 model with external data too; OpenVINO reads the
export by path), checks parity, benchmarks and promotes to SeaweedFS; `quantgate pull` and `load_runtime`
open what was promoted. The manifest must list every file of the artifact, the data file included, with
the sha256 of its bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.bench import BenchSettings
from quantgate.cli import app
from quantgate.export import external_locations, tokenize
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget
from quantgate.serving import load_runtime
from tests.conftest import TINY_GATES

pytestmark = [pytest.mark.scale, pytest.mark.usefixtures("prefect_api")]
runner = CliRunner()

# The sentence-embedding task type's default parity gate (min_mean_cosine): what the run itself judged.
MIN_MEAN_COSINE = 0.98


@pytest.mark.parametrize(
    ("recipe", "data_files"),
    [
        # ORT's quantizer writes its model the way its input was written: the INT8 graph and its data file.
        pytest.param("dynamic-int8-per-channel", {"model.int8.onnx.data"}, id="onnxruntime"),
        # OpenVINO's IR keeps its weights in a .bin beside the .xml whatever the size.
        pytest.param("ov-nncf-int8-transformer", {"model.ov-int8.bin"}, id="openvino"),
    ],
)
def test_a_model_exported_with_external_data_is_promoted_pulled_and_served_whole(
    store, monkeypatch, tmp_path, tiny_model_dir, small_sts, recipe, data_files
):
    if recipe.startswith("ov-"):
        pytest.importorskip("openvino")
    monkeypatch.setenv("QUANTGATE_EXTERNAL_DATA_MIN_BYTES", "0")
    monkeypatch.setenv("QUANTGATE_CACHE_DIR", str(tmp_path / "cache"))  # this run exports, not a cache hit
    ref = ModelRef(name="twin", version="v1")
    lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    state = quantize_and_promote(
        model=ref.name,
        version=ref.version,
        recipes=[recipe],
        thresholds=TINY_GATES,
        bench=BenchSettings(warmup_runs=1, repeat_runs=5),
        budget=SearchBudget(max_trials=0),
        return_state=True,
    )
    assert state.name == "Promoted", state.message

    # The FP32 export really was stored with external data, beside it and nowhere else.
    (export,) = (p for p in (tmp_path / "cache").glob("*/model.onnx") if not p.parent.name.startswith("."))
    assert external_locations(export) == {"model.onnx.data"}
    assert (export.parent / "model.onnx.data").stat().st_size > 7 * 2**20  # the 30522 x 64 embeddings

    # Every file of the artifact is in the manifest with its size and the sha256 of its bytes; pulled,
    # each has them.
    manifest = lifecycle.load_manifest(store, ref)
    listed = {f.path.split("/", 1)[1]: f for f in manifest.files}
    assert data_files <= set(listed), sorted(listed)
    pulled = runner.invoke(app, ["pull", "twin", "--to", str(tmp_path / "serving")])
    assert pulled.exit_code == 0, pulled.output
    serving = tmp_path / "serving"
    for name in data_files:
        data = (serving / name).read_bytes()
        assert listed[name].sha256 == hashlib.sha256(data).hexdigest()
        assert listed[name].size == len(data) > 0
    if recipe == "dynamic-int8-per-channel":
        assert external_locations(serving / "model.int8.onnx") == {"model.int8.onnx.data"}

    # Served from the pulled folder, it reproduces the FP32 export within the run's own parity gate.
    session = load_runtime(serving, threads=1)
    fp32 = _fp32_session(export)
    tokenizer = _tokenizer(serving / "tokenizer")
    texts = [line.split("\t")[5] for line in small_sts.read_text(encoding="utf-8").splitlines()[:32]]
    feeds = tokenize(tokenizer, texts, 64)
    (got,) = session.run(["sentence_embedding"], feeds)
    (want,) = fp32.run(["sentence_embedding"], feeds)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == want.shape == (len(texts), 64)
    assert float(cosine.mean()) >= MIN_MEAN_COSINE, cosine


def _fp32_session(path: Path):
    """The FP32 export, opened by its path (ORT reads model.onnx.data beside it)."""
    from quantgate.runtime import inference_session

    return inference_session(path, threads=1)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
