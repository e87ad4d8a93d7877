"""Metrics: pure functions over arrays, plus running an ONNX file over held-out texts.

Two kinds of damage are measured, because quantization can cause either without the other: the task
metric (STS Spearman) can hold while embeddings drift (cosine, neighbour agreement), which breaks a
vector index built with the FP32 model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from quantgate.runtime import inference_session


class ParityReport(BaseModel):
    """The seeds' parity_report.json, extended. Written as parity_report.json beside every report."""

    output: str
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    abs_tol: float
    mean_tol: float
    passed: bool
    mean_cosine: float
    min_cosine: float
    neighbour_agreement: float


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def neighbour_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Share of rows whose nearest other row (by cosine) is the same under both embeddings."""
    if len(ref) < 2:
        return float("nan")

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return float((nearest(ref) == nearest(cand)).mean())


def parity_report(
    ref: np.ndarray, cand: np.ndarray, abs_tol: float, mean_tol: float, output: str = "sentence_embedding"
) -> ParityReport:
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    cos = cosine_rows(ref, cand)
    max_abs, mean_abs = float(diff.max()), float(diff.mean())
    return ParityReport(
        output=output,
        n_samples=len(ref),
        max_abs_diff=max_abs,
        mean_abs_diff=mean_abs,
        abs_tol=abs_tol,
        mean_tol=mean_tol,
        passed=bool(np.isfinite(diff).all() and max_abs <= abs_tol and mean_abs <= mean_tol),
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
        neighbour_agreement=neighbour_agreement(ref, cand),
    )


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def embed_texts(
    onnx_path: Path,
    tokenizer: Any,
    texts: list[str],
    *,
    batch: int = 64,
    max_length: int = 256,
    threads: int = 2,
) -> np.ndarray:
    """sentence_embedding for every text; length-sorted batches keep padding (and time) low."""
    from quantgate.export import tokenize

    sess = inference_session(onnx_path, threads)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch):
        idx = order[start : start + batch]
        feeds = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        (emb,) = sess.run(["sentence_embedding"], feeds)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    if out is None:
        raise ValueError("no texts to embed")
    return out
