"""Export and quantization on a tiny random BERT: real ONNX files, no servers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quantgate.backends.onnxruntime import RECIPES, OnnxRuntime, apply_recipe
from quantgate.backends.onnxruntime import OrtRecipe as Recipe
from quantgate.backends.ort_sensitivity import rank_nodes
from quantgate.errors import ConfigError, InvalidModelError
from quantgate.export import check_model_folder, external_data_min_bytes, external_locations, tokenize
from quantgate.families.sentence_embedding import export_sentence_embedding
from quantgate.quantize import get_recipe
from quantgate.runtime import inference_session

EXPORT_ATOL = 1e-4
TEXTS = [
    "a short one",
    "A considerably longer sentence, with punctuation and more tokens in it.",
    "third",
    "the fourth sentence of the sample",
]


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_sentence_embedding(tiny_model_dir, tmp_path_factory.mktemp("onnx"), TEXTS, atol=EXPORT_ATOL)


def test_export_matches_pytorch_and_ships_the_tokenizer(exported):
    assert exported.onnx_path.is_file()
    assert max(exported.max_abs_diff_vs_torch.values()) <= EXPORT_ATOL
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in exported.tokenizer_files}
    assert exported.output_names == ["last_hidden_state", "sentence_embedding"]


def test_exported_graph_has_dynamic_batch_and_sequence(exported, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sess = inference_session(exported.onnx_path, threads=1)
    for batch, length in [(1, 8), (3, 17), (5, 64)]:
        feeds = tokenize(tok, ["word " * 100] * batch, max_length=length, pad_to_max=True)
        hidden, emb = sess.run(None, feeds)
        assert hidden.shape == (batch, length, 64)
        assert emb.shape == (batch, 64)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # L2-normalised in the graph


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_quantizes_every_weight_matmul(exported, tmp_path, per_channel):
    recipe = Recipe(name="t", per_channel=per_channel)
    result = apply_recipe(recipe, exported.onnx_path, tmp_path)
    # 2 layers x (Q, K, V, attention output, FFN in, FFN out) = 12 weight MatMuls; the 2 per layer that
    # multiply two activations (QK^T and attention x V) stay FP32 in dynamic quantization.
    assert result.quantized_matmuls == 12
    assert result.float_matmuls == 4
    assert result.op_counts.get("DynamicQuantizeLinear", 0) > 0
    assert result.size_bytes < exported.size_bytes / 2


def test_recipes_serialise_and_reload_identically():
    for recipe in RECIPES.values():
        assert Recipe.model_validate_json(recipe.model_dump_json()) == recipe


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ConfigError, match="dynamic-int8-per-channel"):
        get_recipe("int4-magic")


def test_model_folder_checks(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    check_model_folder(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(InvalidModelError, match=r"pickle.*--allow-pickle"):
        check_model_folder(folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(InvalidModelError, match=r"no model\.safetensors"):
        check_model_folder(folder)
    shutil.copy(tiny_model_dir / "model.safetensors", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidModelError, match="architectures"):
        check_model_folder(folder)


def test_corrupt_weights_are_a_clear_error(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InvalidModelError, match="not a readable safetensors"):
        export_sentence_embedding(folder, tmp_path / "out", TEXTS, atol=EXPORT_ATOL)


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 2])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../../etc/passwd", "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [weight],
    )
    path = tmp_path / "evil" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(InvalidModelError, match="outside its folder"):
        inference_session(path, threads=1)
    with pytest.raises(InvalidModelError, match="outside its folder"):
        apply_recipe(Recipe(name="t"), path, tmp_path / "q")


def test_an_op_type_typo_is_refused_when_the_recipe_is_read():
    with pytest.raises(ValueError, match=r"op_types \['Matmul'\] are not op types ONNX Runtime quantizes"):
        Recipe(name="typo", op_types=["Matmul"])


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"op_types": ["Conv"]}, "op_types ['Conv'] matched no node of the graph"),
        ({"op_types": ["MatMul"], "nodes_to_exclude": ["__every__"]}, "matched no node"),
    ],
)
def test_a_recipe_that_quantizes_nothing_fails_naming_the_field(exported, tmp_path, fields, words):
    """A graph with no integer op is not an INT8 candidate, whatever its file is called."""
    from quantgate.errors import ConfigError

    if fields.get("nodes_to_exclude") == ["__every__"]:
        import onnx

        graph = onnx.load(str(exported.onnx_path), load_external_data=False).graph
        fields = {"nodes_to_exclude": [n.name for n in graph.node if n.op_type in {"MatMul", "Gather"}]}
        words = "nodes_to_exclude keeps every quantizable node in FP32"
    with pytest.raises(ConfigError, match="produced a graph with no INT8 op") as err:
        apply_recipe(Recipe(name="nothing", **fields), exported.onnx_path, tmp_path / "q")
    assert words in str(err.value)
    assert not (tmp_path / "q" / "model.int8.onnx").exists()


def test_every_catalogue_recipe_counts_quantized_ops(exported, tmp_path):
    import onnx

    from quantgate.backends.onnxruntime import count_quantized

    for name in ("dynamic-int8", "fp16"):
        recipe = get_recipe(name)
        result = apply_recipe(recipe, exported.onnx_path, tmp_path / name)
        graph = onnx.load(str(result.path), load_external_data=False).graph
        assert count_quantized(graph, recipe.precision) > 0


def test_an_embedding_candidate_is_scored_with_the_texts_that_moved_most(exported, tmp_path, small_sts):
    from quantgate.backends import Servable
    from quantgate.tasktypes import get_task_type
    from quantgate.thresholds import GateThresholds

    task = get_task_type("sentence-embedding")
    heldout = task.read_heldout(small_sts).head(60)
    fp32 = Servable(exported.onnx_path)
    reference = task.reference(fp32, exported.assets_dir, heldout, 2)
    q = apply_recipe(RECIPES["dynamic-int8"], exported.onnx_path, tmp_path / "int8")
    ev = task.evaluate(reference, Servable(q.path), exported.assets_dir, heldout, GateThresholds(), 2)
    lo, hi = ev.extra_intervals["neighbour_agreement"]
    assert 0 <= lo <= ev.extra["neighbour_agreement"] <= hi <= 1
    assert len(ev.examples) == 10
    changes = [e.change for e in ev.examples]
    assert changes == sorted(changes, reverse=True)  # worst first
    assert changes[0] == pytest.approx(1 - ev.extra["min_cosine"], abs=1e-4)
    # The cosine tail: the share of the 120 texts below the floor, with the Wilson interval it is judged by.
    share = ev.extra["share_below_cosine_floor"]
    lo, hi = ev.extra_intervals["share_below_cosine_floor"]
    assert share * 120 == pytest.approx(round(share * 120))
    assert 0 <= lo <= share <= hi <= 1
    assert ev.examples[0].text in task.texts(heldout)


def test_an_export_is_one_file_below_the_external_data_threshold(exported):
    assert external_locations(exported.onnx_path) == set()
    assert {p.name for p in exported.onnx_path.parent.iterdir()} == {"model.onnx", "tokenizer"}


def test_an_export_forced_to_external_data_is_quantized_the_same_way_with_every_file_listed(
    exported, tiny_model_dir, tmp_path, monkeypatch
):
    """QUANTGATE_EXTERNAL_DATA_MIN_BYTES=0 stores the weights beside the graph, as a model past 2 GB must
    be; ORT's quantizer then writes its INT8 model the same way, and gives the same model as from the
    one-file export."""
    monkeypatch.setenv("QUANTGATE_EXTERNAL_DATA_MIN_BYTES", "0")
    external = export_sentence_embedding(tiny_model_dir, tmp_path / "onnx", TEXTS, atol=EXPORT_ATOL)
    assert external_locations(external.onnx_path) == {"model.onnx.data"}
    # Only the graph and its data: the exporter's own folder is gone.
    assert {p.name for p in external.onnx_path.parent.iterdir()} == {
        "model.onnx",
        "model.onnx.data",
        "tokenizer",
    }
    data = external.onnx_path.with_name("model.onnx.data").stat().st_size
    assert external.onnx_path.stat().st_size < 100_000 < 7 * 2**20 < data  # the 30522 x 64 embeddings
    assert external.size_bytes == external.onnx_path.stat().st_size + data
    assert max(external.max_abs_diff_vs_torch.values()) <= EXPORT_ATOL

    recipe = RECIPES["dynamic-int8-per-channel"]
    int8 = apply_recipe(recipe, external.onnx_path, tmp_path / "int8")
    files = OnnxRuntime().files(int8.path)
    assert {p.name for p in files} == {"model.int8.onnx", "model.int8.onnx.data", "model.int8.session.json"}
    assert {p.name for p in (tmp_path / "int8").iterdir()} == {p.name for p in files}  # no scratch view left
    assert int8.size_bytes == sum(p.stat().st_size for p in files)
    assert int8.quantized_matmuls == 12
    one_file = apply_recipe(recipe, exported.onnx_path, tmp_path / "int8-one-file")
    feeds = tokenize(_tokenizer(tiny_model_dir), TEXTS, max_length=32)
    got = inference_session(int8.path, threads=1).run(None, feeds)
    want = inference_session(one_file.path, threads=1).run(None, feeds)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # The sensitivity ranking (the fallback's) saves its capture graph with the data too: same ranking.
    assert rank_nodes(external.onnx_path, recipe, [feeds]) == rank_nodes(exported.onnx_path, recipe, [feeds])


def test_a_bad_external_data_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("QUANTGATE_EXTERNAL_DATA_MIN_BYTES", "-1")
    with pytest.raises(ConfigError, match="QUANTGATE_EXTERNAL_DATA_MIN_BYTES"):
        external_data_min_bytes()


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_external_locations_are_read_again_when_the_file_changes(tmp_path):
    """Remembered per file version: the same file answers from memory, a file saved again (other layout,
    same path) is read again, and a link answers for the file it points at."""
    import onnx

    from quantgate.export import save_onnx
    from tests.conftest import matmul_graph

    path = matmul_graph(tmp_path / "m" / "model.onnx")
    assert external_locations(path) == set()
    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    assert external_locations(link) == set()
    model = onnx.load(str(path))
    path.unlink()
    save_onnx(model, path, external=True)
    assert external_locations(path) == {"model.onnx.data"}
    assert external_locations(link) == {"model.onnx.data"}
