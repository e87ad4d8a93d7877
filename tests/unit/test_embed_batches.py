"""How `embed_texts` runs an evaluation's batches (issue #25): the batches are cut before any thread takes
one, so the outputs do not depend on the thread count; on an engine whose session runs calls side by side
(ONNX Runtime) one single-threaded session takes `threads` calls at once; on one that does not (OpenVINO),
one session of `threads` threads takes them one at a time. A fake engine whose output depends on the batch
a text was in shows any difference."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from quantgate.backends import Servable
from quantgate.families import sentence_embedding as se

TEXTS = [("word " * (i % 23 + 1)).strip() + f" {i}" for i in range(61)]


def _tokenizer(texts, padding, truncation, max_length, return_tensors):  # the HF signature
    width = min(max(len(t) for t in texts), max_length)
    ids = np.zeros((len(texts), width), dtype=np.int64)
    for row, text in enumerate(texts):
        codes = [ord(c) for c in text[:width]]
        ids[row, : len(codes)] = codes
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}


class _Session:
    """Each text's row sum beside its batch's width and first id: a text moved to another batch changes."""

    def __init__(self, side_by_side: bool) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.batches: list[tuple[int, ...]] = []  # each call's texts, by their codes' sums
        # Side by side, the first two calls meet here, each waiting for the other to be running (a guard of
        # 30 s: calls run one at a time break the barrier, and the test fails).
        self.meet = threading.Barrier(2, timeout=30) if side_by_side else None

    def run(self, names, feeds):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.batches.append(tuple(int(x) for x in feeds["input_ids"].sum(1)))
            calls = len(self.batches)
        if self.meet is not None and calls <= 2:
            self.meet.wait()
        ids = feeds["input_ids"]
        width = np.full(len(ids), ids.shape[1], dtype=np.float32)
        out = np.stack([ids.sum(1).astype(np.float32), width, np.full(len(ids), ids[0, 0], np.float32)], 1)
        with self.lock:
            self.running -= 1
        return [out]


def _embed(monkeypatch, concurrent: bool, threads: int, batch: int = 8):
    opened: list[int] = []
    session = _Session(side_by_side=concurrent and threads > 1)

    def open_session(servable, n):
        opened.append(n)
        return session

    monkeypatch.setattr(se, "open_session", open_session)
    monkeypatch.setattr(se, "get_runtime", lambda name: SimpleNamespace(concurrent_runs=concurrent))
    out = se.embed_texts(Servable(Path("m.onnx")), _tokenizer, TEXTS, batch=batch, threads=threads)
    return out, session, opened


@pytest.mark.parametrize("concurrent", [True, False])
def test_the_outputs_do_not_depend_on_the_thread_count(monkeypatch, concurrent):
    one, single, _ = _embed(monkeypatch, concurrent, threads=1)
    two, double, _ = _embed(monkeypatch, concurrent, threads=2)
    assert np.array_equal(one, two)
    assert sorted(single.batches) == sorted(double.batches)
    assert len(single.batches) == -(-len(TEXTS) // 8)  # batches of 8, the last one shorter


def test_each_text_lands_in_its_own_row_and_the_batches_are_runs_of_similar_lengths(monkeypatch):
    out, session, _ = _embed(monkeypatch, True, threads=2)
    sums = [sum(map(ord, t)) for t in TEXTS]
    assert out[:, 0].tolist() == [float(x) for x in sums]
    by_length = np.argsort([len(t) for t in TEXTS], kind="stable")
    expected = {tuple(sums[i] for i in by_length[k : k + 8]) for k in range(0, len(TEXTS), 8)}
    assert set(session.batches) == expected


def test_onnx_runtime_runs_two_calls_at_once_on_one_single_threaded_session(monkeypatch):
    _, session, opened = _embed(monkeypatch, True, threads=2)
    assert opened == [1]
    assert session.most == 2  # the barrier above let neither of the first two calls go on alone


def test_an_engine_that_runs_one_call_at_a_time_gets_one_session_of_all_threads(monkeypatch):
    _, session, opened = _embed(monkeypatch, False, threads=2)
    assert opened == [2]
    assert session.most == 1


def test_no_text_is_an_error(monkeypatch):
    monkeypatch.setattr(se, "get_runtime", lambda name: SimpleNamespace(concurrent_runs=True))
    with pytest.raises(ValueError, match="no texts"):
        se.embed_texts(Servable(Path("m.onnx")), _tokenizer, [], threads=2)
