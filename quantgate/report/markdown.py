"""The report as markdown, what a person reads in the Prefect UI: the verdict first, then the gates, the
candidates, the benchmark."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from quantgate.report.model import RunReport
from quantgate.report.tables import (
    bench_rows,
    compact_candidate_rows,
    example_rows,
    gate_rows,
    kind_rows,
    length_rows,
    slice_rows,
)
from quantgate.search import SearchResult


def shape_comparison_line(search: SearchResult) -> str:
    cmp = search.fixed_shape
    if cmp is None or cmp.winner is None:
        return ""
    if cmp.winner == search.chosen:
        return f"At the fixed shape {cmp.shape} the same candidate would win (`{cmp.winner}`)."
    return (
        f"At the fixed shape {cmp.shape} the winner would differ: `{cmp.winner}` ({cmp.winner_ms:.2f} ms) "
        f"against `{search.chosen}` ({cmp.chosen_ms or float('nan'):.2f} ms there). The decision is taken on "
        "the serving profile."
    )


# Markdown's own punctuation in a held-out text: escaped, so `![x](https://…)` or `[click](javascript:…)`
# in a registrant's data reads as typed instead of fetching an image or planting a link in the report.
_MD_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#!~|])")


def plain(value: Any) -> Any:
    """A held-out text (or anything a registrant wrote) as inert cell text: no HTML, no markdown link or
    image, no column break, no line break. Only &, < and > become entities: the Prefect UI renders text as
    text and decodes those (and &quot;, &#39;) but shows any other entity as typed (Python's `&#x27;` for
    an apostrophe read "you&#x27;re"); markdown punctuation is backslash-escaped."""
    if not isinstance(value, str):
        return value
    return _MD_PUNCTUATION.sub(r"\\\1", html.escape(" ".join(value.split()), quote=False))


_plain = plain


def plain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of held-out-derived cells (examples, slices), each made inert (see plain)."""
    return [{k: plain(v) for k, v in row.items()} for row in rows]


# A cell that starts with ">" renders as a blockquote where Prefect renders it as markdown (its table
# artifacts do): "▎ = 0.98", the direction lost. Limits are shown with the mathematical signs instead.
_SIGNS = {">=": "≥", "<=": "≤"}


def as_text(value: Any) -> Any:
    """A cell value that reads the same as text and as markdown: a leading >= or <= becomes ≥ or ≤, any
    other leading > or < is escaped."""
    if not isinstance(value, str):
        return value
    for op, sign in _SIGNS.items():
        if value.startswith(op):
            return sign + value[len(op) :]
    return "\\" + value if value[:1] in "<>" and value else value


def text_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows whose cells read as text (see as_text), for table artifacts and markdown tables."""
    return [{k: as_text(v) for k, v in row.items()} for row in rows]


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join("" if r[h] is None else str(r[h]) for h in head) + " |" for r in text_rows(rows)
    ]
    return "\n".join(lines)


def _fallback_md(search: SearchResult) -> str:
    fb = search.fallback
    if fb is None:
        return ""
    kept = (
        _md_table(fb.kept_fp32)
        if fb.kept_fp32
        else "no trial passed" + (f" ({fb.stopped})" if fb.stopped else "")
    )
    tried = (
        ", ".join(f"`{t.recipe}` ({'pass' if t.accuracy_passed else 'fail'})" for t in fb.trials) or "none"
    )
    return (
        f"## Sensitive-node fallback\n\nNothing passed; `{fb.base}` failed on accuracy only ({fb.reason}). "
        f"Nodes ranked by per-layer SQNR on the calibration split; trials: {tried}.\n\n"
        f"Nodes kept in FP32 and what each cost (share of the measured p50 increase):\n\n{kept}"
    )


def _links_md(links: dict[str, str], expires_s: int | None) -> list[str]:
    """The plots shown inline (the Prefect UI renders markdown images), then every link. Presigned links
    say until when they open."""
    web = {k: v for k, v in links.items() if v.startswith(("http://", "https://"))}
    plots = [f"![{k}]({v})" for k, v in web.items() if k.endswith("-plot")]
    out = ["## Plots\n\n" + "\n\n".join(plots)] if plots else []
    title = "## Links"
    if web and expires_s:
        until = datetime.now(UTC) + timedelta(seconds=expires_s)
        title += f" (presigned: they open without credentials until {until:%Y-%m-%d %H:%M} UTC)"
    out.append(title + "\n\n" + "\n".join(f"- [{k}]({v})" for k, v in links.items()))
    return out


def _head(report: RunReport) -> list[str]:
    """The verdict, who it is about (the chosen or closest candidate, or the FP32 reference when no
    candidate was built), the champion, the task metric and the gates."""
    verdict = "PROMOTED" if report.outcome == "promoted" else "REJECTED (not promoted)"
    failed = ", ".join(r.gate.name for r in report.gates.failed) or "none"
    where = f"task `{report.task}` · run `{report.run_id}` · failed gates: {failed}"
    fp32 = report.metrics["task_metric_fp32"]
    if report.recipe is None:
        return [
            f"# {report.model}@{report.version}: {verdict}",
            f"{no_candidate_line(report)} · {where}",
            champion_line(report),
            f"Task metric: FP32 {fp32:.4f}{fp32_interval(report)}",
            "## Gates (the FP32 reference's evidence, judged before any candidate)\n\n"
            + _md_table(gate_rows(report.gates)),
        ]
    lead = "Recipe chosen" if report.outcome == "promoted" else "Closest candidate"
    return [
        f"# {report.model}@{report.version}: {verdict}",
        f"{lead}: `{report.recipe.name}` · {where}",
        champion_line(report),
        f"Task metric: FP32 {fp32:.4f} → candidate {report.metrics['task_metric_candidate']:.4f}",
        f"## Gates ({report.recipe.name})\n\n" + _md_table(gate_rows(report.gates)),
    ]


def _search_md(report: RunReport, search: SearchResult) -> list[str]:
    """Every candidate (or why none was built), the fastest of each kind, warnings, the fallback."""
    b, h = search.budget, report.heldout
    calib, evaluation = h.calibration_rows, h.evaluation_rows or h.rows
    if not search.candidates:
        return [
            f"## Candidates (none built: the run stopped after the FP32 reference, {search.seconds:.0f} s)"
            f"\n\n{no_candidate_line(report)}."
        ]
    parts = [
        f"## Candidates ({len(search.candidates)} in {search.seconds:.0f} s; budget {b.max_candidates} "
        f"candidates, {b.max_trials} trials, {b.max_seconds:g} s; {calib} calibration rows kept apart "
        f"from {evaluation} evaluation rows)\n\n" + _md_table(compact_candidate_rows(search, report.task))
    ]
    kinds = kind_rows(search)
    if len(kinds) > 1:
        title = "## By kind of recipe (the fastest of each, one benchmark round)"
        parts.append(f"{title}\n\n{_md_table(kinds)}")
    if search.warnings:
        parts.append("Warnings: " + "; ".join(search.warnings))
    if search.fallback is not None:
        parts.append(_fallback_md(search))
    return parts


def to_markdown(
    report: RunReport, links: dict[str, str] | None = None, links_expire_s: int | None = None
) -> str:
    search = report.search
    parts = _head(report)
    if report.reason:
        needed = f" (about {report.rows_needed} held-out rows would be needed)" if report.rows_needed else ""
        parts.insert(2, f"Reason: **{report.reason}**{needed}")
    if report.approval:
        a = report.approval
        said = f": {plain(a.comment)}" if a.comment else ""
        verb = "approved" if a.decision == "approve" else "rejected"
        parts.insert(2, f"Review: **{verb} by {plain(a.by)}** at {a.at}{said}")
    slices = slice_rows(report)
    if slices:
        parts.append(
            "## Slices (the max-slice-drop gate counts slices of at least 50 rows)\n\n"
            + _md_table(plain_rows(slices))
        )
    examples = example_rows(report)
    if examples:
        parts.append(
            f"## What moved most ({report.recipe.name}: flipped predictions first, then the largest changes)"
            "\n\n" + _md_table(plain_rows(examples))
        )
    if search is not None:
        parts += _search_md(report, search)
    if report.benchmark is not None:
        parts.append(
            f"## Benchmark ({report.benchmark.describe()}; CPU flags "
            f"{', '.join(report.benchmark.cpu.get('flags', []))})\n\n"
            + _md_table(bench_rows(report.benchmark))
        )
    if search is not None:
        timed = search.benchmarks.get("candidates")
        by_length = length_rows(timed) if timed else []
        if by_length:
            parts.append(
                "## Latency by input length (p50 ms per request, every candidate, one round)\n\n"
                + _md_table(by_length)
            )
        line = shape_comparison_line(search)
        if line:
            parts.append(line)
    if links:
        parts += _links_md(links, links_expire_s)
    parts.append(
        f"Promoted to: `{report.promoted_to}` (read `manifest.json` there; plots under the run's prefix)"
        if report.promoted_to
        else f"Nothing was promoted. Report under `rejected/{report.model}/{report.version}/`"
        + (
            f", plots under `rejected/{report.model}/{report.version}/{report.run_id}/`."
            if report.benchmark is not None
            else "."
        )
    )
    return "\n\n".join(parts)


def no_candidate_line(report: RunReport) -> str:
    """Why a report has no candidate: the FP32 reference failed an evidence gate, which every candidate
    is judged by on the same FP32 values, so the run was decided before any was built."""
    failed = [r.gate.name for r in report.gates.failed]
    gates, them = ("gates", "them") if len(failed) > 1 else ("gate", "it")
    return (
        f"No candidate was built: the FP32 reference failed the evidence {gates} {', '.join(failed)}; every "
        f"candidate is judged by {them} on the same FP32 values, so the run was decided before building any"
    )


def fp32_interval(report: RunReport) -> str:
    lo, hi = report.metrics.get("task_metric_fp32_lo"), report.metrics.get("task_metric_fp32_hi")
    rows = report.heldout.evaluation_rows
    on = f" on {rows} evaluation rows" if rows else ""
    return f" [{lo:.4f}, {hi:.4f}]{on}" if lo is not None and hi is not None else on


def champion_line(report: RunReport) -> str:
    c = report.champion
    if report.recipe is None:
        return "Champion: not compared (no candidate was built)"
    if c is None:
        return "Champion: none (no promoted version serves yet, or it could not be scored: see the warnings)"
    speed = f"; p50 {c.candidate_p50_ms:.2f} vs {c.p50_ms:.2f} ms" if c.p50_ms and c.candidate_p50_ms else ""
    interval = f" [{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]" if c.interval else ""
    return (
        f"Champion: {c.verdict} (task metric {c.candidate_task_metric:.4f} vs {c.task_metric:.4f}, "
        f"champion minus candidate {c.drop:+.4f}{interval}{speed})"
    )


def sweep_markdown(rows: list[dict[str, Any]], summary: str) -> str:
    """The registry sweep's summary artifact: one line, then a row per version it saw. Outcomes quote error
    messages, which can quote held-out values: made inert (see plain)."""
    table = _md_table([{**r, "outcome": plain(r["outcome"])} for r in rows])
    table = table or "Nothing to run: every registered version is decided."
    return f"# Registry sweep\n\n{summary}\n\n{table}"
