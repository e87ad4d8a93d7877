"""The OpenVINO backend on a tiny BERT: NNCF INT8 and BF16 candidates built from the real ONNX export,
run by OpenVINO's CPU plugin and judged by the same task type as ORT's; skipped, with the reason, where the
CPU lacks the feature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from quantgate.backends import Servable, get_quantizer, open_session
from quantgate.backends.openvino import OpenVino, cpu_capabilities
from quantgate.errors import CandidateUnavailable
from quantgate.export import tokenize
from quantgate.families.sentence_embedding import export_sentence_embedding
from quantgate.quantize import build_candidate, get_recipe
from quantgate.search_driver import ScoreJob, score_candidate
from quantgate.tasktypes import get_task_type
from quantgate.thresholds import GateThresholds

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, small_sts: Path, tmp_path_factory: pytest.TempPathFactory):
    task = get_task_type("sentence-embedding")
    heldout = task.read_heldout(small_sts).head(80)
    texts = task.texts(heldout)[:16]
    result = export_sentence_embedding(tiny_model_dir, tmp_path_factory.mktemp("onnx"), texts, atol=1e-4)
    return result, heldout


def test_an_nncf_int8_candidate_is_an_openvino_ir_with_its_settings_and_matches_fp32(exported, tmp_path):
    result, heldout = exported
    task = get_task_type("sentence-embedding")
    calibration = task.calibration_feeds(result.assets_dir, heldout.head(32))
    q = build_candidate(
        get_recipe("ov-nncf-int8-transformer"), result.onnx_path, tmp_path, calibration=calibration
    )
    assert q.op_counts["FakeQuantize"] > 0
    files = {f.name for f in OpenVino().files(q.path)}
    assert files == {"model.ov-int8.xml", "model.ov-int8.bin", "model.ov-int8.ov.json"}
    assert json.loads((tmp_path / "model.ov-int8.ov.json").read_text()) == {"precision_hint": "f32"}
    tokenizer = AutoTokenizer.from_pretrained(result.assets_dir)
    feeds = tokenize(tokenizer, ["a short one", "a longer sentence about something"], 32)
    (fp32,) = open_session(Servable(result.onnx_path), 1).run(["sentence_embedding"], feeds)
    (int8,) = open_session(Servable(q.path, "openvino"), 1).run(["sentence_embedding"], feeds)
    cosine = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cosine.min() > 0.9


def test_shape_buckets_are_a_serving_setting_of_the_artifact_with_the_same_outputs(exported, tmp_path):
    """Static shapes per bucket (issue #21): stored beside the IR, applied by every session (load_runtime
    included), and a padded request gives the dynamic model's outputs."""
    from quantgate.backends.openvino import OvRecipe

    result, heldout = exported
    task = get_task_type("sentence-embedding")
    calibration = task.calibration_feeds(result.assets_dir, heldout.head(32))
    recipe = get_recipe("ov-nncf-int8-transformer-buckets")
    q = build_candidate(recipe, result.onnx_path, tmp_path / "buckets", calibration=calibration)
    assert json.loads(q.path.with_suffix(".ov.json").read_text()) == {
        "precision_hint": "f32", "shape_buckets": [16, 32, 64, 128],
    }  # fmt: skip
    plain = recipe.model_copy(update={"shape_buckets": None, "name": "plain"})
    p = build_candidate(plain, result.onnx_path, tmp_path / "plain", calibration=calibration)
    tokenizer = AutoTokenizer.from_pretrained(result.assets_dir)
    bucketed = open_session(Servable(q.path, "openvino"), 1)
    dynamic = open_session(Servable(p.path, "openvino"), 1)
    assert type(bucketed).__name__ == "_BucketedSession"
    for text in ["a", "a short one", "a longer sentence about something " * 6]:
        feeds = tokenize(tokenizer, [text], 256)
        (got,) = bucketed.run(["sentence_embedding"], feeds)
        (want,) = dynamic.run(["sentence_embedding"], feeds)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3)
    with pytest.raises(ValueError, match="distinct increasing token counts"):
        OvRecipe(name="x", shape_buckets=[64, 16])


def _job(exported, tmp_path) -> ScoreJob:
    result, heldout = exported
    task = get_task_type("sentence-embedding")
    reference = task.reference(Servable(result.onnx_path), result.assets_dir, heldout, 2)
    return ScoreJob(
        task=task.name,
        fp32=result.onnx_path,
        prepared={},
        calibration=task.calibration_feeds(result.assets_dir, heldout.head(32)),
        out_dir=tmp_path,
        reference=reference,
        assets=result.assets_dir,
        evaluation=heldout,
        thresholds=GateThresholds(),
        deadline=float("inf"),
    )


@pytest.mark.skipif("BF16" not in cpu_capabilities(), reason="this CPU has no BF16")
def test_bf16_keeps_fp32_weights_and_is_scored_like_any_candidate(exported, tmp_path):
    c = score_candidate(get_recipe("ov-bf16"), _job(exported, tmp_path), 1)
    assert c.status == "evaluated", c.note
    assert c.evaluation.extra["mean_cosine"] > 0.999  # BF16 inference moves embeddings very little


def test_a_cpu_without_bf16_skips_the_candidate_with_the_reason(exported, tmp_path, monkeypatch):
    monkeypatch.setattr("quantgate.backends.openvino.cpu_capabilities", lambda: ["FP32", "INT8"])
    c = score_candidate(get_recipe("ov-bf16"), _job(exported, tmp_path), 1)
    assert c.status == "skipped"
    assert "no BF16" in c.note


def test_a_machine_without_openvino_skips_its_candidates(exported, tmp_path, monkeypatch):
    def missing() -> None:
        raise CandidateUnavailable("OpenVINO is not installed here (pip install openvino nncf)")

    monkeypatch.setattr("quantgate.backends.openvino._openvino", missing)
    c = score_candidate(get_recipe("ov-nncf-int8-transformer"), _job(exported, tmp_path), 1)
    assert c.status == "skipped"
    assert "not installed" in c.note
    assert get_quantizer("openvino").runtime == "openvino"


def test_the_sensitive_node_ranking_becomes_nncfs_ignored_scope(exported, tmp_path):
    """The fallback's ranking on an OpenVINO recipe names ONNX nodes; the trial keeps exactly those in FP32
    on the OpenVINO graph (their weights stay FP32 constants)."""
    result, _heldout = exported
    job = _job(exported, tmp_path)
    recipe = get_recipe("ov-nncf-int8-transformer")
    assert recipe.can_fall_back
    ranking = get_quantizer("openvino").rank_sensitive_nodes(recipe, result.onnx_path, job.calibration)
    assert ranking
    assert ranking == sorted(ranking, key=lambda s: (s.sqnr_db, s.macs_per_token))
    kept = [s.node for s in ranking[:2]]
    base = build_candidate(recipe, result.onnx_path, tmp_path / "base", calibration=job.calibration)
    trial = build_candidate(
        recipe.keeping_fp32(kept, "trial"), result.onnx_path, tmp_path / "trial", calibration=job.calibration
    )
    import openvino as ov

    def weight_source(path: Path) -> dict[str, str]:
        """What feeds each weight MatMul's weight input: a dequantizing Multiply (INT8 weights) or the FP32
        Constant."""
        model = ov.Core().read_model(str(path))
        return {
            op.get_friendly_name(): op.input_value(1).get_node().get_type_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and op.get_friendly_name() in {s.node for s in ranking}
        }

    before, after = weight_source(base.path), weight_source(trial.path)
    assert set(before.values()) == {"Multiply"}  # every ranked node has INT8 weights in the base
    assert {n for n, src in after.items() if src == "Constant"} == set(kept)  # exactly the kept ones FP32
    assert trial.op_counts["Convert"] < base.op_counts["Convert"]


def test_an_unknown_node_in_the_ignored_scope_is_a_clear_error(exported, tmp_path):
    job = _job(exported, tmp_path)
    recipe = get_recipe("ov-nncf-int8-transformer").keeping_fp32(["/no/such/MatMul"], "bad")
    c = score_candidate(recipe, job, 1)
    assert c.status == "failed"
    assert "/no/such/MatMul" in c.note
    assert "ONNX export's node names" in c.note


def test_accuracy_control_is_driven_by_the_runs_task_metric(exported, tmp_path, monkeypatch):
    """NNCF's accuracy control validates with our task metric on the evaluation split (through the same
    task type and open_session as every candidate) and with the run's max_task_metric_drop."""
    from quantgate.search_driver import accuracy_target

    calls: list[float] = []
    job = _job(exported, tmp_path)
    task = get_task_type("sentence-embedding")
    real = accuracy_target(task, job, 1)

    def metric(servable: Servable) -> float:
        calls.append(real.metric(servable))
        return calls[-1]

    monkeypatch.setattr(
        "quantgate.search_driver.accuracy_target",
        lambda *a: real.__class__(metric=metric, max_drop=real.max_drop, feeds=real.feeds),
    )
    c = score_candidate(get_recipe("ov-nncf-int8-accuracy-control"), job, 1)
    assert c.status == "evaluated", c.note
    assert len(calls) >= 2  # the FP32 model and the quantized one, at least
    assert calls[0] == pytest.approx(job.reference.task_metric, abs=1e-3)  # FP32 first, on the same rows
    assert real.max_drop == GateThresholds().value("max_task_metric_drop")


def test_accuracy_control_outside_a_search_says_what_it_needs(exported, tmp_path):
    result, heldout = exported
    calibration = get_task_type("sentence-embedding").calibration_feeds(result.assets_dir, heldout.head(8))
    with pytest.raises(Exception, match="run it through a search"):
        build_candidate(
            get_recipe("ov-nncf-int8-accuracy-control"), result.onnx_path, tmp_path, calibration=calibration
        )


def test_accuracy_control_reverts_layers_while_our_metric_says_the_drop_is_too_large(
    exported, tmp_path, monkeypatch
):
    """A metric that reports a large drop for every quantized model makes NNCF revert layers to FP32 (up to
    max_iterations): what it keeps quantized is decided by our metric, not by NNCF's own."""
    from quantgate.backends import AccuracyTarget
    from quantgate.backends.openvino import OvRecipe
    from quantgate.search_driver import accuracy_target

    job = _job(exported, tmp_path)
    real = accuracy_target(get_task_type("sentence-embedding"), job, 1)
    seen: list[float] = []

    def harsh(servable: Servable) -> float:
        value = real.metric(servable)
        seen.append(value)
        return value if len(seen) == 1 else value - 0.5  # the FP32 model first, then every quantized one

    monkeypatch.setattr(
        "quantgate.search_driver.accuracy_target",
        lambda *a: AccuracyTarget(metric=harsh, max_drop=0.01, feeds=real.feeds),
    )
    plain = score_candidate(get_recipe("ov-nncf-int8-transformer"), job, 1)
    assert len(seen) == 0  # a plain NNCF recipe never asks for the metric
    recipe = OvRecipe(name="ac-harsh", accuracy_control=True, max_iterations=2)
    reverted = score_candidate(recipe, job, 1)
    assert reverted.status == "evaluated", reverted.note
    assert len(seen) >= 3  # FP32, the quantized model, and after each revert
    assert reverted.op_counts["Convert"] < plain.op_counts["Convert"]  # fewer INT8 weights left
