"""`load_tokenizer` hands a thread the tokenizer it already loaded from a folder while the folder's files are
unchanged (a run loads the same one for the export, the calibration, every model's outputs and the
benchmark); another thread gets its own (a fast tokenizer must not be called from two threads at once)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from quantgate.errors import InvalidModelError
from quantgate.export import load_tokenizer

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture
def folder(minilm_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tokenizer"
    out.mkdir()
    for name in FILES:
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, out / name)
    return out


def test_the_same_thread_gets_the_same_tokenizer_until_a_file_changes(folder):
    first = load_tokenizer(folder)
    assert load_tokenizer(folder) is first
    assert first("a test")["input_ids"] == load_tokenizer(folder)("a test")["input_ids"]
    config = folder / "tokenizer_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_tokenizer(folder) is not first


def test_another_thread_loads_its_own(folder):
    mine = load_tokenizer(folder)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(load_tokenizer(folder)))
    worker.start()
    worker.join()
    assert len(theirs) == 1
    assert theirs[0] is not mine


def test_a_folder_without_a_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidModelError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path / "empty")
