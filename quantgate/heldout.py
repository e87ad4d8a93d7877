"""Held-out sets: parse a file into a DataFrame, then check it with Great Expectations before any model
work. A task type declares its `HeldoutSchema`; the GX suite is built from it, so a new task type brings
its own columns without new validation code."""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from quantgate.errors import ConfigError, HeldoutValidationError
from quantgate.settings import HeldoutLimits

ColumnKind = Literal["text", "score", "label", "number", "integer", "array"]  # array: decoded pixels
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]
NUMBER_TYPES = [*INTEGER_TYPES, "float16", "float32", "float64"]
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max


class HeldoutSchema(BaseModel):
    columns: dict[str, ColumnKind]
    # Columns a file may have (a classifier's second sentence): checked like `columns` when present.
    optional_columns: dict[str, ColumnKind] = Field(default_factory=dict)
    score_min: float = 0.0
    score_max: float = 5.0
    min_rows: int = Field(10, ge=1)
    max_rows: int = Field(1_000_000, ge=1)
    max_text_chars: int = Field(10_000, ge=1)
    unique_columns: list[str] = Field(default_factory=list)
    # Share of rows that belong to a group of identical rows. Real sets carry a few (STS-B dev: 2 pairs,
    # 4 rows of 1,500); many mean a concatenation bug that would double-count examples.
    max_duplicate_fraction: float = Field(0.02, ge=0, le=1)
    # Columns that name a subgroup of rows (STS-B's genre): each gets its own drop and interval, and the
    # max-slice-drop gate. Not part of a row's identity (the calibration split hashes `columns` only).
    slice_columns: list[str] = Field(default_factory=list)
    # Columns whose values must lie in [min, max]: a tabular feature declared int8 holds -128..127, one
    # declared bool 0..1 (a lying features.json would otherwise be promoted with the data).
    value_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)


class ValidationOutcome(BaseModel):
    success: bool
    rows: int
    failures: list[str]
    statistics: dict[str, Any]
    result: dict[str, Any] = Field(description="the GX validation result as JSON")
    data_docs_dir: Path | None = Field(None, description="local GX Data Docs site of this validation")
    data_docs: list[str] = Field(default_factory=list, description="its HTML pages, relative paths")


# --- bounds ------------------------------------------------------------------------------------------------


def heldout_limits() -> HeldoutLimits:
    """The bounds in force, from QUANTGATE_* (a reader is called by `register` and by a run's validate
    task with only the file's path: each reads the environment of the process that parses the file)."""
    from pydantic import ValidationError

    try:
        return HeldoutLimits()
    except ValidationError as exc:
        bad = "; ".join(f"QUANTGATE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad held-out limit setting ({bad}): set a positive whole number") from None


def too_large(
    name: str, what: str, measured: int, setting: str, limits: HeldoutLimits
) -> HeldoutValidationError:
    """The refusal of a held-out file that would cost more than a bound: the file, what was measured, the
    bound and the variable that raises it."""
    limit = getattr(limits, setting)
    variable = f"QUANTGATE_{setting.upper()}"
    return HeldoutValidationError(
        f"held-out file {name}: {what} {measured:,} is above the limit {limit:,} ({variable}); refused "
        f"before decoding. Use a smaller set, or set {variable} higher if the set is meant to be this large",
        [f"{setting}: {measured} > {limit}"],
    )


def check_bound(name: str, what: str, measured: int, setting: str, limits: HeldoutLimits) -> None:
    if measured > getattr(limits, setting):
        raise too_large(name, what, measured, setting, limits)


def check_file_size(path: Path, limits: HeldoutLimits) -> None:
    """Every held-out file first: its size on disk bounds what any reader can build from it."""
    check_bound(path.name, "size on disk (bytes)", path.stat().st_size, "max_heldout_bytes", limits)


# --- parsing -----------------------------------------------------------------------------------------------


def read_utf8(path: Path, limits: HeldoutLimits | None = None) -> str:
    check_file_size(path, limits or heldout_limits())
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeldoutValidationError(
            f"held-out file {path.name} is not UTF-8 (bad byte at offset {exc.start}): re-save it as UTF-8",
            [f"encoding: invalid UTF-8 at byte {exc.start}"],
        ) from None


def iter_lines(text: str) -> Iterator[str]:
    """The lines of `text` (split on "\n", as str.split would) one at a time: str.split or a StringIO
    (which holds 4 bytes per character) would build a copy of the whole file before any bound is checked."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def load_headed_tsv(path: Path) -> pd.DataFrame:
    """A tab-separated file with a header line (SST-2's `sentence<TAB>label`), no quoting: sentences
    contain quotes. Every value stays a string (labels may be names or indices); a row with too few
    fields keeps None in the missing columns and one with too many is refused, so the GX suite or this
    reader names it instead of a guess."""
    limits = heldout_limits()
    text = read_utf8(path, limits)
    rows = []
    for r in csv.reader(iter_lines(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        if r and r != [""]:
            # the header line is not a row
            check_bound(path.name, "rows (at least)", len(rows), "max_heldout_rows", limits)
            rows.append(r)
    if not rows:
        raise HeldoutValidationError(f"held-out file {path.name} is empty", ["empty file"])
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise HeldoutValidationError(
            f"held-out file {path.name}: the header line {header} repeats a column name", ["duplicate header"]
        )
    records = []
    for line, fields in enumerate(rows[1:], start=2):
        if len(fields) > len(header):
            raise HeldoutValidationError(
                f"held-out file {path.name} line {line} has {len(fields)} fields, the header {len(header)}: "
                "a tab inside a sentence? Remove it and register a new version",
                [f"line {line}: {len(fields)} fields for {len(header)} columns"],
            )
        records.append(dict(zip(header, fields + [None] * (len(header) - len(fields)), strict=True)))
    return pd.DataFrame.from_records(records, columns=header)


# A table cell costs at least 8 bytes decoded (float64 / int64): a bound on rows x columns before reading.
CELL_BYTES = 8


def _read_parquet_bounded(path: Path, limits: HeldoutLimits) -> pd.DataFrame:
    """Rows and columns come from the Parquet footer, before any column is decoded (a run-length encoded
    column of a billion zeros is a few kilobytes on disk)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    check_bound(path.name, "rows", meta.num_rows, "max_heldout_rows", limits)
    cells = meta.num_rows * meta.num_columns
    check_bound(path.name, f"decoded bytes (at least {CELL_BYTES} per cell)", cells * CELL_BYTES,
                "max_heldout_bytes", limits)  # fmt: skip
    return pd.read_parquet(path)


def _read_csv_bounded(path: Path, limits: HeldoutLimits) -> pd.DataFrame:
    """At most one row past each bound is parsed: the header gives the column count, so rows x columns
    is bounded as well as rows (a short wide line repeated is a cheap file and a huge frame)."""
    import csv

    with path.open(encoding="utf-8", newline="") as fh:
        header = next(csv.reader([fh.readline(limits.max_heldout_bytes)]), [])
    columns = max(1, len(header))
    by_bytes = limits.max_heldout_bytes // (CELL_BYTES * columns)
    cap = min(limits.max_heldout_rows, by_bytes)
    frame = pd.read_csv(path, encoding="utf-8", nrows=cap + 1)
    check_bound(path.name, "rows (at least)", len(frame), "max_heldout_rows", limits)
    check_bound(path.name, f"decoded bytes (at least {CELL_BYTES} per cell, {columns} columns)",
                len(frame) * columns * CELL_BYTES, "max_heldout_bytes", limits)  # fmt: skip
    return frame


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet table (tabular held-out sets), bounded before it is decoded."""
    limits = heldout_limits()
    check_file_size(path, limits)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return _read_parquet_bounded(path, limits)
    return _read_csv_bounded(path, limits)


def pack_folder(folder: Path, out_dir: Path) -> Path:
    """A held-out set given as a folder (images, one sub-folder per class) as one deterministic tar: sorted
    regular files, no owner, no time, so the same folder always has the same checksum. A symbolic link
    is refused (it could point anywhere on the registering machine)."""
    import tarfile

    files = sorted(p for p in folder.rglob("*") if not p.is_dir())
    links = [p for p in files if p.is_symlink() or not p.is_file()]
    if links:
        raise HeldoutValidationError(
            f"held-out folder {folder.name} holds {len(links)} symbolic links or special files (e.g. "
            f"{links[0].relative_to(folder)}): copy the real files in",
            ["symbolic link in held-out folder"],
        )
    if not files:
        raise HeldoutValidationError(f"held-out folder {folder} is empty", ["empty folder"])
    # Refused before a byte is copied into the tar (which the reader would refuse by its size anyway).
    check_bound(folder.name, "total size of its files (bytes)", sum(p.stat().st_size for p in files),
                "max_heldout_bytes", heldout_limits())  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{folder.name}.tar"
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return target


# --- validation with Great Expectations -----------------------------------------------------------------


def _expectations(schema: HeldoutSchema, present: set[str] | frozenset[str] = frozenset()) -> list[Any]:
    import great_expectations as gx

    exp = gx.expectations
    optional = {c: k for c, k in schema.optional_columns.items() if c in present}
    out: list[Any] = [
        exp.ExpectTableColumnsToMatchSet(
            column_set=[*schema.columns, *optional, *schema.slice_columns], exact_match=True
        ),
        exp.ExpectTableRowCountToBeBetween(min_value=schema.min_rows, max_value=schema.max_rows),
    ]
    for column in schema.slice_columns:
        out.append(exp.ExpectColumnValuesToNotBeNull(column=column))
    for column, kind in (schema.columns | optional).items():
        out.append(exp.ExpectColumnValuesToNotBeNull(column=column))
        if kind == "text":
            # At least one non-space character: an empty or blank sentence has no meaning to embed.
            out.append(exp.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"))
            out.append(
                exp.ExpectColumnValueLengthsToBeBetween(
                    column=column, min_value=1, max_value=schema.max_text_chars
                )
            )
        elif kind in ("number", "integer"):
            # A feature column: numbers of the declared kind (a stray text cell makes the column text).
            out.append(
                exp.ExpectColumnValuesToBeInTypeList(
                    column=column, type_list=INTEGER_TYPES if kind == "integer" else NUMBER_TYPES
                )
            )
            # Finite in float32, what the model reads: inf (or 1e39, which becomes inf) fails here, not as
            # a ValueError inside scikit-learn or ONNX Runtime.
            out.append(
                exp.ExpectColumnValuesToBeBetween(
                    column=column, min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX
                )
            )
        elif kind == "score":
            out.append(
                exp.ExpectColumnValuesToBeBetween(
                    column=column, min_value=schema.score_min, max_value=schema.score_max
                )
            )
    for column, (low, high) in schema.value_ranges.items():
        out.append(exp.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
    if len(schema.unique_columns) == 1:
        out.append(
            exp.ExpectColumnValuesToBeUnique(
                column=schema.unique_columns[0], mostly=1.0 - schema.max_duplicate_fraction
            )
        )
    elif schema.unique_columns:
        out.append(
            exp.ExpectCompoundColumnsToBeUnique(
                column_list=schema.unique_columns, mostly=1.0 - schema.max_duplicate_fraction
            )
        )
    return out


def _describe_failure(res: dict[str, Any]) -> str:
    cfg = res.get("expectation_config", {})
    kwargs = {k: v for k, v in cfg.get("kwargs", {}).items() if k not in {"batch_id"}}
    column = kwargs.pop("column", None)
    result = res.get("result", {})
    where = f"column {column!r}: " if column else ""
    detail = ""
    if "unexpected_count" in result:
        sample = result.get("partial_unexpected_list", [])[:3]
        detail = f" ({result['unexpected_count']} bad values, e.g. {sample})"
    elif "observed_value" in result:
        detail = f" (observed {result['observed_value']})"
    return f"{where}{cfg.get('type', '?')} {kwargs}{detail}"


def _escaped(value: Any) -> Any:
    """Every string inside a GX result, HTML-escaped (dict keys too), for rendering only."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {_escaped(k) if isinstance(k, str) else k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_escaped(v) for v in value)
    return value


def _view(name: str) -> dict[str, str]:
    return {"module_name": "quantgate.datadocs_views", "class_name": name}


def validate_heldout(
    df: pd.DataFrame, schema: HeldoutSchema, name: str = "heldout", docs_dir: Path | None = None
) -> ValidationOutcome:
    """Run the schema's GX suite on the frame. With `docs_dir`, a checkpoint also renders GX Data Docs
    (the suite and this validation's result, as HTML) into it, for people to open from the run's report."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars from inside a Prefect task would flood the run logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            "quantgate",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                # Page views that compile GX's templates once per process (quantgate/datadocs_views.py).
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "view": _view("IndexPageView"),
                },
                "site_section_builders": {
                    section: {"view": _view("PageView")} for section in ("expectations", "validations")
                },
            },
        )
    source = context.data_sources.add_pandas(name="heldout")
    batch_def = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite"))
    for expectation in _expectations(schema, set(df.columns)):
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-validation", data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{name}-checkpoint",
            validation_definitions=[validation],
            result_format="SUMMARY",
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": df})
    (validation_result,) = run.run_results.values()
    result = validation_result.to_json_dict()
    if docs_dir is not None:
        # GX's renderer puts unexpected values into the HTML as they are: a held-out sentence such as
        # "<script>…" would run in the browser of whoever opens the Data Docs. Render from a copy of the
        # result whose sample values are HTML-escaped (the run's own report keeps the raw values).
        for identifier, suite_result in run.run_results.items():
            for res in suite_result.results:
                res.result = _escaped(res.result)
            context.validation_results_store.set(identifier, suite_result)
        UpdateDataDocsAction(name="data-docs", site_names=["quantgate"]).run(run)
    failures = [_describe_failure(r) for r in result["results"] if not r["success"]]
    pages = sorted(str(p.relative_to(docs_dir)) for p in docs_dir.rglob("*.html")) if docs_dir else []
    return ValidationOutcome(
        success=bool(result["success"]),
        rows=len(df),
        failures=failures,
        statistics=result.get("statistics", {}),
        result=result,
        data_docs_dir=docs_dir,
        data_docs=pages,
    )


def require_valid(outcome: ValidationOutcome, filename: str) -> None:
    if not outcome.success:
        listed = "; ".join(outcome.failures)
        raise HeldoutValidationError(
            f"held-out set {filename} failed {len(outcome.failures)} data check(s): {listed}. "
            "Fix the file and register a new version.",
            outcome.failures,
        )


class HeldoutSplit(BaseModel):
    model_config = {"arbitrary_types_allowed": True}

    calibration: pd.DataFrame
    evaluation: pd.DataFrame
    evaluation_available: int = 0  # rows left for evaluation before the cap

    def summary(self) -> dict[str, int]:
        return {
            "calibration_rows": len(self.calibration),
            "evaluation_rows": len(self.evaluation),
            "evaluation_rows_available": max(self.evaluation_available, len(self.evaluation)),
        }


def split_heldout(
    df: pd.DataFrame,
    calibration_rows: int,
    max_eval_rows: int | None = None,
    key_columns: list[str] | None = None,
) -> HeldoutSplit:
    """Calibration rows (static quantization ranges, node sensitivity) and evaluation rows (every gate
    metric) never overlap: a recipe tuned on the rows it is judged on would be graded on its homework.
    The split is a pure function of row content (sha256 order), so every run and every re-run of a
    version uses the same rows, whatever order the file lists them in. Rows with identical content land
    together, on one side only."""
    import hashlib

    if calibration_rows < 0:
        raise ValueError(f"calibration_rows must be >= 0, got {calibration_rows}")
    content = df[key_columns] if key_columns else df
    keys = content.astype(str).agg("\x1f".join, axis=1).map(lambda s: hashlib.sha256(s.encode()).hexdigest())
    order = keys.sort_values(kind="stable")
    # Keep at least half of the set for evaluation: the gates need the evidence more than calibration.
    n = min(calibration_rows, len(df) // 2)
    if n and n < len(order) and order.iloc[n - 1] == order.iloc[n]:
        n = int((order < order.iloc[n]).sum())  # do not split a group of identical rows
    calib_idx = order.index[:n]
    rest = order.index[n:]
    # The evaluation cap bounds the reference and every candidate's scoring: a sample fixed by the same
    # content hash (so re-runs score the same rows), kept in file order.
    chosen = rest if max_eval_rows is None else rest[:max_eval_rows]
    calibration = df.loc[calib_idx].reset_index(drop=True)
    evaluation = df.loc[sorted(chosen)].reset_index(drop=True)
    # What a task type keeps beside the rows (a retrieval set's corpus) belongs to both sides.
    calibration.attrs, evaluation.attrs = dict(df.attrs), dict(df.attrs)
    return HeldoutSplit(calibration=calibration, evaluation=evaluation, evaluation_available=len(rest))
