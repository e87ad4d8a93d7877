"""What a person meets in the Prefect UI (#23): links that open, plots shown inline, Data Docs that render
without internet access, tables that read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantgate import lifecycle
from quantgate.bench import BenchReport, BenchSettings, EngineResult
from quantgate.registry import ModelRef
from quantgate.report import (
    ExportSummary,
    HeldoutSummary,
    RunReport,
    build_run_report,
    decision_keys,
    decision_links,
    decision_plots,
    to_markdown,
)
from quantgate.search import SearchBudget, SearchResult
from quantgate.store import MemoryStore
from tests.conftest import scored_candidate

# A relative address a page makes the browser follow or fetch (href, src, CSS url()).
_REFERENCED = re.compile(r'(?:src|href)="([^"#:?]+)"|url\([\'"]?([^\'")#:?]+)')
REF = ModelRef(name="minilm", version="v7")
RUN = "run-0001"


def _report(heldout: HeldoutSummary | None = None) -> RunReport:
    """A rejected sentence-embedding run whose lead candidate was timed (so every plot is drawn)."""
    from quantgate.backends.onnxruntime import OrtRecipe

    recipe = OrtRecipe(name="dynamic-int8")
    latency = EngineResult(
        engine=recipe.name, p50_ms=1.0, p95_ms=1.1, p99_ms=1.2, mean_ms=1.0, throughput_per_s=1000.0,
        size_mb=1.0, load_s=0.1,
    )  # fmt: skip
    fp32 = latency.model_copy(update={"engine": "onnx-fp32", "p50_ms": 2.0})
    lead = scored_candidate(
        recipe, bench_round="candidates", latency=latency,
        metrics={"task_metric_fp32": 0.87, "task_metric_candidate": 0.868, "task_metric_drop": 0.002},
    )  # fmt: skip
    search = SearchResult(
        candidates=[lead],
        benchmarks={"candidates": BenchReport(settings=BenchSettings(), results=[fp32, latency], cpu={})},
        chosen=None,
        lead=lead.name,
        budget=SearchBudget(),
        seconds=1.0,
    )
    return build_run_report(
        ref_name=REF.name, ref_version=REF.version, run_id=RUN, task="sentence-embedding",
        export=ExportSummary(
            onnx_path=Path("model.onnx"), input_names=["input_ids"], output_names=["sentence_embedding"],
            opset=17, max_abs_diff_vs_torch={}, parity_samples=1, size_bytes=1,
        ),
        heldout=heldout or HeldoutSummary(rows=100), thresholds={}, search=search,
    )  # fmt: skip


class _PresigningStore(MemoryStore):
    def presign(self, key: str, expires_s: int) -> str:
        return f"https://s3.example/{self.bucket}/{key}?X-Amz-Expires={expires_s}"


def test_a_rejected_runs_plot_links_resolve_to_the_keys_its_rejection_stored(tmp_path):
    report = _report()
    assert report.outcome == "rejected"
    store = MemoryStore()
    plots = decision_plots(report, tmp_path)
    lifecycle.reject(store, REF, report.model_dump(mode="json"), report.parity.model_dump(), plots)

    keys = decision_keys(report)
    plot_keys = {k: v for k, v in keys.items() if k.endswith("-plot")}
    assert set(plot_keys) == {"latency-plot", "pareto-plot", "length-plot"} & {
        f"{p[:-4]}-plot" for p in plots
    }
    for name, key in keys.items():
        assert store.exists(key), f"{name} links to {key}, which the rejection did not store"
    assert all(f"/{RUN}/" in key for key in plot_keys.values())


def test_links_are_presigned_where_the_store_can_and_s3_text_where_it_cannot():
    report = _report(HeldoutSummary(rows=100, data_docs=f"s3://memory/runs/minilm/v7/{RUN}/data_docs/x.html"))
    signed = decision_links(report, _PresigningStore(), 3600)
    assert signed["data-docs"].startswith("https://")
    assert signed["data-docs"].endswith(f"/runs/minilm/v7/{RUN}/data_docs/x.html?X-Amz-Expires=3600")
    assert all(url.startswith("https://") for url in signed.values())
    plain = decision_links(report, MemoryStore(), 3600)
    assert all(url.startswith("s3://memory/") for url in plain.values())


def test_the_markdown_report_shows_every_plot_inline_and_says_when_its_links_expire():
    report = _report()
    links = decision_links(report, _PresigningStore(), 7 * 24 * 3600)
    md = to_markdown(report, links, 7 * 24 * 3600)
    for name, url in links.items():
        if name.endswith("-plot"):
            assert f"![{name}]({url})" in md
        assert f"[{name}]({url})" in md
    assert "presigned" in md
    assert "UTC" in md
    # s3:// addresses open nothing in a browser: they are listed, never shown as images.
    plain = to_markdown(report, decision_links(report, MemoryStore(), 60), 60)
    assert "![" not in plain


@pytest.fixture(scope="module")
def data_docs(tmp_path_factory) -> tuple[Path, list[str]]:
    import pandas as pd

    from quantgate.datadocs import make_offline
    from quantgate.heldout import validate_heldout
    from quantgate.tasktypes import get_task_type

    docs = tmp_path_factory.mktemp("data_docs")
    rows = [{"score": 1.0, "sentence1": f"s{i}", "sentence2": f"t{i}"} for i in range(20)]
    outcome = validate_heldout(pd.DataFrame(rows), get_task_type("sentence-embedding").schema, docs_dir=docs)
    return docs, make_offline(docs, outcome.data_docs)


def test_data_docs_pages_fetch_nothing_from_the_internet(data_docs):
    from quantgate.datadocs import fetched_urls

    docs, files = data_docs
    pages = [f for f in files if f.endswith(".html")]
    assert len(pages) >= 3
    for page in pages:
        text = (docs / page).read_text(encoding="utf-8")
        assert fetched_urls(text) == [], page
        assert 'id="quantgate-offline"' in text  # styled on its own, also when opened from a presigned link
    for css in (f for f in files if f.endswith(".css")):
        assert fetched_urls((docs / css).read_text(encoding="utf-8")) == [], css


def test_data_docs_pages_are_self_contained_and_every_relative_reference_resolves(data_docs):
    """Each page carries GX's styles and images itself (a presigned link opens one object; a run stores one
    object per page), and nothing it loads points at an object that is not stored."""
    import posixpath

    docs, files = data_docs
    assert files
    assert all(f.endswith(".html") for f in files), files
    store = MemoryStore()
    main = "index.html"
    key = lifecycle.write_data_docs(store, REF, RUN, docs, files, main)
    prefix = key.removesuffix(main)
    validation = next(f for f in files if f.startswith("validations/"))
    text = store.get_bytes(prefix + validation).decode()
    assert "data:image/" in text  # GX's logo, inlined
    gx_css = (docs / "static" / "styles" / "data_docs_default_styles.css").read_text(encoding="utf-8")
    rules = [r.strip() for r in gx_css.split("}") if "{" in r and "url(" not in r and "@" not in r]
    assert rules
    assert rules[-1] in text  # GX's own stylesheet, inlined
    for page in files:
        text = store.get_bytes(prefix + page).decode()
        for ref in (
            a or b for a, b in re.findall(r'(?:src|href)="([^"#:?]+)"|url\([\'"]?([^\'")#:?]+)', text)
        ):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(prefix + page), ref))
            assert store.exists(target), f"{page} references {ref}, not stored"
    index = store.get_bytes(prefix + "index.html").decode()
    assert 'href="validations/' in index  # the index lists its pages without JavaScript


def test_the_candidates_table_leads_with_the_decision():
    from quantgate.report import candidate_rows

    (row,) = candidate_rows(_report().search, "sentence-embedding")
    assert list(row)[:3] == ["candidate", "result", "failed_gates"]


def test_limits_read_as_text_in_tables_and_markdown():
    from quantgate.report import as_text, text_rows

    assert as_text(">= 0.98") == "≥ 0.98"
    assert as_text("<= 0.1 of rows beyond 0.5") == "≤ 0.1 of rows beyond 0.5"
    assert text_rows([{"limit": ">= 1", "value": 0.5}]) == [{"limit": "≥ 1", "value": 0.5}]
    md = to_markdown(_report())
    assert not any(line.lstrip("| ").startswith(">") for line in md.splitlines())


def test_held_out_text_in_the_report_uses_only_entities_the_prefect_ui_decodes():
    from quantgate.report.markdown import _plain

    # Prefect 3.8.8's markdown renderer decodes &lt; &gt; &quot; &#39; &amp; and shows any other as typed.
    assert _plain('you\'re "here"') == 'you\'re "here"'
    assert _plain("<script>a|b</script>") == "&lt;script&gt;a\\|b&lt;/script&gt;"


def test_search_progress_counts_candidates_then_fallback_trials_and_ends_at_100(monkeypatch):
    import flows.search as wiring

    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(
        wiring, "create_progress_artifact", lambda p, description: calls.append((p, description)) or "id"
    )
    monkeypatch.setattr(
        wiring, "update_progress_artifact", lambda _id, p, description: calls.append((p, description))
    )
    search = _report().search
    lead = search.candidates[0]
    progress = wiring.SearchProgress(candidates=2, max_trials=2)
    for _ in range(3):
        progress.scored(lead)
    progress.finished(search)

    described = [d for _, d in calls]
    assert described[1].startswith("candidate 1 of 2: `dynamic-int8`")
    assert described[2].startswith("candidate 2 of 2")
    assert described[3].startswith("fallback trial 1 of at most 2")
    shares = [p for p, _ in calls]
    assert shares == sorted(shares)
    assert shares[-1] == 100.0
    assert "none passed; closest `dynamic-int8`" in described[-1]


def test_search_progress_that_cannot_be_shown_does_not_fail_the_search(monkeypatch):
    import flows.search as wiring

    def down(*_args, **_kwargs):
        raise RuntimeError("Prefect API unreachable")

    monkeypatch.setattr(wiring, "create_progress_artifact", down)
    monkeypatch.setattr(wiring, "update_progress_artifact", down)
    search = _report().search
    progress = wiring.SearchProgress(candidates=2, max_trials=0)
    progress.scored(search.candidates[0])
    progress.finished(search)
    assert progress.done == 1


def test_pareto_labels_do_not_collide_when_candidates_cluster():
    from quantgate.plots import ParetoPoint, pareto_figure

    names = [f"dynamic-int8-per-channel-variant-{i}" for i in range(11)]
    points = [
        ParetoPoint(
            name=n, p50_ms=2.0 + 0.01 * (i % 2), task_metric_drop=0.001 * (i % 3),
            values={"task_metric_drop": 0.001 * (i % 3)}, passed=i % 2 == 0, chosen=i == 0,
        )
        for i, n in enumerate(names)
    ]  # fmt: skip
    fig = pareto_figure(points, {"onnx-fp32": 3.0}, [("task_metric_drop", "drop", 0.01)], "m@v")
    renderer = fig.canvas.get_renderer()
    ax, key = fig.axes
    labels = [t for t in ax.texts if t.get_rotation() == 0]
    numbers = [n for t in labels for n in t.get_text().split(",")]  # points on one spot share a label
    assert sorted(numbers, key=int) == [str(i) for i in range(1, 12)]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    listed = key.texts[0].get_text()
    assert all(n in listed for n in names)  # every full name, once, in the key


def test_a_registrants_text_cannot_plant_a_link_an_image_or_html_in_the_report():
    """Held-out sentences and slice values are the registrant's: in the markdown report and the examples
    table they read as typed, never as a link, an image the UI would fetch, or HTML."""
    from quantgate.report import plain_rows
    from quantgate.report.markdown import _md_table

    hostile = "![t](https://evil.example/t.png?leak) [click](javascript:alert(1)) <img src=x onerror=a()>"
    (row,) = plain_rows([{"input": hostile, "slice": "genre=" + hostile, "rows": 3}])
    table = _md_table([row])
    assert re.search(r"(?<!\\)\]\(", table) is None  # no unescaped link or image target
    assert re.search(r"(?<!\\)!\[", table) is None
    assert "<img" not in table
    assert "\\!\\[t\\]\\(https://evil.example/t.png?leak\\)" in row["input"]
    assert row["rows"] == 3  # numbers stay numbers


def test_the_offline_check_sees_every_way_a_page_fetches_and_only_the_sites_own_files_are_inlined(tmp_path):
    from quantgate.datadocs import fetched_urls, offline_page

    for fetches in (
        "<img src=//evil.example/x.png>",
        '<img srcset="https://evil.example/x.png 1x">',
        '<style>@import "//evil.example/x.css";</style>',
        "<link rel=preload href=https://evil.example/x.js>",
        "<div style=\"background:url('https://evil.example/x.png')\"></div>",
    ):
        assert fetched_urls(fetches), fetches
    assert fetched_urls('<a href="https://docs.greatexpectations.io">docs</a>') == []  # a click, not a fetch
    static = tmp_path / "site" / "static"
    (static / "images").mkdir(parents=True)
    (static / "images" / "logo.png").write_bytes(b"\x89PNG logo")
    (tmp_path / "secret.txt").write_text("do not publish")
    page = offline_page(
        '<html><head></head><body><img src="static/images/logo.png"><img src="static/../../secret.txt">'
        "</body></html>",
        "index.html",
        static=static,
    )
    assert "data:image/png;base64," in page
    assert "ZG8gbm90IHB1Ymxpc2g" not in page  # base64 of the secret: a path out of static/ is never inlined
    assert 'src="#"' in page


@pytest.mark.parametrize(
    "engines",
    [["W" * 80, "onnx-fp32"], ["champion@" + "W" * 64], []],
    ids=["longest-recipe-name", "longest-champion-version", "no-engine"],
)
def test_the_latency_plot_draws_any_engine_names_it_can_be_given(tmp_path, engines):
    """Recipe names may have 80 characters and versions 64: a name wider than the figure must not leave
    the bars no room (a plot that raised would turn a promotion into a failed run: decision_links)."""
    from quantgate.bench import BenchReport, BenchSettings, EngineResult
    from quantgate.plots import latency_plot

    results = [
        EngineResult(engine=e, p50_ms=1.0, p95_ms=1.2, p99_ms=1.3, mean_ms=1.0, throughput_per_s=1000.0,
                     size_mb=1.0, load_s=0.1)
        for e in engines
    ]  # fmt: skip
    bench = BenchReport(settings=BenchSettings(), results=results, cpu={})
    path = latency_plot(bench, "m@v", tmp_path / "l.png")
    assert path.read_bytes().startswith(b"\x89PNG")
