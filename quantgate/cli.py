"""`quantgate`: register model versions, run the quantize-and-promote flow, read decisions.

Exit codes: 0 promoted (or already decided), 3 rejected by the gates, 2 a clear error (bad input,
storage), 1 anything unexpected.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from quantgate.bench import BenchSettings
from quantgate.errors import ConfigError, QuantgateError
from quantgate.registry import ModelRef
from quantgate.search import SearchBudget


class _ReadableHelp:
    """Help that reads when piped and at 80 columns. Rich's panels give each column a share of the width
    and cut what does not fit: at 80 columns `--max-share-below-cosine-floor` became
    `--max-share-below-…`. Where the panel does not fit (or stdout is not a terminal) this prints click's
    plain help instead: every flag whole, its help wrapped at words beside or below it, defaults
    included."""

    rich_markup_mode: Any
    params: list[Any]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if _rich_help_fits(self.params):
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            self.rich_markup_mode = mode


# Rich's options panel needs the longest flag, the longest --no-flag, the type column and room for the
# help (measured: `run`'s flags are whole from 113 columns).
_RICH_HELP_ROOM = 66


def _rich_help_fits(params: list[Any]) -> bool:
    import shutil
    import sys

    if not sys.stdout.isatty():
        return False
    longest = max((len(o) for p in params for o in p.opts if o.startswith("--")), default=0)
    negative = max((len(o) for p in params for o in p.secondary_opts), default=0)
    return shutil.get_terminal_size().columns >= longest + negative + _RICH_HELP_ROOM


class ReadableCommand(_ReadableHelp, TyperCommand):
    pass


class ReadableGroup(_ReadableHelp, TyperGroup):
    pass


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0], cls=ReadableGroup)


@app.callback()
def _entry() -> None:
    from quantgate.process import configure_process

    configure_process()


console = Console()
err = Console(stderr=True)

EXIT_REJECTED = 3
EXIT_ERROR = 2


def _fail(message: str) -> typer.Exit:
    # The message is text, not markup: a regex like '^[a-z]{0,79}$' must print as written.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_ERROR)


def _store() -> Any:
    from quantgate.settings import Settings
    from quantgate.storage import open_store

    return open_store(Settings())


@contextmanager
def _transfer_bars() -> Iterator[Any]:
    """A TransferProgress for lifecycle.register / pull_promotion: a rich progress bar on stderr for each
    file above QUANTGATE_MULTIPART_THRESHOLD_MB, only when stderr is a terminal (never in a pipe, a log
    or a flow run's output: flows pass no progress at all). None when there is no terminal."""
    from quantgate.settings import Settings

    if not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    threshold = Settings().multipart_threshold_mb * 2**20
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
    )

    def watch(name: str, size: int) -> Callable[[int], None] | None:
        if size <= threshold:
            return None
        bars.start()  # on the first large file only: small transfers draw nothing
        task = bars.add_task(escape(name), total=size)
        return lambda done: bars.advance(task, done)

    try:
        yield watch
    finally:
        bars.stop()


def _trusted() -> Any:
    """The public keys this consumer trusts (QUANTGATE_TRUSTED_KEYS); none: signatures are not checked."""
    from quantgate.settings import Settings
    from quantgate.signing import trusted_keys

    return trusted_keys(Settings())


def _ref(model: str, version: str) -> ModelRef:
    try:
        return ModelRef(name=model, version=version)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None


@app.command(cls=ReadableCommand)
def init() -> None:
    """Create the bucket if it does not exist (and check endpoint and credentials)."""
    try:
        store = _store()
        created = store.ensure_bucket()
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    _say(f"bucket [bold]{store.bucket}[/] at {store.endpoint}: {'created' if created else 'exists'}")


@app.command(cls=ReadableCommand)
def register(
    model: Annotated[str, typer.Argument(help="model name, e.g. minilm")],
    version: Annotated[str, typer.Argument(help="version label, e.g. 2024-06-01 or v3")],
    model_dir: Annotated[Path, typer.Option(help="local Hugging Face model folder")],
    heldout: Annotated[Path, typer.Option(help="held-out file in the task type's format (see the README)")],
    task: Annotated[
        str, typer.Option(help="task type; 'auto' tells it from the model folder (config.json architectures)")
    ] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="accept a pytorch_model.bin pickle checkpoint")] = False,
    expect_metric: Annotated[
        str | None,
        typer.Option(help="the FP32 task metric you measured on this held-out set, e.g. 0.85±0.03"),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="the traffic this model will serve, judged on by every run of it: a JSON file "
            "(batch_sizes, lengths, objective), a text file of sample inputs, or a named profile"
        ),
    ] = None,
) -> None:
    """Upload a local model folder and its held-out set as a new version of a named model."""
    from quantgate import lifecycle
    from quantgate.bench import load_profile
    from quantgate.registry import ExpectedMetric
    from quantgate.tasktypes import detect_task_type

    ref = _ref(model, version)
    try:
        expected = ExpectedMetric.parse(expect_metric) if expect_metric else None
        serving = load_profile(profile) if profile else None
        if task == "auto":
            task = detect_task_type(model_dir, heldout).name
        with _transfer_bars() as progress:
            registration = lifecycle.register(
                _store(),
                ref,
                model_dir,
                heldout,
                task,
                allow_pickle,
                expect_metric=expected,
                profile=serving,
                progress=progress,
            )
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    _announce_registration(registration)
    total = sum(f.size for f in registration.files) / 1e6
    _say(
        f"registered [bold]{ref}[/] ({len(registration.files)} files, {total:.1f} MB, task "
        f"{registration.task}); source checksum {registration.source_checksum[:16]}…"
    )


def _announce_registration(registration: Any) -> None:
    """Emit quantgate.model.registered when a Prefect API is configured; without one, the registry-sweep
    deployment picks the version up on its schedule."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        _say("no PREFECT_API_URL set: no event sent; the registry-sweep deployment will find this version")
        return
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from quantgate import announce
    from quantgate.settings import Settings

    name, resource, payload = announce.registered(registration, Settings().bucket)
    emit_event(event=name, resource=resource, payload=payload)
    EventsWorker.drain_all()  # a short-lived CLI must not exit before the event is sent
    _say(f"announced {name} for {registration.ref}")


def _thresholds(overrides: dict[str, float | None]) -> Any:
    from quantgate.thresholds import GateThresholds

    try:
        return GateThresholds(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise _fail(f"bad threshold ({problems})") from None


def _with_limit_flags(command: Callable[..., None]) -> Callable[..., None]:
    """One `--<limit>` flag per gate limit the core and the registered task types declare (gates.py,
    each task type's module): a task type's new limit is a new flag without an edit here. The values reach
    the command as `limits`."""
    from quantgate.thresholds import flag_limits

    limits = flag_limits()
    # Evaluated: with `from __future__ import annotations` the signature holds strings, which typer reads as
    # plain parameters once __signature__ is set (every other option of `run` then lost its help).
    signature = inspect.signature(command, eval_str=True)
    flags = {limit.name: Annotated[float | None, typer.Option(help=limit.help)] for limit in limits}
    # Each flag's default is its limit's declared one, so `--help` shows it beside the flag.
    defaults = {limit.name: limit.default for limit in limits}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        limits = {name: kwargs.pop(name) for name in list(flags)}
        command(**kwargs, limits=limits)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *(p for p in signature.parameters.values() if p.name != "limits"),
            *(
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n], annotation=a)
                for n, a in flags.items()
            ),
        ]
    )
    wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "limits"} | flags
    return wrapper


def _budget(field: str) -> Any:
    """A search-budget flag's default: SearchBudget's own (quantgate/search.py), so the two never differ."""
    return SearchBudget.model_fields[field].default


def _bench(field: str) -> Any:
    """A benchmark flag's default: BenchSettings' own (quantgate/bench.py)."""
    return BenchSettings.model_fields[field].default


@app.command(cls=ReadableCommand)
@_with_limit_flags
def run(
    model: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    recipe: Annotated[
        list[str] | None,
        typer.Option(help="candidate recipe from the catalogue (repeat it; default: the default search)"),
    ] = None,
    recipe_file: Annotated[
        Path | None, typer.Option(help="JSON list of recipes (objects or catalogue names)")
    ] = None,
    max_candidates: Annotated[int, typer.Option(help="search budget: recipes tried")] = _budget(
        "max_candidates"
    ),
    max_trials: Annotated[int, typer.Option(help="search budget: sensitive-node fallback trials")] = _budget(
        "max_trials"
    ),
    max_seconds: Annotated[
        float, typer.Option(help="search budget: seconds for building and scoring")
    ] = _budget("max_seconds"),
    calibration_rows: Annotated[int, typer.Option(help="held-out rows kept apart for calibration")] = _budget(
        "calibration_rows"
    ),
    max_eval_rows: Annotated[
        int, typer.Option(help="held-out rows every metric is computed on (a fixed sample beyond)")
    ] = _budget("max_eval_rows"),
    race: Annotated[
        bool,
        typer.Option(
            help="race the candidates: a stratified probe first, then the full split only for those that "
            "can still win (--no-race: every candidate on every row)"
        ),
    ] = _budget("race"),
    profile: Annotated[
        str | None,
        typer.Option(
            help="serving profile the speed is judged on: 'heldout' (requests drawn from the held-out set, "
            "as serving tokenizes them), 'b1-s128' (the fixed shape), a JSON file (batch_sizes, lengths, "
            "objective) or a text file of sample inputs; default: the registration's, else 'heldout'"
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            help=f"a fixed shape's batch size (implies the fixed profile; default {_bench('batch')})"
        ),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            help=f"a fixed shape's tokens per input (implies the fixed profile; default {_bench('seq_len')})"
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="benchmark threads")] = _bench("threads"),
    repeats: Annotated[int, typer.Option(help="benchmark timed runs per engine")] = _bench("repeat_runs"),
    allow_pickle: Annotated[bool, typer.Option(help="allow loading a pickle checkpoint")] = False,
    limits: dict[str, float | None] | None = None,
) -> None:
    """Run quantize-and-promote for a registered version and print the decision."""
    from quantgate.bench import ServingProfile, load_profile
    from quantgate.quantize import load_recipe_file, resolve_recipes

    ref = _ref(model, version)
    thresholds = _thresholds(limits or {})
    try:
        items: list[Any] = [*(recipe or [])]
        if recipe_file is not None:
            items += load_recipe_file(recipe_file)
        recipes = resolve_recipes(items) if items else None  # None: the task type's default search
        serving = load_profile(profile) if profile else None
        shape = (
            _bench("batch") if batch is None else batch,
            _bench("seq_len") if seq_len is None else seq_len,
        )
        if serving is None and (batch is not None or seq_len is not None):  # a shape given alone: time it
            serving = ServingProfile(name=f"b{shape[0]}-s{shape[1]}", source="fixed")
        bench = BenchSettings(
            batch=shape[0],
            seq_len=shape[1],
            threads=threads,
            repeat_runs=repeats,
            profile=serving,
        )
        budget = SearchBudget(
            max_candidates=max_candidates,
            max_trials=max_trials,
            max_seconds=max_seconds,
            calibration_rows=calibration_rows,
            max_eval_rows=max_eval_rows,
            race=race,
        )
        # An unreachable endpoint, bad keys, a missing bucket or version: say so before Prefect starts.
        from quantgate import lifecycle
        from quantgate.settings import Settings
        from quantgate.signing import promotion_signer

        lifecycle.load_registration(_store(), ref)
        promotion_signer(Settings())  # a missing or unreadable signing key: say so before the run
        _reviewer_can_reach_the_run(Settings())
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = f"--{str(err['loc'][0]).replace('_', '-')} " if err["loc"] else ""
        raise _fail(f"bad benchmark or budget setting: {flag}{err['msg']}") from None
    except QuantgateError as exc:
        raise _fail(str(exc)) from None

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.quantize_and_promote import quantize_and_promote

    _quiet_known_errors()

    console.rule(f"quantize-and-promote {ref}")
    state = quantize_and_promote(
        model=model,
        version=version,
        recipes=recipes,
        thresholds=thresholds,
        bench=bench,
        budget=budget,
        allow_pickle=allow_pickle,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if state.is_failed():
        raise _fail(str(result) if isinstance(result, QuantgateError) else f"run failed: {state.message}")
    # The message on a line of its own: a rule cuts a title wider than the console, and this one ends with
    # where the report is.
    console.rule(state.name)
    _say(escape(state.message or ""))
    if isinstance(result, dict) and "gates" in result:
        print_report(result)
    elif state.name == "AlreadyDecided":
        _show_decision(ref)
    if state.name == "NotPromoted":
        raise typer.Exit(EXIT_REJECTED)


def _quiet_known_errors() -> None:
    """Prefect logs a failed task or flow with its traceback (some 40 lines). For quantgate's own errors
    the message is the whole story, printed once at the end: the console keeps the log line and drops
    the trace. Prefect's API log handler sits on the child loggers, so the UI still gets the trace."""
    import logging
    import re

    from quantgate import errors

    ours = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, QuantgateError)}
    # Prefect repeats the error's text in "Finished in state Failed('... exception Name: text')" for the
    # task and again for the flow, and in "Encountered exception during execution: Name('text')".
    said = re.compile(r"(?P<head>exception(?: during execution)?:? )(?P<name>[A-Za-z_]\w*)\b[:(].*", re.S)
    once = "(its message is printed once, at the end)"

    class DropKnownTraces(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], QuantgateError):
                record.exc_info, record.exc_text = None, None
            text = record.getMessage()
            match = said.search(text)
            if match and match["name"] in ours:
                record.msg = f"{text[: match.start()]}{match['head']}{match['name']} {once}"
                record.args = None
            return True

    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, DropKnownTraces) for f in handler.filters):
                handler.addFilter(DropKnownTraces())


def _say(message: str | Text) -> None:
    """One message as one line when piped (no line breaks put into a sentence: a log or grep reads it
    whole), wrapped at words on a terminal. Markup in `message` is the caller's; values it quotes are
    escaped by the caller."""
    console.print(message, soft_wrap=not console.is_terminal, highlight=False)


# A column of wrapped text (failed gates, limits) gets at least this many columns, or its longest word.
_MIN_TEXT_COLUMN = 16


def _table_fits(cells: list[dict[str, str]]) -> bool:
    """Whether a table of these cells fits the console with every word whole: columns of single words
    (names, numbers; never wrapped) at their full width, columns of text at `_MIN_TEXT_COLUMN` or their
    longest word. Rich then narrows only the text columns, down to what they need."""
    width = 1  # the left edge; each column adds its padding (2) and a divider (1)
    for col in cells[0]:
        values = [col, *(row[col] for row in cells)]
        longest = max(len(v) for v in values)
        if any(" " in v for v in values):
            word = max(len(w) for v in values for w in v.split())
            longest = min(longest, max(word, _MIN_TEXT_COLUMN))
        width += longest + 3
    return width <= console.width


def _print_rows(
    title: str, rows: list[dict[str, Any]], name: str, styles: dict[str, Callable[[str], str]] | None = None
) -> None:
    """Rows as a table where it fits with every word whole; otherwise (80 columns, most pipes) one block
    per row: its `name` cell whole on a line, the other cells as `column value` pairs wrapped at words
    below it. Rich fits a table to the console by folding or cutting its widest cells, and the widest are
    candidate names: `dynamic-int8-per-channel-reduce-range-no-sln` came out as three pieces. `styles`
    colour a column's cells by their value."""
    if not rows:
        return
    styles = styles or {}
    cells = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    if _table_fits(cells):
        table = Table(title=escape(title))
        for col in cells[0]:
            table.add_column(escape(col), no_wrap=not any(" " in v for v in [col, *(r[col] for r in cells)]))
        for row in cells:
            table.add_row(*(Text(v, style=styles[k](v) if k in styles else "") for k, v in row.items()))
        console.print(table)
        return
    _say(Text(title, style="italic"))
    for row in cells:
        console.print(Text(row[name], style="bold"), soft_wrap=True, highlight=False)
        pairs = Text()
        for k, v in row.items():
            if k == name or not v:
                continue
            if pairs:
                pairs.append(" · ")
            pairs.append(f"{k} ")
            pairs.append(v, style=styles[k](v) if k in styles else "")
        for line in pairs.wrap(console, max(console.width - 2, 20)):  # at words, indented, no padding
            line.rstrip()
            console.print(Text("  ") + line, soft_wrap=True, highlight=False)


def _result_style(value: str) -> str:
    return {"PROMOTED": "bold green", "pass": "green"}.get(value, "red")


def print_report(report: dict[str, Any]) -> None:
    from quantgate.report import (
        RunReport,
        champion_line,
        fp32_interval,
        gate_rows,
        no_candidate_line,
        slice_rows,
    )

    parsed = RunReport.model_validate(report)
    verdict = "[bold green]PROMOTED[/]" if parsed.outcome == "promoted" else "[bold yellow]NOT PROMOTED[/]"
    recipe = f"recipe {escape(parsed.recipe.name)}" if parsed.recipe else "no candidate built"
    _say(f"{parsed.model}@{parsed.version}: {verdict}  {recipe}  run {parsed.run_id}")
    if parsed.promoted_to:
        _say(f"promoted to {escape(parsed.promoted_to)}")
    if parsed.reason:
        needed = f" (about {parsed.rows_needed} held-out rows would be needed)" if parsed.rows_needed else ""
        _say(f"reason: [bold]{escape(parsed.reason)}[/]{needed}")
    if parsed.approval:
        from quantgate.approval import approval_line

        _say(f"review: {escape(approval_line(parsed.approval))}")
    _say(escape(champion_line(parsed)))
    m = parsed.metrics
    if parsed.recipe is None:
        _say(f"task metric FP32 {m['task_metric_fp32']:.4f}{fp32_interval(parsed)}")
        _say(escape(no_candidate_line(parsed)))
    else:
        _say(
            f"task metric FP32 {m['task_metric_fp32']:.4f} → INT8 {m['task_metric_candidate']:.4f} "
            f"(drop {100 * m['task_metric_drop']:.2f} points)"
        )
    gates = [
        {"gate": r["gate"], "value": r["value"], "95% interval": r["interval"], "limit": r["limit"],
         "margin": r["margin"], "result": r["result"]}
        for r in gate_rows(parsed.gates)
    ]  # fmt: skip
    title = "gates" if parsed.recipe else "gates of the FP32 reference (before any candidate)"
    _print_rows(title, gates, "gate", {"result": lambda v: "green" if v == "pass" else "red"})
    _print_rows("slices (the max-slice-drop gate counts slices of >= 50 rows)", slice_rows(parsed), "slice")
    _print_bench(parsed)
    if parsed.search and parsed.search.candidates:
        _print_candidates(parsed.search, parsed.task)


def _print_bench(parsed: Any) -> None:
    from quantgate.report import bench_rows

    if parsed.benchmark is None:  # no candidate was built: nothing was timed
        return
    flags = ", ".join(parsed.benchmark.cpu.get("flags", []))
    _print_rows(
        f"benchmark: {parsed.benchmark.describe()}, CPU {flags}", bench_rows(parsed.benchmark), "engine"
    )


def _print_candidates(search: Any, task: str) -> None:
    from quantgate.report import compact_candidate_rows, kind_rows

    rows = compact_candidate_rows(search, task)
    _print_rows(f"candidates ({search.seconds:.0f} s)", rows, "candidate", {"result": _result_style})
    kinds = kind_rows(search)
    if len(kinds) > 1:
        _print_rows("by kind of recipe (the fastest of each, one benchmark round)", kinds, "fastest")
    if search.fallback is not None and search.fallback.kept_fp32:
        _say(
            "kept in FP32 by the sensitive-node fallback: "
            + escape(", ".join(f"{k['node']} ({k['sqnr_db']} dB)" for k in search.fallback.kept_fp32))
        )


def _show_decision(ref: ModelRef, as_json: bool = False) -> None:
    from quantgate import lifecycle
    from quantgate.errors import NotFoundError

    store = _store()
    try:
        report = lifecycle.load_decision_report(store, ref)
    except NotFoundError as missing:
        # No decision: a version whose runs failed says how the last one failed ("failed: <reason>").
        # Anything else (no bucket, a promoted file gone) keeps its own message.
        try:
            failure = None if lifecycle.decision_of(store, ref) else lifecycle.last_failure(store, ref)
        except QuantgateError:
            failure = None
        if failure is None:
            raise missing from None
        report = failure
    if as_json:
        console.print_json(json.dumps(report))
    elif report.get("outcome") == "failed":
        print_failure(report, lifecycle.run_history(store, ref).failures)
    else:
        print_report(report)


def print_failure(report: dict[str, Any], failures: int) -> None:
    """A version whose last run failed: the reason, its failed data checks, where its Data Docs are."""
    from quantgate.report import failure_reason

    console.print(
        f"[bold]{escape(report['model'])}@{escape(report['version'])}[/]: [bold red]failed:[/] "
        f"{escape(failure_reason(report))}",
        soft_wrap=True,
    )
    for check in report.get("failed_checks") or []:
        console.print(f"  - {escape(str(check))}", soft_wrap=True, highlight=False)
    console.print(
        f"run {report['run_id']}"
        + (f" at {report['failed_at']}" if report.get("failed_at") else "")
        + f"; {failures} failed run(s), no decision (the registry sweep runs it again until its limit)"
    )
    if report.get("data_docs"):
        console.print(f"held-out Data Docs: {report['data_docs']}", soft_wrap=True, highlight=False)


@app.command(cls=ReadableCommand)
def report(
    model: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, typer.Option("--json", help="print the raw report JSON")] = False,
) -> None:
    """Print a version's decision, its gates and its benchmark table."""
    ref = _ref(model, version)
    try:
        _show_decision(ref, as_json)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        raise _fail(
            f"the stored report of {ref} does not have the expected shape ({exc.error_count()} problem(s)): "
            "print it raw with `quantgate report --json`"
        ) from None


@app.command(cls=ReadableCommand)
def rollback(
    model: Annotated[str, typer.Argument()],
    to: Annotated[str | None, typer.Option("--to", help="promoted version to point back to")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only show what would change")] = False,
) -> None:
    """Point promoted/<model>/current.json back at an earlier promoted version (audited): shows the change
    (current version → target, target verified) and asks before making it."""
    from quantgate import lifecycle
    from quantgate.registry import check_name
    from quantgate.settings import Settings

    try:
        check_name(model)
        settings = Settings()
        store, trusted = _store(), _trusted()
        # Read only: the target is resolved and its files verified before anyone is asked.
        plan = lifecycle.plan_rollback(store, model, to, trusted)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"{model}: current version {plan.current} → [bold]{plan.target}[/] "
        f"(promoted/{model}/current.json; {plan.target}'s files verified)"
    )
    if dry_run:
        console.print("dry run: nothing changed")
        return
    if not yes and not typer.confirm(f"Roll {model} back to {plan.target}?", default=False):
        console.print("not rolled back: nothing changed")
        raise typer.Exit(1)
    try:
        # The swap is against the pointer shown above: if it moved meanwhile, nothing changes.
        event = lifecycle.apply_rollback(store, plan, settings.actor, trusted)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    _say(
        f"{model}: current version {event.previous_version} → [bold]{event.version}[/] "
        f"(manifest sha256 {event.manifest_sha256[:16]}…, by {event.actor})"
    )
    _announce_rollback(event)


def _reviewer_can_reach_the_run(settings: Any) -> None:
    """With approval on, the run waits on its Prefect server for a person's answer: an in-process
    throwaway server (no PREFECT_API_URL) is one nobody else can reach, so the run would only time out."""
    from prefect.settings import PREFECT_API_URL

    if settings.require_approval and not PREFECT_API_URL.value():
        raise ConfigError(
            "QUANTGATE_REQUIRE_APPROVAL is on but PREFECT_API_URL is not set: the run would wait for an "
            "approval on a throwaway in-process Prefect server nobody can reach; set PREFECT_API_URL to a "
            "running server (python -m infra.prefect_server start) or turn approval off"
        )


def _answer(model: str, version: str, decision: str, by: str | None, comment: str | None) -> None:
    """Resume the run of model@version that waits for approval, with the reviewer's answer."""
    from prefect.settings import PREFECT_API_URL

    from quantgate.settings import Settings

    if not PREFECT_API_URL.value():
        raise _fail(
            "no PREFECT_API_URL set: a run waiting for approval lives on a Prefect server; set "
            "PREFECT_API_URL to the server the run reports to (e.g. http://127.0.0.1:4200/api)"
        )
    from tasks.approval import resume

    ref = _ref(model, version)
    try:
        run_id = resume(ref, decision, by or Settings().actor, comment)  # type: ignore[arg-type]
    except (QuantgateError, ValidationError) as exc:
        raise _fail(str(exc)) from None
    verb = "approved: it promotes now" if decision == "approve" else "rejected: it records the rejection"
    _say(f"{ref}: run {run_id} {verb}")


_BY = typer.Option(
    help="who decides (recorded in the report, manifest and run tags); default: QUANTGATE_ACTOR"
)
_COMMENT = typer.Option(help="why, for the record")


@app.command(cls=ReadableCommand)
def approve(
    model: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    by: Annotated[str | None, _BY] = None,
    comment: Annotated[str | None, _COMMENT] = None,
) -> None:
    """Approve the run of MODEL@VERSION that passed every gate and waits for approval: it promotes."""
    _answer(model, version, "approve", by, comment)


@app.command(cls=ReadableCommand)
def reject(
    model: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    by: Annotated[str | None, _BY] = None,
    comment: Annotated[str | None, _COMMENT] = None,
) -> None:
    """Reject the run of MODEL@VERSION that waits for approval: it records a rejection (reason
    by-reviewer) and promotes nothing."""
    _answer(model, version, "reject", by, comment)


def _announce_rollback(event: Any) -> None:
    """quantgate.model.rolled-back, when a Prefect API is configured (serving can reload on it)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from quantgate import announce

    name, resource, payload = announce.rolled_back(event)
    emit_event(event=name, resource=resource, payload=payload)
    EventsWorker.drain_all()  # a short-lived CLI must not exit before the event is sent
    console.print(f"announced {name}")


@app.command("list", cls=ReadableCommand)
def list_versions(model: Annotated[str | None, typer.Argument(help="only this model")] = None) -> None:
    """Registered versions, their decisions (or how their last run failed), and whether each promotion's
    files verify."""
    from quantgate import lifecycle
    from quantgate.report import failure_reason

    try:
        store = _store()
        store.require_bucket()
        trusted = _trusted()
        refs = lifecycle.list_registered(store, model)
        table = Table(title=f"registered versions in s3://{store.bucket}")
        for col in ("model", "version", "decision", "files", "current"):
            table.add_column(col)
        pointers: dict[str, Any] = {}
        audits: dict[str, Any] = {}  # each model's audit keys, listed once for all its versions
        for name in {r.name for r in refs}:
            try:
                pointers[name] = lifecycle.current(store, name)
            except QuantgateError as exc:
                pointers[name] = exc
            try:
                audits[name] = lifecycle.event_keys(store, name)
            except QuantgateError:
                audits[name] = None  # each version lists it again, and says what failed
        for ref in refs:
            pointer = pointers[ref.name]
            if isinstance(pointer, QuantgateError):
                is_current = "[red]current.json unreadable[/]"
            else:
                is_current = "◀ current" if pointer and pointer.version == ref.version else ""
            decision = lifecycle.decision_of(store, ref)
            shown = decision or "-"
            if decision is None:
                failure = lifecycle.last_failure(store, ref)
                if failure is not None:
                    shown = f"[red]failed:[/] {escape(failure_reason(failure, 80))}"
            health = ""
            if decision == "promoted":
                try:
                    check = lifecycle.verify_promotion(
                        store, ref, trusted=trusted, audit_keys=audits[ref.name]
                    )
                    health = "ok" if check.ok else f"[red]BROKEN ({len(check.problems)} problem(s))[/]"
                except QuantgateError as exc:
                    health = f"[red]BROKEN ({type(exc).__name__})[/]"
            table.add_row(ref.name, ref.version, shown, health, is_current)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    console.print(table)


@app.command(cls=ReadableCommand)
def verify(
    model: Annotated[str, typer.Argument()],
    version: Annotated[str | None, typer.Argument(help="default: the version current.json names")] = None,
    deep: Annotated[bool, typer.Option(help="download every file and hash its bytes")] = False,
) -> None:
    """Check a promotion in place: every file its manifest lists exists with its size and sha256."""
    from quantgate import lifecycle
    from quantgate.registry import check_name

    try:
        check_name(model)
        store = _store()
        if version is None:
            pointer = lifecycle.current(store, model)
            if pointer is None:
                store.require_bucket()
                raise _fail(f"model {model!r} has no current promoted version: name a VERSION")
            version = pointer.version
        result = lifecycle.verify_promotion(store, _ref(model, version), deep=deep, trusted=_trusted())
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"{model}@{version}: manifest sha256 {result.manifest_sha256[:16]}…")
    for col in ("file", "status", "detail"):
        table.add_column(col, overflow="fold")
    for check in result.files:
        style = "green" if check.status == "ok" else "red"
        table.add_row(check.path, f"[{style}]{check.status}[/]", check.detail)
    console.print(table)
    if not result.ok:
        raise _fail(f"{model}@{version} fails verification: {result.summary()}")
    how = "bytes hashed" if deep else "stored checksums"
    _say(f"{model}@{version}: every file verified ({how}); {escape(result.signature.line())}")


@app.command(cls=ReadableCommand)
def pull(
    model: Annotated[str, typer.Argument()],
    to: Annotated[Path, typer.Option("--to", help="new or empty folder to download into")],
    version: Annotated[str | None, typer.Option(help="default: the version current.json names")] = None,
) -> None:
    """Download a promotion (default: the current one), every file verified against its manifest."""
    from quantgate import lifecycle
    from quantgate.registry import check_name

    try:
        check_name(model)
        if version is not None:
            _ref(model, version)
        with _transfer_bars() as progress:
            manifest, paths = lifecycle.pull_promotion(_store(), model, version, to, _trusted(), progress)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    total = sum(p.stat().st_size for p in paths) / 1e6
    _say(
        f"pulled {model}@{manifest.version} (recipe {escape(str(manifest.recipe.get('name')))}) into {to}: "
        f"{len(paths)} files, {total:.1f} MB, every sha256 verified"
    )
    for drift in lifecycle.engine_drift(manifest):
        # A warning, not a refusal: the files are the promoted ones; only their speed and scores may move.
        err.print(
            f"[bold yellow]warning:[/] {model}@{manifest.version} was judged with {escape(drift.package)} "
            f"{escape(drift.judged)}, this machine has {escape(drift.local or 'none installed')}: its "
            f"latency and accuracy here may differ from the report's (install "
            f"{escape(drift.package)}=={escape(drift.judged)} to serve it as it was judged)",
            highlight=False,
            soft_wrap=True,
        )


keys_app = typer.Typer(
    cls=ReadableGroup,
    no_args_is_help=True,
    help="Signing keys: the promoter signs every promotion; consumers trust its public keys.",
)
app.add_typer(keys_app, name="keys")


def _key_dir(key_dir: Path | None) -> Path:
    from quantgate.settings import Settings

    if key_dir is not None:
        return key_dir
    configured = Settings().signing_key
    if configured is None:
        raise _fail("name the key folder with --dir, or set QUANTGATE_SIGNING_KEY to its signing-key.pem")
    return configured.parent


def _print_key_env(pair: Any) -> None:
    lines = [
        f"private key (promoter only, mode 600): {pair.private}",
        f"public key {pair.key_id[:16]}: {pair.public}",
        "# the promoter:",
        f"export QUANTGATE_SIGNING_KEY={pair.private}",
        "# consumers (give them a copy of the public/ folder, never the private key):",
        f"export QUANTGATE_TRUSTED_KEYS={pair.public.parent}",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


@keys_app.command("create", cls=ReadableCommand)
def keys_create(
    out: Annotated[Path, typer.Option("--out", help="folder for signing-key.pem and public/")],
) -> None:
    """Make a signing key: DIR/signing-key.pem (private) and DIR/public/<key-id>.pub.pem."""
    from quantgate.signing import create_keys

    try:
        pair = create_keys(out)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    _print_key_env(pair)


@keys_app.command("rotate", cls=ReadableCommand)
def keys_rotate(
    key_dir: Annotated[
        Path | None, typer.Option("--dir", help="the key folder (default: QUANTGATE_SIGNING_KEY's)")
    ] = None,
) -> None:
    """Replace the signing key; the old public key stays in DIR/public/ (delete it to retire the key)."""
    from quantgate.signing import rotate_keys

    folder = _key_dir(key_dir)
    try:
        pair, old = rotate_keys(folder)
    except QuantgateError as exc:
        raise _fail(str(exc)) from None
    _print_key_env(pair)
    console.print(
        f"old key {old[:16]} stays trusted through {pair.public.parent}/{old[:16]}.pub.pem, so the "
        "promotions it signed keep verifying: delete that file (and its copies) when the old key leaked",
        soft_wrap=True,
        highlight=False,
    )


if __name__ == "__main__":
    app()
