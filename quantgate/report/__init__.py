"""The run report: one JSON document per run (what was measured, each gate, the decision), plus the
markdown and tables people read in the CLI and the Prefect UI. One module per job; this file only hands
their names on (callers keep writing `from quantgate.report import RunReport`).

    model.py         RunReport and its summaries: the schema of report.json
    environment.py   where the run was measured: Python, CPU, the versions of the packages it depends on
    decision.py      build_run_report: promoted or not, why not, and beside which champion
    tables.py        the report as table rows (gates, candidates, slices, benchmark)
    markdown.py      the report as markdown (to_markdown)
    failure.py       a failed run's report: what raised, its failed checks, its Data Docs
    links.py         the decision's plots and where they are stored
    manifest.py      what a promotion writes: manifest_for, promotion_files
"""

from quantgate.report.decision import build_run_report, champion_summary, reason_for, rejection_reason
from quantgate.report.environment import environment, run_packages
from quantgate.report.failure import (
    crash_report,
    failure_keys,
    failure_markdown,
    failure_reason,
    failure_report,
)
from quantgate.report.links import browser_links, decision_keys, decision_links, decision_plots, stored_key
from quantgate.report.manifest import manifest_for, promotion_files, write_json
from quantgate.report.markdown import (
    as_text,
    champion_line,
    fp32_interval,
    no_candidate_line,
    plain_rows,
    shape_comparison_line,
    sweep_markdown,
    text_rows,
    to_markdown,
)
from quantgate.report.model import ChampionSummary, ExportSummary, HeldoutSummary, RunReport
from quantgate.report.tables import (
    bench_rows,
    candidate_rows,
    compact_candidate_rows,
    example_rows,
    gate_rows,
    kind_rows,
    length_rows,
    slice_rows,
)

__all__ = [
    "ChampionSummary",
    "ExportSummary",
    "HeldoutSummary",
    "RunReport",
    "as_text",
    "bench_rows",
    "browser_links",
    "build_run_report",
    "candidate_rows",
    "champion_line",
    "champion_summary",
    "compact_candidate_rows",
    "crash_report",
    "decision_keys",
    "decision_links",
    "decision_plots",
    "environment",
    "example_rows",
    "failure_keys",
    "failure_markdown",
    "failure_reason",
    "failure_report",
    "fp32_interval",
    "gate_rows",
    "kind_rows",
    "length_rows",
    "manifest_for",
    "no_candidate_line",
    "plain_rows",
    "promotion_files",
    "reason_for",
    "rejection_reason",
    "run_packages",
    "shape_comparison_line",
    "slice_rows",
    "stored_key",
    "sweep_markdown",
    "text_rows",
    "to_markdown",
    "write_json",
]
