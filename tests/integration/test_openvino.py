"""A second engine through the real flow: ONNX Runtime and OpenVINO candidates judged by the same gates
in the same interleaved benchmark; the promoted OpenVINO IR is stored with its settings, pulled verified
and opened by `load_runtime`, like any artifact."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quantgate.cli import app
from quantgate.serving import load_runtime

pytest.importorskip("openvino")
pytestmark = pytest.mark.usefixtures("prefect_api")
runner = CliRunner()


def test_openvino_and_onnx_runtime_candidates_are_judged_alike_in_one_benchmark(
    store, tiny_model_dir, small_sts
):
    assert (
        runner.invoke(
            app, ["register", "tiny", "ov1", "--model-dir", str(tiny_model_dir), "--heldout", str(small_sts)]
        ).exit_code
        == 0
    )
    ran = runner.invoke(app, [
        "run", "tiny", "ov1", "--recipe", "ov-nncf-int8-transformer", "--recipe", "dynamic-int8-per-channel",
        "--repeats", "10", "--max-trials", "0", "--min-p95-speedup", "0", "--min-objective-speedup", "0",
        "--min-baseline-metric", "-1",
        "--max-baseline-half-width", "1", "--min-mean-cosine", "0.999",
    ])  # fmt: skip
    # A random tiny BERT: whichever engine wins here is luck; what matters is that both were judged alike.
    manifest_keys = [o.key for o in store.list("promoted/tiny/ov1/") if o.key.endswith("/report.json")]
    report = json.loads(
        store.get_bytes(manifest_keys[0] if manifest_keys else "rejected/tiny/ov1/report.json")
    )
    engines = {r["engine"] for r in report["benchmark"]["results"]}
    assert {"onnx-fp32", "ov-nncf-int8-transformer", "dynamic-int8-per-channel"} <= engines, ran.output
    tried = {c["recipe"]["name"]: c for c in report["search"]["candidates"]}
    assert tried["ov-nncf-int8-transformer"]["recipe"]["backend"] == "openvino"
    assert tried["ov-nncf-int8-transformer"]["gates"] is not None  # the same gates as ORT's candidate


def test_a_promoted_openvino_ir_is_pulled_with_its_settings_and_opened_by_load_runtime(
    store, tiny_model_dir, small_sts, tmp_path
):
    import numpy as np
    from transformers import AutoTokenizer

    assert (
        runner.invoke(
            app, ["register", "tiny", "ov2", "--model-dir", str(tiny_model_dir), "--heldout", str(small_sts)]
        ).exit_code
        == 0
    )
    ran = runner.invoke(app, [
        "run", "tiny", "ov2", "--recipe", "ov-nncf-int8-transformer", "--repeats", "10", "--max-trials", "0",
        "--min-p95-speedup", "0", "--min-objective-speedup", "0", "--min-baseline-metric", "-1",
        "--max-baseline-half-width", "1",
        "--max-champion-slowdown", "10",
    ])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    manifest = json.loads(store.get_bytes("promoted/tiny/ov2/manifest.json"))
    stored = {f["path"].split("/", 1)[1] for f in manifest["files"]}
    assert {"model.ov-int8.xml", "model.ov-int8.bin", "model.ov-int8.ov.json"} <= stored
    pulled = runner.invoke(app, ["pull", "tiny", "--to", str(tmp_path / "serving")])
    assert pulled.exit_code == 0, pulled.output
    session = load_runtime(tmp_path / "serving", threads=1)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "serving" / "tokenizer")
    enc = tokenizer(["served by OpenVINO"], return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in enc.items()}
    (embedding,) = session.run(["sentence_embedding"], feeds)
    assert embedding.shape == (1, 64)
    assert np.isfinite(embedding).all()
