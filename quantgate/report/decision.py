"""The decision read off the search: promoted exactly when a candidate passed every gate; otherwise why
not, most fundamental first; and how it compares with the serving version."""

from __future__ import annotations

import math

from quantgate.bench import CHAMPION_ENGINE
from quantgate.evaluate import ParityReport
from quantgate.gates import HELDOUT_TOO_SMALL, GateResult
from quantgate.report.environment import environment, run_packages
from quantgate.report.model import ChampionSummary, ExportSummary, HeldoutSummary, RunReport
from quantgate.search import NOTHING_TO_QUANTIZE, CandidateResult, SearchResult
from quantgate.stats import rows_needed


def build_run_report(
    *,
    ref_name: str,
    ref_version: str,
    run_id: str,
    task: str,
    export: ExportSummary,
    heldout: HeldoutSummary,
    thresholds: dict[str, float | None],
    search: SearchResult,
) -> RunReport:
    """The decision is read off the search: promoted exactly when a candidate passed every gate. The
    report leads with that candidate, or with the closest one when none passed; when the FP32 reference
    failed an evidence gate, no candidate was built and the report leads with those gates."""
    if search.stopped_early and search.evidence is not None:
        evidence = search.evidence
        reason, needed = reason_for(evidence.gates.failed, evidence.rows)
        return RunReport(
            reason=reason,
            rows_needed=needed,
            model=ref_name,
            version=ref_version,
            run_id=run_id,
            task=task,
            outcome="rejected",
            export=export,
            heldout=heldout,
            metrics=evidence.metrics,
            thresholds=thresholds,
            gates=evidence.gates,
            environment=environment(run_packages(task)),
            search=search,
        )
    lead = search.get(search.lead)
    bench = search.timed(lead) if lead else None
    if lead is None or lead.gates is None or bench is None:
        raise ValueError("the search judged no candidate: nothing to report on")
    if lead.evaluation is not None:
        parity = lead.evaluation.parity
    elif "quantizable_ops" in lead.metrics:  # nothing to quantize: nothing was compared
        parity = ParityReport(
            output="",
            n_samples=0,
            max_abs_diff=0.0,
            mean_abs_diff=0.0,
            abs_tol=0.0,
            mean_tol=0.0,
            passed=False,
        )
    else:
        raise ValueError(f"candidate {lead.name} was judged without an evaluation")
    promoted = search.chosen is not None and lead.passed
    reason, needed = (None, None) if promoted else rejection_reason(lead)
    return RunReport(
        reason=reason,
        rows_needed=needed,
        champion=champion_summary(lead, search),
        model=ref_name,
        version=ref_version,
        run_id=run_id,
        task=task,
        outcome="promoted" if promoted else "rejected",
        recipe=lead.recipe,
        quantized_ops=lead.op_counts,
        export=export,
        heldout=heldout,
        metrics=lead.metrics,
        thresholds=thresholds,
        gates=lead.gates,
        parity=parity,
        benchmark=bench,
        environment=environment(run_packages(task, lead.recipe.backend)),
        search=search,
    )


def champion_summary(lead: CandidateResult, search: SearchResult) -> ChampionSummary | None:
    """'better / same / worse than vN' with the numbers: the candidate against the serving version on
    the same rows (paired interval of champion minus candidate) and in the same benchmark round."""
    ev = lead.evaluation
    if ev is None or ev.champion_version is None or ev.task_metric_champion is None:
        return None
    interval = ev.champion_drop_interval
    if interval is not None and not all(map(math.isfinite, interval)):
        interval = None
    lo, hi = interval or (0.0, 0.0)
    verdict = "worse than" if lo > 0 else "better than" if hi < 0 else "same as"
    bench = search.timed(lead)
    champ = (
        next((r for r in bench.results if r.engine == CHAMPION_ENGINE + ev.champion_version), None)
        if bench
        else None
    )
    return ChampionSummary(
        version=ev.champion_version,
        verdict=f"{verdict} {ev.champion_version}",
        task_metric=round(ev.task_metric_champion, 4),
        candidate_task_metric=round(ev.task_metric_candidate, 4),
        drop=round(ev.degradation(ev.task_metric_champion, ev.task_metric_candidate), 4),
        interval=None if interval is None else (round(lo, 4), round(hi, 4)),
        p50_ms=champ.p50_ms if champ else None,
        candidate_p50_ms=lead.latency.p50_ms if lead.latency else None,
    )


def rejection_reason(lead: CandidateResult) -> tuple[str, int | None]:
    """Why the closest candidate was not promoted, most fundamental first: the held-out set cannot tell
    (with the rows that would), there is nothing to quantize, the FP32 model measures nothing, or a quality
    or speed gate failed. Each gate declares what its failure means (`rejects_as`, quantgate/gates.py)."""
    return reason_for(lead.gates.failed if lead.gates else [], lead.evaluation.rows if lead.evaluation else 0)


def reason_for(failed: list[GateResult], rows: int) -> tuple[str, int | None]:
    """`rejection_reason` of these failed gates, judged on `rows` evaluation rows: a candidate's, or the
    FP32 reference's evidence gates when they stopped the run before any candidate was built."""
    too_small = [r for r in failed if r.gate.rejects_as == HELDOUT_TOO_SMALL]
    if too_small:
        measured = next((r for r in too_small if r.value is not None), None)
        if measured is None:
            return HELDOUT_TOO_SMALL, None
        return HELDOUT_TOO_SMALL, rows_needed(rows, measured.value, measured.gate.limit / 2)
    if any(r.gate.rejects_as == NOTHING_TO_QUANTIZE for r in failed):
        return NOTHING_TO_QUANTIZE, None
    # Any other evidence gate (the FP32 baseline of any task type: Spearman's floor, a classifier's lift
    # over the majority class, the registered expectation) says the FP32 model measures nothing here.
    if any(r.gate.kind == "evidence" for r in failed):
        return "baseline-not-meaningful", None
    return "gates-failed", None
