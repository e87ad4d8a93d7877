"""Held-out sets: parse a file into a DataFrame, then check it with Great Expectations before any model
work. A task type declares its `HeldoutSchema`; the GX suite is built from it, so a new task type brings
its own columns without new validation code."""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from quantgate.errors import HeldoutValidationError

ColumnKind = Literal["text", "score", "label", "number", "integer", "array"]  # array: decoded pixels
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]
NUMBER_TYPES = [*INTEGER_TYPES, "float16", "float32", "float64"]


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


# --- parsing -----------------------------------------------------------------------------------------------


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeldoutValidationError(
            f"held-out file {path.name} is not UTF-8 (bad byte at offset {exc.start}): re-save it as UTF-8",
            [f"encoding: invalid UTF-8 at byte {exc.start}"],
        ) from None


def load_sts_tsv(path: Path) -> pd.DataFrame:
    """STS Benchmark layout: tab separated, no header, no quoting;
    `genre filename year score sentence1 sentence2 [extra fields...]`. Sentences contain '"', so quoting
    is off (csv.QUOTE_NONE). Rows with too few fields keep None in the missing columns, so the GX suite
    reports them instead of the parser guessing."""
    text = read_utf8(path)
    records = []
    for fields in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        if not fields or fields == [""]:
            continue
        padded = fields + [None] * (7 - len(fields))
        records.append(
            {"score": padded[4], "sentence1": padded[5], "sentence2": padded[6], "genre": padded[0]}
        )
    df = pd.DataFrame.from_records(records, columns=["score", "sentence1", "sentence2", "genre"])
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df


def load_headed_tsv(path: Path) -> pd.DataFrame:
    """A tab-separated file with a header line (SST-2's `sentence<TAB>label`), no quoting: sentences
    contain quotes. Every value stays a string (labels may be names or indices); a row with too few
    fields keeps None in the missing columns and one with too many is refused, so the GX suite or this
    reader names it instead of a guess."""
    text = read_utf8(path)
    rows = [
        r for r in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE) if r and r != [""]
    ]
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
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
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
