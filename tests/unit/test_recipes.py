"""Recipes on a tiny random BERT: every method produces a valid graph of the expected structure, recipes are
data (JSON round trip, validation), candidates built concurrently from one source do not collide, and
the SQNR ranking finds the node that was made sensitive on purpose."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from quantgate.backends.onnxruntime import DEFAULT_SEARCH, RECIPES, apply_recipe, fuse_transformer
from quantgate.backends.onnxruntime import OrtRecipe as Recipe
from quantgate.backends.openvino import DEFAULT_SEARCH as OV_DEFAULT_SEARCH
from quantgate.backends.ort_sensitivity import _quantize_weight, rank_nodes, sqnr_db
from quantgate.errors import ConfigError
from quantgate.export import tokenize
from quantgate.families.sentence_embedding import export_sentence_embedding
from quantgate.quantize import (
    get_recipe,
    load_recipe_file,
    resolve_recipes,
)
from quantgate.runtime import SessionSettings, inference_session, read_settings, settings_path
from quantgate.sensitivity import exclusion_steps, next_exclusion

TEXTS = [
    "a short one",
    "A considerably longer sentence, with punctuation and more tokens in it.",
    "third",
    "the fourth sentence of the sample",
]
WEIGHT_MATMULS = 12  # 2 layers x (Q, K, V, attention output, FFN in, FFN out)


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_sentence_embedding(tiny_model_dir, tmp_path_factory.mktemp("onnx"), TEXTS, atol=1e-4)


@pytest.fixture(scope="module")
def feeds(tiny_model_dir: Path) -> list[dict[str, np.ndarray]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [tokenize(tok, TEXTS[i : i + 2], 24, pad_to_max=True) for i in (0, 2)]


def _embed(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return inference_session(path, threads=1).run(["sentence_embedding"], feed)[0]


# -- recipes are data ---------------------------------------------------------------------------------------


def test_every_catalogue_recipe_round_trips_through_json_unchanged():
    for recipe in RECIPES.values():
        again = Recipe.model_validate_json(recipe.model_dump_json())
        assert again == recipe
        assert again.model_dump() == recipe.model_dump()
    custom = Recipe(name="mine", per_channel=True, nodes_to_exclude=["/a/MatMul", "/b/MatMul"])
    assert Recipe.model_validate(json.loads(custom.model_dump_json())) == custom


def test_default_search_tries_at_least_six_distinct_catalogue_recipes():
    assert len(set(DEFAULT_SEARCH)) == len(DEFAULT_SEARCH) >= 6
    methods = {get_recipe(n).method for n in DEFAULT_SEARCH}
    assert methods == {"dynamic", "static"}
    assert any(get_recipe(n).fuse for n in DEFAULT_SEARCH)


def test_static_needs_a_calibration_method_and_dynamic_refuses_one():
    with pytest.raises(ValidationError, match="needs calibration"):
        Recipe(name="s", method="static")
    with pytest.raises(ValidationError, match=r"static. only"):
        Recipe(name="d", calibration="MinMax")
    with pytest.raises(ValidationError):
        Recipe(name="Bad Name!")


def test_recipe_lists_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="repeated"):
        resolve_recipes(["dynamic-int8", "dynamic-int8"])
    with pytest.raises(ConfigError, match="reserved"):
        resolve_recipes([Recipe(name="onnx-fp32")])
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_recipes(["int3"])
    # Both engines' default searches, ONNX Runtime's first.
    assert [r.name for r in resolve_recipes(None)] == [*DEFAULT_SEARCH, *OV_DEFAULT_SEARCH]
    bad = tmp_path / "r.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(ConfigError, match="JSON list"):
        load_recipe_file(bad)
    bad.write_text('[{"name": "x", "method": "static"}]')
    with pytest.raises(ConfigError, match="needs calibration"):
        load_recipe_file(bad)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(["dynamic-int8", {"name": "mine", "per_channel": True}]))
    assert [r.name for r in load_recipe_file(good)] == ["dynamic-int8", "mine"]


# -- every method builds the graph it says ----------------------------------------------------------------


def test_static_qdq_quantizes_the_weight_matmuls_with_calibrated_activations(exported, feeds, tmp_path):
    result = apply_recipe(get_recipe("static-qdq-minmax"), exported.onnx_path, tmp_path, calibration=feeds)
    # QDQ also quantizes the 4 activation x activation MatMuls (QK^T, attention x V) dynamic leaves in FP32.
    assert result.quantized_matmuls == WEIGHT_MATMULS + 4
    assert result.float_matmuls == 0
    assert result.op_counts["QuantizeLinear"] > 0
    assert result.op_counts["DequantizeLinear"] > 0
    assert "DynamicQuantizeLinear" not in result.op_counts
    cos = (_embed(exported.onnx_path, feeds[0]) * _embed(result.path, feeds[0])).sum(1)
    assert cos.min() > 0.9


def test_static_without_calibration_data_is_a_clear_error(exported, tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        apply_recipe(get_recipe("static-qdq-entropy"), exported.onnx_path, tmp_path, calibration=[])


def test_fp16_halves_the_file_and_keeps_float_io(exported, feeds, tmp_path):
    result = apply_recipe(get_recipe("fp16"), exported.onnx_path, tmp_path)
    assert result.path.name == "model.fp16.onnx"
    assert result.size_bytes < 0.6 * exported.size_bytes
    emb = _embed(result.path, feeds[0])
    assert emb.dtype == np.float32
    assert np.abs(emb - _embed(exported.onnx_path, feeds[0])).max() < 1e-2


def test_fusion_records_fused_operators_and_warns_when_attention_is_not_fused(
    exported, tiny_model_dir, tmp_path
):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    fused = fuse_transformer(exported.onnx_path, config, tmp_path / "fused")
    assert fused.fused_ops.get("Attention") == 2  # eager-attention export: one per layer
    assert fused.warning is None
    result = apply_recipe(
        get_recipe("fused-dynamic-int8-per-channel"), exported.onnx_path, tmp_path, fused=fused
    )
    assert result.fused_ops == fused.fused_ops
    assert result.op_counts.get("QAttention") == 2

    # Without the head count the optimizer cannot match attention: 0 Attention fused, and the result says so.
    unknown = {k: v for k, v in config.items() if k not in ("num_attention_heads", "hidden_size")}
    fused_blind = fuse_transformer(exported.onnx_path, unknown, tmp_path / "blind")
    assert fused_blind.fused_ops.get("Attention", 0) == 0
    assert "0 Attention" in (fused_blind.warning or "")
    with pytest.raises(ConfigError, match="fusion failed"):
        fuse_transformer(exported.onnx_path, dict(config, num_attention_heads=3), tmp_path / "bad")
    with pytest.raises(ConfigError, match="model_type"):
        fuse_transformer(exported.onnx_path, {"model_type": "gpt2"}, tmp_path / "g")


def test_candidates_built_concurrently_from_one_source_do_not_collide(exported, tmp_path):
    """ORT writes a scratch model-inferred.onnx beside its input: two candidates sharing the source file
    used to delete each other's (FileNotFoundError in one of them)."""
    names = [
        "dynamic-int8",
        "dynamic-int8-per-channel",
        "dynamic-uint8-per-channel",
        "dynamic-int8-per-channel-reduce-range",
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda n: apply_recipe(get_recipe(n), exported.onnx_path, tmp_path / n), names)
        )
    assert all(r.quantized_matmuls == WEIGHT_MATMULS for r in results)
    assert {p.name for p in exported.onnx_path.parent.iterdir()} == {
        p.name for p in exported.onnx_path.parent.iterdir() if "inferred" not in p.name
    }


def test_nodes_to_exclude_stay_in_fp32(exported, tmp_path):
    import onnx

    graph = onnx.load(str(exported.onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    weight_mm = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    recipe = get_recipe("dynamic-int8-per-channel").keeping_fp32(weight_mm[:3], "pc+fp32x3")
    result = apply_recipe(recipe, exported.onnx_path, tmp_path)
    assert result.quantized_matmuls == WEIGHT_MATMULS - 3
    kept = {n.name for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMul"}
    assert set(weight_mm[:3]) <= kept


# -- sensitivity ranking -------------------------------------------------------------------------------------


def test_weight_quantization_is_exact_on_the_grid_and_per_channel_beats_per_tensor():
    rng = np.random.default_rng(0)
    grid = rng.integers(-127, 128, size=(16, 8)).astype(np.float32) * 0.01
    grid[0, :] = 1.27  # pin each column's max so the scale is exactly 0.01
    assert np.allclose(_quantize_weight(grid, Recipe(name="t", per_channel=True)), grid, atol=1e-6)
    w = rng.normal(size=(64, 32)).astype(np.float32) * np.linspace(0.01, 10, 32, dtype=np.float32)
    per_tensor = sqnr_db(w, _quantize_weight(w, Recipe(name="t")))
    per_channel = sqnr_db(w, _quantize_weight(w, Recipe(name="t", per_channel=True)))
    assert per_channel > per_tensor + 6  # at least 1 bit better when channel ranges differ 1000x


def test_sqnr_ranking_puts_an_outlier_weight_first(exported, feeds, tmp_path):
    """Blow one weight matrix up with a single outlier: per-tensor INT8 then rounds the rest of that
    matrix to almost nothing, and the ranking must name that node first."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported.onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    target = next(
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and "intermediate" in n.name and n.input[1] in inits
    )
    w = numpy_helper.to_array(inits[target.input[1]]).copy()
    w[0, 0] = 500 * np.abs(w).max()
    inits[target.input[1]].CopyFrom(numpy_helper.from_array(w, target.input[1]))
    path = tmp_path / "outlier.onnx"
    onnx.save(model, str(path))

    ranking = rank_nodes(path, Recipe(name="t"), feeds)
    assert len(ranking) == WEIGHT_MATMULS
    assert ranking[0].node == target.name
    assert [r.sqnr_db for r in ranking] == sorted(r.sqnr_db for r in ranking)
    assert ranking[0].sqnr_db < ranking[1].sqnr_db - 5

    excluded = rank_nodes(path, Recipe(name="t", nodes_to_exclude=[target.name]), feeds)
    assert target.name not in {r.node for r in excluded}


def test_exclusion_steps_grow_from_one_and_respect_the_budget():
    assert exclusion_steps(36, 6) == [1, 2, 3, 4, 6, 9]
    assert exclusion_steps(3, 6) == [1, 2, 3]
    assert exclusion_steps(36, 0) == []


def _plan(n_nodes: int, max_trials: int, needed: int) -> list[int]:
    """The counts tried when keeping `needed` nodes in FP32 is the least that passes."""
    tried: list[tuple[int, bool]] = []
    while (k := next_exclusion(n_nodes, max_trials, tried)) is not None:
        tried.append((k, k >= needed))
    return [k for k, _ in tried]


def test_fallback_steps_grow_then_bisect_back_to_the_fewest_nodes():
    assert _plan(36, 8, needed=7) == [1, 2, 3, 4, 6, 9, 7]  # 7 passes: 6 failed, so 7 is the fewest
    assert _plan(36, 8, needed=8) == [1, 2, 3, 4, 6, 9, 7, 8]
    assert _plan(36, 6, needed=8) == [1, 2, 3, 4, 6, 9]  # no trials left to bisect
    assert _plan(36, 8, needed=1) == [1]
    assert _plan(3, 8, needed=10) == [1, 2, 3]  # nothing passes: every step, then stop


# -- session settings travel with the artifact ---------------------------------------------------------------


def _session_ops(path: Path, tmp_path: Path) -> set[str]:
    import onnx

    optimized = tmp_path / f"{path.parent.name}-optimized.onnx"
    inference_session(path, threads=1, optimized_path=optimized)
    return {n.op_type for n in onnx.load(str(optimized)).graph.node}


def test_a_recipes_session_settings_are_written_beside_its_artifact_and_applied(exported, feeds, tmp_path):
    plain = apply_recipe(get_recipe("dynamic-int8-per-channel"), exported.onnx_path, tmp_path / "plain")
    no_sln = apply_recipe(
        get_recipe("dynamic-int8-per-channel-no-sln"), exported.onnx_path, tmp_path / "nosln"
    )
    sidecar = settings_path(no_sln.path)
    assert sidecar.name == "model.int8.session.json"
    assert read_settings(no_sln.path).disabled_optimizers == ["SkipLayerNormFusion"]
    assert read_settings(plain.path) == SessionSettings()
    # ORT fuses the residual Add + LayerNorm after an INT8 MatMul unless the artifact's settings say no.
    assert "SkipLayerNormalization" in _session_ops(plain.path, tmp_path)
    ops = _session_ops(no_sln.path, tmp_path)
    assert "SkipLayerNormalization" not in ops
    assert "LayerNormalization" in ops
    # Same weights, same maths up to float rounding.
    assert np.allclose(_embed(plain.path, feeds[0]), _embed(no_sln.path, feeds[0]), atol=1e-4)


def test_bad_session_settings_are_refused_with_the_way_out(exported, tmp_path):
    with pytest.raises(ValidationError, match="not ORT optimizer names"):
        Recipe(name="t", session={"disabled_optimizers": ["skip layer norm"]})
    result = apply_recipe(get_recipe("dynamic-int8-per-channel-no-sln"), exported.onnx_path, tmp_path)
    settings_path(result.path).write_text('{"disabled_optimizer": ["SkipLayerNormFusion"]}')
    with pytest.raises(ConfigError, match=r"model\.int8\.session\.json is not valid session settings"):
        inference_session(result.path, threads=1)
    settings_path(result.path).write_text('{"disabled_optimizers": ["SkipLayerNormFusion; rm -rf"]}')
    with pytest.raises(ConfigError, match="not ORT optimizer names"):
        read_settings(result.path)
