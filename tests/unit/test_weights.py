"""Weights load completely or not at all: a model.safetensors that does not match its config.json would
otherwise be loaded with random weights (transformers only warns) and could be promoted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantgate.errors import InvalidModelError
from quantgate.export import check_model_folder
from quantgate.families.sentence_embedding import build_embedding_module


def _variant(tiny_model_dir: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tensors = edit(load_file(folder / "model.safetensors"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _drop_one(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.endswith("encoder.layer.1.output.dense.weight")}


def _reshape(t: dict) -> dict:
    key = next(k for k in sorted(t) if k.endswith("attention.self.query.weight"))
    return {**t, key: np.zeros((t[key].shape[0], t[key].shape[1] + 2), dtype=np.float32)}


BAD = [
    ("every-key-renamed", lambda t: {f"model.{k}x": v for k, v in t.items()}, "missing"),
    ("one-unrelated-tensor", lambda t: {"lonely": np.zeros(3, dtype=np.float32)}, "1 unexpected (lonely)"),
    ("one-weight-missing", _drop_one, "1 missing (encoder.layer.1.output.dense.weight)"),
    ("one-extra-weight", lambda t: {**t, "classifier.weight": np.zeros((2, 64), np.float32)}, "unexpected"),
    ("wrong-shape", _reshape, "1 wrong shape"),
]


@pytest.mark.parametrize(("case", "edit", "words"), BAD, ids=[b[0] for b in BAD])
def test_weights_that_do_not_match_the_architecture_are_refused(tiny_model_dir, tmp_path, case, edit, words):
    folder = _variant(tiny_model_dir, tmp_path, edit)
    with pytest.raises(InvalidModelError, match="does not match the architecture") as err:
        check_model_folder(folder)
    assert words in str(err.value)
    assert "save_pretrained" in str(err.value)


def test_complete_weights_are_accepted(tiny_model_dir, minilm_dir):
    check_model_folder(tiny_model_dir)
    check_model_folder(minilm_dir)  # a BertModel checkpoint with an old position_ids buffer stored


def test_a_head_model_checkpoint_loaded_as_its_base_keeps_the_prefix_rule(tiny_model_dir, tmp_path):
    """Keys saved with the base-model prefix (bert.…), as a model with a head saves them, still match."""
    folder = _variant(tiny_model_dir, tmp_path, lambda t: {f"bert.{k}": v for k, v in t.items()})
    check_model_folder(folder)


def test_export_refuses_weights_that_do_not_load_completely(tiny_model_dir, tmp_path, monkeypatch):
    """The export checks transformers' own loading report too (the registration check bypassed here)."""
    folder = _variant(tiny_model_dir, tmp_path, _drop_one)
    monkeypatch.setattr("quantgate.export.check_weights_match_architecture", lambda *a: None)
    with pytest.raises(InvalidModelError, match=r"do not load completely.*missing"):
        build_embedding_module(folder)
