"""PNG plots for the report: what a person looks at first in storage or the UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from quantgate.bench import BenchReport


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt


def _text_width_in(fig: Any, text: str, fontsize: float) -> float:
    """The width of one line of text in inches, measured by the figure's renderer (one glyph layout, not a
    draw of the figure)."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    width, _, _ = renderer.get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return float(width) / fig.dpi


def _margins(fig: Any, left: float, right: float, top: float, bottom: float, wspace: float = 0.0) -> None:
    """Fixed margins, in inches. The plots' layout is known from their labels, so it is set rather than
    searched: `tight_layout` lays every tick and text out once to find it and `savefig` again to draw, and
    that search was a third of a tiny model's flow run (0.5 s of three plots per run, every run)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        wspace=wspace,
    )


def latency_plot(bench: BenchReport, title: str, path: Path) -> Path:
    """p50/p95/p99 per engine, horizontal so long recipe names stay readable."""
    plt = _pyplot()
    engines = [r.engine for r in bench.results]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(engines)), dpi=110)
    height = 0.27
    for i, (label, values) in enumerate(
        [
            ("p50", [r.p50_ms for r in bench.results]),
            ("p95", [r.p95_ms for r in bench.results]),
            ("p99", [r.p99_ms for r in bench.results]),
        ]
    ):
        bars = ax.barh([y + (i - 1) * height for y in range(len(engines))], values, height, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks(range(len(engines)), engines, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per request (ms)")
    heading = f"{title}: {bench.describe()}"
    ax.set_title(heading, fontsize=8, wrap=True)
    ax.legend(fontsize=8, loc="lower right")
    label_width = max((_text_width_in(fig, engine, 8) for engine in engines), default=0.0)
    title_lines = 1 + int(_text_width_in(fig, heading, 8) // 7.6)  # how many lines the title wraps to
    # At most 45 % of the width: a longer name (recipes may have 80 characters) is cut at the figure's
    # edge, never a layout with no room left for the bars.
    _margins(fig, left=min(label_width + 0.2, 3.6), right=0.2, top=0.15 + 0.15 * title_lines, bottom=0.55)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class ParetoPoint(BaseModel):
    name: str
    p50_ms: float
    task_metric_drop: float
    values: dict[str, float] = Field(default_factory=dict, description="each panel's metric")
    passed: bool
    chosen: bool = False


def pareto_front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both latency and task-metric drop (lower is better for both)."""
    front = [
        p
        for p in points
        if not any(
            q.p50_ms <= p.p50_ms
            and q.task_metric_drop <= p.task_metric_drop
            and (q.p50_ms < p.p50_ms or q.task_metric_drop < p.task_metric_drop)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: p.p50_ms)


def pareto_plot(
    points: list[ParetoPoint],
    baselines: dict[str, float],
    panels: list[tuple[str, str, float | None]],
    title: str,
    path: Path,
) -> Path:
    """Latency against each accuracy metric (one panel per `(metric, label, limit)`, the task type's
    plot axes), one marker per candidate: green passed every gate, red did not, the star is the promoted
    one; dashed lines are the gate limits, dotted ones the FP32 baselines."""
    plt = _pyplot()
    fig = pareto_figure(points, baselines, panels, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_figure(
    points: list[ParetoPoint],
    baselines: dict[str, float],
    panels: list[tuple[str, str, float | None]],
    title: str,
) -> Any:
    """The figure behind pareto_plot. Candidates are numbered on the plot and named in a key beside it:
    eleven names such as `dynamic-int8-per-channel-reduce-range` next to their markers overlapped into
    one unreadable cluster; numbers are placed where they collide with no other label."""
    plt = _pyplot()
    numbered = {p.name: i for i, p in enumerate(points, start=1)}
    fig, axes = plt.subplots(
        1,
        len(panels) + 1,
        figsize=(5.5 * len(panels) + 3.2, 4.4),
        dpi=110,
        squeeze=False,
        gridspec_kw={"width_ratios": [5.5] * len(panels) + [3.2]},
    )
    front = pareto_front(points)
    to_label: list[tuple[Any, list[tuple[float, float, str]]]] = []
    for ax, (field, label, limit) in zip(axes[0][:-1], panels, strict=True):
        shown = [p for p in points if field in p.values]
        for p in shown:
            ax.scatter(
                p.p50_ms,
                p.values[field],
                marker="*" if p.chosen else "o",
                s=180 if p.chosen else 40,
                color="tab:green" if p.passed else "tab:red",
                edgecolors="black" if p.chosen else "none",
                zorder=3,
            )
        if field == "task_metric_drop" and len(front) > 1:
            ax.plot(
                [p.p50_ms for p in front], [p.task_metric_drop for p in front], color="grey", lw=1, zorder=2
            )
        if limit is not None:
            ax.axhline(limit, color="black", ls="--", lw=0.8)
        for name, ms in baselines.items():
            ax.axvline(ms, color="tab:blue", ls=":", lw=0.8)
            ax.annotate(
                name,
                (ms, 1),
                xycoords=("data", "axes fraction"),
                fontsize=6,
                rotation=90,
                va="top",
                ha="right",
                color="tab:blue",
            )
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel(label)
        ax.margins(0.12)
        to_label.append((ax, [(p.p50_ms, p.values[field], str(numbered[p.name])) for p in shown]))
    key = axes[0][-1]
    key.axis("off")
    lines = [
        f"{i:>2}  {p.name}" + ("  (promoted)" if p.chosen else "" if p.passed else "  (failed)")
        for p, i in ((p, numbered[p.name]) for p in points)
    ]
    key.text(
        0, 1, "\n".join(lines), va="top", ha="left", fontsize=6.5, family="monospace", transform=key.transAxes
    )
    fig.suptitle(f"{title}: candidates (green passed every gate, star promoted)", fontsize=9)
    # Fixed before the labels: placing them needs the final data-to-pixel transform. Every panel has a
    # y label and tick labels of at most a few digits on its left; wspace is a fraction of a panel's width.
    _margins(fig, left=0.9, right=0.1, top=0.45, bottom=0.6, wspace=0.95 / 5.0)
    # The data limits, autoscaled without drawing (labels do not move them; `draw_without_rendering` laid
    # every tick and text out once more: ~0.29 -> ~0.25 CPU-s for 11 candidates). The PNG is drawn once.
    for ax, labels in to_label:
        ax.get_xlim()
        ax.get_ylim()
        _place_labels(fig, ax, labels)
    return fig


# Where a point's number may go, in points from the marker: beside it first, then further out.
_OFFSETS = [
    (dx * r, dy * r)
    for r in (1, 2, 3, 4)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, 1), (-1, 0), (0, -1))
]


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]]) -> None:
    """Annotate each (x, y, text) at the first offset whose box overlaps no label placed before (the
    last offset tried when none is free); a line joins a label set further out to its marker. Points
    that fall on one spot (within a few pixels) share one label, "1,4,7"."""
    renderer = fig.canvas.get_renderer()  # the figure's layout is final (pareto_figure computed it)
    spots: dict[tuple[int, int], tuple[float, float, list[str]]] = {}
    for x, y, text in labels:
        px, py = ax.transData.transform((x, y))
        spot = spots.setdefault((round(px / 4), round(py / 4)), (x, y, []))
        spot[2].append(text)
    placed: list[Any] = []
    for x, y, texts in spots.values():
        for i, (dx, dy) in enumerate(_OFFSETS):
            note = ax.annotate(
                ",".join(texts),
                (x, y),
                xytext=(5 * dx, 5 * dy),
                textcoords="offset points",
                fontsize=7,
                ha="left" if dx >= 0 else "right",
                va="bottom" if dy >= 0 else "top",
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if i >= 8 else None,
            )
            box = note.get_window_extent(renderer).expanded(1.15, 1.2)  # a little air between labels
            if not any(box.overlaps(other) for other in placed) or i == len(_OFFSETS) - 1:
                placed.append(box)
                break
            note.remove()


def length_plot(bench: BenchReport, title: str, path: Path) -> Path | None:
    """p50 latency against input length for every engine of one interleaved round, so a person sees
    where each engine wins (OpenVINO at long inputs, ONNX Runtime at short ones, say). None when every
    request had one length (a fixed shape)."""
    with_lengths = [r for r in bench.results if len(r.by_length) > 1]
    if not with_lengths:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for r in with_lengths:
        xs = [stat.high if stat.high < 1 << 20 else stat.low * 2 for stat in r.by_length]
        ys = [stat.p50_ms for stat in r.by_length]
        ax.plot(xs, ys, marker="o", linewidth=1, markersize=3, label=r.engine)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(_pyplot().NullLocator())  # the buckets' edges are the major ticks
    ax.set_xlabel("input length (tokens, upper edge of the bucket)")
    ax.set_ylabel("p50 latency per request (ms)")
    ax.set_title(f"{title}: latency by input length ({bench.settings.threads} thread(s))", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    _margins(fig, left=0.75, right=0.15, top=0.35, bottom=0.55)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
