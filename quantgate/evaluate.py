"""What every task type compares: `parity_report` over named output tensors, whatever the task. A task
type's own metrics live in its module (the embedding metrics in families/sentence_embedding.py)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


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
