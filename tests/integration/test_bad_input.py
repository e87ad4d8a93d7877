"""Bad input: each case ends with a clear error (exit 2 from the CLI, or a Failed run naming the problem)
and storage exactly as it was, apart from a failed run's own report under runs/. The README's bad-input
table lists these cases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.quantize_and_promote import quantize_and_promote
from quantgate import lifecycle
from quantgate.cli import EXIT_ERROR, app
from quantgate.errors import HeldoutValidationError, IntegrityError, InvalidModelError
from quantgate.registry import ModelRef
from tests import heldout_bombs as bombs
from tests.integration.conftest import snapshot

runner = CliRunner()


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "model"
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, drop: tuple[str, ...] = (), text: str | None = None) -> None:
    cfg = folder / "config.json"
    if text is not None:
        cfg.write_text(text)
        return
    data = json.loads(cfg.read_text())
    for key in drop:
        data.pop(key, None)
    cfg.write_text(json.dumps(data))


def _unlink(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).unlink()


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _symlink(folder: Path) -> None:
    (folder / "extra.txt").symlink_to("/etc/hostname")


def _evil_onnx(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1])
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/shadow"
    graph = helper.make_graph(
        [], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])], [weight]
    )
    onnx.save(helper.make_model(graph), str(folder / "extra.onnx"))


def _rewrite_weights(
    folder: Path, rename: bool = False, only: str | None = None, reshape: bool = False
) -> None:
    """A model.safetensors that transformers would load with a warning and random weights."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    if rename:
        tensors = {f"renamed.{k}": v for k, v in tensors.items()}
    if only:
        tensors = {only: np.zeros((3, 3), dtype=np.float32)}
    if reshape:
        key = next(k for k in sorted(tensors) if k.endswith("query.weight"))
        tensors[key] = np.zeros((tensors[key].shape[0] + 1, tensors[key].shape[1]), dtype=np.float32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# (case id, how the model folder is broken, words the error must contain)
MODEL_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("missing-safetensors", lambda f: _unlink(f, "model.safetensors"), "no model.safetensors"),
    ("truncated-safetensors", _truncate_weights, "not a readable safetensors"),
    ("pickle-only-checkpoint", _pickle_only, "--allow-pickle"),
    (
        "config-without-architectures",
        lambda f: _edit_config(f, drop=("architectures", "model_type")),
        "architectures",
    ),
    ("config-not-json", lambda f: _edit_config(f, text="{not json"), "not valid JSON"),
    ("config-missing", lambda f: _unlink(f, "config.json"), "no config.json"),
    ("tokenizer-missing", lambda f: _unlink(f, "tokenizer.json", "vocab.txt"), "no tokenizer"),
    ("symlink-in-folder", _symlink, "symbolic link"),
    ("onnx-external-data-path-traversal", _evil_onnx, "outside its folder"),
    ("weights-keys-renamed", lambda f: _rewrite_weights(f, rename=True), "does not match the architecture"),
    ("weights-one-unrelated-tensor", lambda f: _rewrite_weights(f, only="lonely"), "missing"),
    ("weights-wrong-shape", lambda f: _rewrite_weights(f, reshape=True), "wrong shape"),
]


@pytest.mark.parametrize(("case", "breaker", "words"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_broken_model_folder_is_refused_at_registration(
    store, tmp_path, tiny_model_dir, small_sts, case, breaker, words
):
    folder = _copy(tiny_model_dir, tmp_path)
    breaker(folder)
    before = snapshot(store)
    result = runner.invoke(
        app, ["register", "tiny", "v1", "--model-dir", str(folder), "--heldout", str(small_sts)]
    )
    assert result.exit_code == EXIT_ERROR, (case, result.output)
    assert words in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert snapshot(store) == before


REGISTER_ARG_CASES = [
    ("name-dotdot", ["..", "v1"], "invalid model name"),
    ("name-slash", ["a/b", "v1"], "invalid model name"),
    ("name-space", ["my model", "v1"], "invalid model name"),
    ("version-control-char", ["tiny", "v1\x1b[31m"], "invalid version"),
    ("version-traversal", ["tiny", "../v1"], "invalid version"),
    ("unknown-task-type", ["tiny", "v1", "--task", "image-generation"], "unknown task type"),
    ("heldout-missing", ["tiny", "v1", "--heldout-override", "/nonexistent.tsv"], "does not exist"),
    ("heldout-not-utf8", ["tiny", "v1", "--heldout-override", "LATIN1"], "not UTF-8"),
    # serving profiles (issue #21): lengths the model cannot take, an empty list, a zero batch
    (
        "profile-past-max",
        ["tiny", "v1", "--profile", 'JSON:{"lengths": [16, 600]}'],
        "has lengths up to 600 tokens, past the model's maximum of 512",
    ),
    (
        "profile-empty",
        ["tiny", "v1", "--profile", 'JSON:{"lengths": []}'],
        "lengths: List should have at least 1",
    ),
    (
        "profile-zero-batch",
        ["tiny", "v1", "--profile", 'JSON:{"batch_sizes": [0]}'],
        "batch sizes must be 1..64, got [0]",
    ),
]


@pytest.mark.parametrize(
    ("case", "args", "words"), REGISTER_ARG_CASES, ids=[c[0] for c in REGISTER_ARG_CASES]
)
def test_bad_registration_arguments_are_refused(
    store, tmp_path, tiny_model_dir, small_sts, case, args, words
):
    heldout = str(small_sts)
    if "--heldout-override" in args:
        heldout = args[args.index("--heldout-override") + 1]
        args = args[: args.index("--heldout-override")]
        if heldout == "LATIN1":
            latin = tmp_path / "latin1.tsv"
            latin.write_bytes("g\tf\t2012\t3.0\tcaf\u00e9 au lait\tun caf\u00e9\n".encode("latin-1") * 20)
            heldout = str(latin)
    for i, arg in enumerate(args):
        if arg.startswith("JSON:"):
            declared = tmp_path / "profile.json"
            declared.write_text(arg.removeprefix("JSON:"))
            args = [*args[:i], str(declared), *args[i + 1 :]]
    before = snapshot(store)
    result = runner.invoke(app, ["register", *args, "--model-dir", str(tiny_model_dir), "--heldout", heldout])
    assert result.exit_code == EXIT_ERROR, (case, result.output)
    assert words in " ".join(result.output.split()), result.output
    assert snapshot(store) == before


# (case id, how the held-out set is built beside a two-class image folder, words the error must contain)
BOMB_CASES: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    (
        "png-10000x10000-in-image-folder",
        lambda folder, tmp: bombs.png_of_zeros(folder / "c0" / "bomb.png", 10_000, 10_000).parent.parent,
        "QUANTGATE_MAX_IMAGE_PIXELS",
    ),
    (
        "tar-gz-512mib-member",
        lambda folder, tmp: bombs.tar_gz_with_member(tmp / "bomb.tar.gz", 512 * 2**20),
        "QUANTGATE_MAX_HELDOUT_MEMBER_BYTES",
    ),
    (
        "npz-declaring-600mb",
        lambda folder, tmp: bombs.npz_declaring(tmp / "bomb.npz", (200, 1000, 1000, 3)),
        "QUANTGATE_MAX_HELDOUT_BYTES",
    ),
]


@pytest.mark.parametrize(("case", "build", "words"), BOMB_CASES, ids=[c[0] for c in BOMB_CASES])
def test_a_held_out_bomb_is_refused_at_registration_before_decoding(store, tmp_path, case, build, words):
    """Each bomb is a file of at most a few MB; the refusal comes from its headers (peak memory is asserted
    in tests/unit/test_heldout_bounds.py), and nothing reaches storage."""
    model = bombs.tiny_cnn(tmp_path / "cnn")
    heldout = build(bombs.image_folder(tmp_path / "heldout", images=24), tmp_path)
    before = snapshot(store)
    result = runner.invoke(
        app, ["register", "cnn", case, "--model-dir", str(model), "--heldout", str(heldout)]
    )
    assert result.exit_code == EXIT_ERROR, (case, result.output)
    shown = " ".join(result.output.split())
    assert words in shown, result.output
    assert "is above the limit" in shown, result.output
    assert "Traceback" not in result.output
    assert snapshot(store) == before


def _rows(sts: Path, n: int = 60) -> list[list[str]]:
    return [line.split("\t") for line in sts.read_text(encoding="utf-8").splitlines()[:n]]


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _set(rows: list[list[str]], col: int, value: str, every: int = 7) -> list[list[str]]:
    for i in range(0, len(rows), every):
        rows[i][col] = value
    return rows


HELDOUT_CASES: list[tuple[str, Callable[[list[list[str]]], list[list[str]]], str]] = [
    ("empty", lambda rows: [], "row_count"),
    ("wrong-columns", lambda rows: [r[:4] for r in rows], "sentence1"),
    ("score-not-a-number", lambda rows: _set(rows, 4, "high"), "'score'"),
    ("score-out-of-range", lambda rows: _set(rows, 4, "9.5"), "be_between"),
    ("blank-sentence", lambda rows: _set(rows, 5, "   "), "match_regex"),
    ("duplicate-rows", lambda rows: rows[:30] * 2, "unique"),
]


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("case", "mutate", "words"), HELDOUT_CASES, ids=[c[0] for c in HELDOUT_CASES])
def test_bad_heldout_set_fails_validation_and_leaves_only_its_report(
    store, tmp_path, tiny_model_dir, sts_path, case, mutate, words
):
    heldout = _write(tmp_path / f"{case}.tsv", mutate(_rows(sts_path)))
    ref = ModelRef(name="tiny", version=case)
    lifecycle.register(store, ref, tiny_model_dir, heldout, "sentence-embedding")
    _assert_run_fails_cleanly(store, ref, HeldoutValidationError, words)


def _assert_run_fails_cleanly(store, ref: ModelRef, error: type[Exception], words: str) -> None:
    before = snapshot(store)
    state = quantize_and_promote(model=ref.name, version=ref.version, return_state=True)
    assert state.is_failed()
    with pytest.raises(error, match=words):
        state.result()
    after = snapshot(store)
    assert {k: v for k, v in after.items() if k in before} == before
    added = set(after) - set(before)
    # Only the failed run's own prefix: its report (and the held-out set's Data Docs once validated).
    run_prefixes = {"/".join(k.split("/")[:4]) for k in added}
    assert len(run_prefixes) == 1
    (prefix,) = run_prefixes
    assert prefix.startswith(f"runs/{ref.name}/{ref.version}/")
    assert f"{prefix}/report.json" in added
    assert not list(store.list("promoted/"))
    assert not list(store.list("rejected/"))


@pytest.mark.usefixtures("prefect_api")
def test_model_that_outputs_nan_is_refused(store, tmp_path, tiny_model_dir, small_sts):
    import torch
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_model_dir, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    ref = ModelRef(name="tiny", version="nan")
    lifecycle.register(store, ref, folder, small_sts, "sentence-embedding")
    _assert_run_fails_cleanly(store, ref, InvalidModelError, "NaN or Inf")


@pytest.mark.usefixtures("prefect_api")
def test_stored_file_changed_after_registration_is_refused(store, tiny_model_dir, small_sts):
    ref = ModelRef(name="tiny", version="tampered")
    registration = lifecycle.register(store, ref, tiny_model_dir, small_sts, "sentence-embedding")
    store.put_bytes(registration.model_key("config.json"), b'{"model_type": "bert"}')
    _assert_run_fails_cleanly(store, ref, IntegrityError, "changed after registration")


RUN_ARG_CASES = [
    ("huge-sequence-length", ["--seq-len", "100000"], "--seq-len"),
    ("zero-batch", ["--batch", "0"], "batch"),
    ("unknown-recipe", ["--recipe", "int3"], "unknown recipe"),
    ("repeated-recipe", ["--recipe", "dynamic-int8", "--recipe", "dynamic-int8"], "repeated"),
    ("missing-recipe-file", ["--recipe-file", "/nonexistent/recipes.json"], "cannot read recipes"),
    ("zero-candidates", ["--max-candidates", "0"], "--max-candidates"),
    ("negative-calibration-rows", ["--calibration-rows", "-5"], "--calibration-rows"),
    ("negative-threshold", ["--min-p95-speedup", "-2"], "bad threshold"),
    ("nan-threshold", ["--mean-tol", "nan"], "bad threshold"),
    # rich read the pattern's brackets as markup and printed '^{0,79}$' (#20)
    ("bad-recipe-name", ["--recipe-file", "BAD_NAME_FILE"], "pattern '^[a-z0-9][a-z0-9._+-]{0,79}$'"),
    ("unknown-profile", ["--profile", "b1-s999"], "neither a named profile (heldout, b1-s128) nor a file"),
]


@pytest.mark.parametrize(("case", "args", "words"), RUN_ARG_CASES, ids=[c[0] for c in RUN_ARG_CASES])
def test_bad_run_arguments_are_refused_before_anything_runs(
    store, tiny_model_dir, small_sts, tmp_path, case, args, words
):
    lifecycle.register(
        store, ModelRef(name="tiny", version="v1"), tiny_model_dir, small_sts, "sentence-embedding"
    )
    bad_name = tmp_path / "recipes.json"
    bad_name.write_text('[{"name": "Bad Name", "backend": "onnxruntime", "kind": "dynamic"}]')
    args = [str(bad_name) if a == "BAD_NAME_FILE" else a for a in args]
    before = snapshot(store)
    result = runner.invoke(app, ["run", "tiny", "v1", *args])
    assert result.exit_code == EXIT_ERROR, (case, result.output)
    assert words in result.output
    assert snapshot(store) == before
