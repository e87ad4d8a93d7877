"""Racing: the rules that let the search skip work whose outcome is already certain (issue #25).

Every candidate is first built and scored on a stratified probe of the evaluation rows. A candidate whose
probe already fails a tail gate (the share of rows beyond a per-row limit) with the share's whole 95 %
interval above the limit is dropped (`certain_failures`): the full split would not bring the interval back
at the gates' confidence. The
others are timed in one interleaved round as before; one that fails a speed gate there is decided. The rest
are scored on the full split, fastest first, and once one passes every gate, any candidate slower than it
beyond the tie band is not scored further (`cannot_win`): `choose` could never pick it.

A candidate is promoted only on the full split. A search in which no candidate passes gives way to the
exhaustive one (every candidate on every row), so the fallback and the closest candidate are chosen on
the same evidence as without racing. These functions are pure; quantgate/search_driver.py runs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from quantgate.gates import GateReport, GateResult
from quantgate.search import SPEED_TIE, CandidateResult, speed_of

# Below this many probe rows an interval says too little to drop anything: the search is not raced.
MIN_PROBE_ROWS = 100
_SCORE_BINS = 5  # a score column (STS gold scores) is stratified by its quintiles
_MAX_LABELS = 50  # a label column with more distinct values than this is not a stratum


def strata(schema_columns: dict[str, str], slice_columns: Sequence[str], rows: pd.DataFrame) -> list[str]:
    """The columns the probe is stratified by: the declared slice columns, scalar label columns with few
    values, and score columns (by quintile)."""
    keys = [c for c in slice_columns if c in rows.columns]
    for name, kind in schema_columns.items():
        if name not in rows.columns or name in keys:
            continue
        column = rows[name]
        if (kind == "score" and pd.api.types.is_numeric_dtype(column)) or (
            kind == "label" and column.map(_hashable).all() and column.nunique() <= _MAX_LABELS
        ):
            keys.append(name)
    return keys


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def probe_rows(
    rows: pd.DataFrame, share: float, keys: Sequence[str], kinds: dict[str, str], seed: int = 0
) -> np.ndarray | None:
    """Positions (sorted) of a seeded, stratified sample of `share` of the rows; None when it would have
    fewer than MIN_PROBE_ROWS rows. A systematic sample over the rows ordered by stratum (in a random order
    within each): every row is drawn with the same probability `share`, and every stratum gets its share
    of the probe to within one row. No stratum is forced in: a minimum of one row each would draw every
    one-row stratum with certainty (27 rare labels in 900 rows would be 27 of a 112-row probe, not 3), and
    the probe's share of rows beyond a limit would then not estimate the split's, which the tail gates'
    Wilson interval assumes."""
    if round(len(rows) * share) < MIN_PROBE_ROWS:
        return None
    codes = np.zeros(len(rows), dtype=int)
    if keys:
        parts = []
        for key in keys:
            column = rows[key].reset_index(drop=True)
            if kinds.get(key) == "score":
                column = pd.qcut(column.rank(method="first"), _SCORE_BINS, labels=False)
            parts.append(column.astype(str))
        codes = pd.Categorical(parts[0].str.cat(parts[1:], sep="\x1f") if len(parts) > 1 else parts[0]).codes
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(rows)), codes))  # by stratum, then at random
    step = 1.0 / share
    picked = order[np.floor(np.arange(rng.random() * step, len(rows), step)).astype(int)]
    return np.sort(picked)


def certain_failures(gates: GateReport, metrics: dict[str, float]) -> list[GateResult]:
    """The tail gates the probe fails with the share's whole 95 % (Wilson) interval above the limit.

    Only tail gates race: the share of rows beyond a per-row limit is a proportion whose Wilson interval
    covers on a probe of 100+ rows. A corpus-level metric's bootstrap interval does not: on WNUT-17 a
    118-row probe put the entity-F1 drop of `dynamic-int8-per-channel-reduce-range` at [0.014, 0.127],
    above the 0.01 limit, where the full split measured 0.0033. A point value without an interval (mean
    cosine) never races either: the probe cannot say where the full split's value would fall."""
    certain = []
    for result in gates.results:
        gate = result.gate
        if gate.kind != "accuracy" or gate.per_row is None or result.passed:
            continue
        lo, hi = metrics.get(f"{gate.metric}_lo"), metrics.get(f"{gate.metric}_hi")
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        if (gate.op == ">=" and hi < gate.limit) or (gate.op == "<=" and lo > gate.limit):
            certain.append(result)
    return certain


def speed_failures(gates: GateReport) -> list[GateResult]:
    """The speed gates a candidate failed in the candidates round: timing decides them, not more rows."""
    return [r for r in gates.results if r.gate.kind == "speed" and not r.passed]


def decided_by(candidate: CandidateResult, failed: list[GateResult]) -> CandidateResult:
    """The candidate with only the gates that decided it: the others were judged on the probe alone."""
    return candidate.model_copy(update={"gates": GateReport(results=failed)})


def cannot_win(pending: list[CandidateResult], judged: list[CandidateResult]) -> list[CandidateResult]:
    """The pending candidates slower, beyond the tie band, than the fastest candidate that passed every
    gate on the full split: `choose` ties only within SPEED_TIE of the fastest passing one, and a faster
    pending candidate that passed would only lower that bound."""
    passing = [speed_of(c) for c in judged if c.passed]
    if not passing:
        return []
    limit = min(passing) * (1 + SPEED_TIE)
    return [c for c in pending if speed_of(c) > limit]
