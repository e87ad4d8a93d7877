"""Metrics: pure functions over arrays, plus running an artifact over held-out texts.

`parity_report` compares named output tensors, whatever the task. The embedding metrics (cosine,
neighbour agreement) are the sentence-embedding task type's: its task metric (STS Spearman) can hold while
embeddings drift, which breaks a vector index built with the FP32 model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from quantgate.backends import Servable, open_session


class OutputDiff(BaseModel):
    max_abs_diff: float
    mean_abs_diff: float


class ParityReport(BaseModel):
    """The seeds' parity_report.json (max_abs_diff, mean_abs_diff, passed) over every named output
    tensor compared, with each output's own numbers. Written as parity_report.json beside every report."""

    output: str = Field(description="the output tensors compared, comma-separated")
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    abs_tol: float
    mean_tol: float
    passed: bool
    outputs: dict[str, OutputDiff] = Field(default_factory=dict)


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
    ref: np.ndarray | dict[str, np.ndarray],
    cand: np.ndarray | dict[str, np.ndarray],
    abs_tol: float,
    mean_tol: float,
    output: str = "sentence_embedding",
) -> ParityReport:
    """Element-wise |candidate - reference| over each named output (one array = one output named
    `output`); the tolerances apply to the worst output."""
    refs = ref if isinstance(ref, dict) else {output: ref}
    cands = cand if isinstance(cand, dict) else {output: cand}
    if set(refs) != set(cands):
        raise ValueError(f"outputs differ: {sorted(refs)} vs {sorted(cands)}")
    diffs: dict[str, OutputDiff] = {}
    finite = True
    for name, r in refs.items():
        c = cands[name]
        if r.shape != c.shape:
            raise ValueError(f"output shapes differ: {r.shape} vs {c.shape}")
        diff = np.abs(r.astype(np.float64) - c.astype(np.float64))
        finite = finite and bool(np.isfinite(diff).all())
        diffs[name] = OutputDiff(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    max_abs = max(d.max_abs_diff for d in diffs.values())
    mean_abs = max(d.mean_abs_diff for d in diffs.values())
    return ParityReport(
        output=",".join(refs),
        n_samples=len(next(iter(refs.values()))),
        max_abs_diff=max_abs,
        mean_abs_diff=mean_abs,
        abs_tol=abs_tol,
        mean_tol=mean_tol,
        passed=finite and max_abs <= abs_tol and mean_abs <= mean_tol,
        outputs=diffs,
    )


def embedding_agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """How far candidate embeddings moved: mean and worst cosine to FP32, nearest-neighbour agreement."""
    cos = cosine_rows(ref, cand)
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "neighbour_agreement": neighbour_agreement(ref, cand),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def embed_texts(
    model: Servable | Path,
    tokenizer: Any,
    texts: list[str],
    *,
    batch: int = 64,
    max_length: int = 256,
    threads: int = 2,
) -> np.ndarray:
    """sentence_embedding for every text; length-sorted batches keep padding (and time) low."""
    from quantgate.export import tokenize

    sess = open_session(model if isinstance(model, Servable) else Servable(model), threads)
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
