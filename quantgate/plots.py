"""PNG plots for the report: what a person looks at first in storage or the UI."""

from __future__ import annotations

from pathlib import Path

from quantgate.bench import BenchReport


def latency_plot(bench: BenchReport, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    engines = [r.engine for r in bench.results]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    width = 0.27
    for i, (label, values) in enumerate(
        [
            ("p50", [r.p50_ms for r in bench.results]),
            ("p95", [r.p95_ms for r in bench.results]),
            ("p99", [r.p99_ms for r in bench.results]),
        ]
    ):
        bars = ax.bar([x + (i - 1) * width for x in range(len(engines))], values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    s = bench.settings
    ax.set_xticks(range(len(engines)), engines)
    ax.set_ylabel("latency (ms)")
    ax.set_title(
        f"{title}: batch {s.batch}, seq {s.seq_len}, {s.threads} thread(s), {s.repeat_runs} runs", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
