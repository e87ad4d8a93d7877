"""Tabular classifiers (scikit-learn).

Recognised by a `model.skops` file (skops' safe format) beside a `features.json` naming the feature
columns and their dtypes (`{"features": [{"name": "mean radius", "dtype": "float64"}, ...]}`). A joblib
or pickle file is refused unless `--allow-pickle`: loading one runs whatever code it holds; so is a skops
file holding types skops does not trust by default. Converted with skl2onnx (probabilities as a plain
tensor, no ZipMap). Held-out: CSV or Parquet with the feature columns and `label`.

Parity is measured against the original scikit-learn model's `predict_proba` (the write-ups'
parity_report.json, `--abs-tol 0.04 --mean-tol 0.01`), not only against the ONNX FP32 export: the
write-ups' check (the largest difference on the held-out rows within 0.04) stays a gate, as an export
sanity check, and the tail gate judges the share of rows that differ by more (upper Wilson bound), which
bounds new rows where the sample's largest difference does not. The classifier gates
(quantgate/families/classification.py) judge accuracy, label agreement, macro-F1 and calibration. A
tree ensemble converts to ONNX-ML tree ops that no backend quantizes: its run ends NotPromoted with reason
nothing-to-quantize.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable, open_session
from quantgate.bench import BenchReport, BenchSettings, run_benchmark
from quantgate.errors import ExportError, HeldoutValidationError, InvalidModelError
from quantgate.export import OPSET, ExportResult
from quantgate.families import classification as clf
from quantgate.gates import Gate, Limit, Thresholds, limit_value, tail_gate
from quantgate.heldout import HeldoutSchema
from quantgate.tasktypes import (
    Column,
    PlotAxis,
    Reference,
    TaskMetric,
    engines_for,
    register_task_type,
)

SKOPS = "model.skops"
PICKLES = ("model.joblib", "model.pkl", "model.pickle")
FEATURES = "features.json"
LABEL = "label"
SOURCE_DIR = "sklearn"  # the export's copy of the scikit-learn model: parity's reference, never promoted
INPUT = "features"
NUMERIC = {"float64", "float32", "int64", "int32", "int16", "int8", "uint8", "bool"}

LIMITS: tuple[Limit, ...] = (
    Limit(
        name="max_proba_abs_diff",
        default=0.04,
        gt=0,
        help="tabular: max |candidate - scikit-learn predict_proba| on the held-out rows (the write-ups' "
        "--abs-tol); a row past it counts against max_share_above_proba_abs_diff",
    ),
    # Tables are small (scikit-learn's breast-cancer test split: 171 rows, 107 evaluated once 64 calibrate):
    # 5 % is the smallest round share 73 rows can show with none beyond; 1 % would need 381.
    Limit(
        name="max_share_above_proba_abs_diff",
        default=0.05,
        gt=0,
        le=1,
        help="tabular: max share of rows beyond max_proba_abs_diff (upper 95% bound: a bound on new rows)",
    ),
    Limit(
        name="max_proba_mean_diff",
        default=0.01,
        gt=0,
        help="tabular: max mean |candidate - scikit-learn predict_proba| (the write-ups' --mean-tol)",
    ),
)


def read_features(model_dir: Path) -> dict[str, str]:
    """{column: dtype} from features.json, checked."""
    path = model_dir / FEATURES
    if not path.is_file():
        raise InvalidModelError(
            f"{model_dir} has no {FEATURES}: save the feature columns and their dtypes beside the model, "
            'e.g. {"features": [{"name": "age", "dtype": "float64"}]}'
        )
    try:
        items = json.loads(path.read_text())["features"]
        features = {str(f["name"]): str(f["dtype"]) for f in items}
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidModelError(
            f'{FEATURES} must be {{"features": [{{"name": ..., "dtype": ...}}, ...]}} ({exc!r})'
        ) from None
    if not features or len(features) != len(items):
        raise InvalidModelError(f"{FEATURES} names no features, or one twice: list each column once")
    bad = {k: v for k, v in features.items() if v not in NUMERIC}
    if bad:
        raise InvalidModelError(
            f"{FEATURES}: dtypes {bad} are not numeric ({sorted(NUMERIC)}): encode categorical columns in "
            "the model's pipeline and declare what it reads"
        )
    if LABEL in features:
        raise InvalidModelError(
            f"{FEATURES} lists {LABEL!r} as a feature: it is the held-out set's gold column"
        )
    return features


def load_sklearn(model_dir: Path, allow_pickle: bool) -> Any:
    """The estimator, loaded safely: skops with its default trusted types only (others refused by name),
    a pickle only with allow_pickle."""
    skops_file = model_dir / SKOPS
    if skops_file.is_file():
        import skops.io as sio

        try:
            listed = sio.get_untrusted_types(file=skops_file)
            # skops' default list leaves out some of scikit-learn's own state classes (MLP's
            # AdamOptimizer): scikit-learn's types are trusted like the library itself; anything else
            # (a custom class, a builtin function) is named and refused.
            untrusted = [t for t in listed if not t.startswith("sklearn.")]
            if untrusted and not allow_pickle:
                raise InvalidModelError(
                    f"{SKOPS} holds types skops does not trust by default: {untrusted}. Loading them can run "
                    "their code: pass --allow-pickle only if you trust its source"
                )
            return sio.load(skops_file, trusted=listed or None)
        except InvalidModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - skops raises anything on a corrupt file
            raise InvalidModelError(
                f"{SKOPS} is not a readable skops file ({type(exc).__name__}: {exc})"
            ) from None
    pickle_file = next((model_dir / p for p in PICKLES if (model_dir / p).is_file()), None)
    if pickle_file is None:
        raise InvalidModelError(
            f"{model_dir} has no {SKOPS}: save the model with skops.io.dump(model, '{SKOPS}')"
        )
    if not allow_pickle:
        raise InvalidModelError(
            f"only a pickle ({pickle_file.name}) was found: pickles can run code when loaded. Save the model "
            f"with skops.io.dump(model, '{SKOPS}'), or pass --allow-pickle if you trust its source"
        )
    import joblib

    return joblib.load(pickle_file)


class Tabular(clf.ProbabilityClassifier):
    name = "tabular"
    PARITY_LIMITS: ClassVar[tuple[str, str]] = ("max_proba_abs_diff", "max_proba_mean_diff")
    TAIL: ClassVar[tuple[str, str]] = ("max_proba_abs_diff", "share_above_proba_abs_diff")
    recognised_by = f"a scikit-learn model: {SKOPS} (or a pickle, with --allow-pickle) and {FEATURES}"
    heldout_format = "csv or parquet: the feature columns and label"
    schema = HeldoutSchema(columns={LABEL: "label"}, min_rows=20, max_duplicate_fraction=1.0)
    metric = TaskMetric(name="accuracy")
    # No transformer to fuse; MLPs take dynamic and static INT8 alike (the static ones on MatMul).
    default_recipes: ClassVar[tuple[str, ...]] = (
        "dynamic-int8",
        "dynamic-int8-per-channel",
        "dynamic-uint8-per-channel",
        "static-qdq-minmax",
        "static-qdq-entropy",
        "static-qdq-percentile",
    )
    limits: ClassVar[tuple[Limit, ...]] = (
        *(lim for lim in clf.LIMITS if lim not in clf.TAIL_LIMITS),  # its own tail is against scikit-learn
        *LIMITS,
    )
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="label_agreement"),
        Column(metric="macro_f1_drop"),
        Column(metric="ece_increase"),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(metric="label_agreement", label="label agreement with FP32", limit="min_label_agreement"),
    )
    export_samples = 256

    def gates(self, t: Thresholds) -> list[Gate]:
        tail = tail_gate(
            t,
            name="parity vs scikit-learn (tail)",
            metric="share_above_proba_abs_diff",
            per_row="max_proba_abs_diff",
            share="max_share_above_proba_abs_diff",
            below=False,
        )
        return [
            *clf.gates(t, tail=tail),
            # The write-ups' parity_report.json check, kept as it was: an export sanity check on the held-out
            # rows (and the write-ups' bar, benchmarks/families.py). It vouches for no unseen row; the tail
            # does. Without it, digits-mlp's dynamic-int8 passes with 11 of 476 rows past 0.04 (one by 0.16).
            Gate(
                name="parity vs scikit-learn (max)",
                metric="max_abs_diff",
                op="<=",
                limit=limit_value(t, "max_proba_abs_diff"),
                description="max |candidate - predict_proba| over the held-out rows: the write-ups' check",
            ),
            Gate(
                name="parity vs scikit-learn (mean)",
                metric="mean_abs_diff",
                op="<=",
                limit=limit_value(t, "max_proba_mean_diff"),
                description="mean |candidate - predict_proba| of the original scikit-learn model",
            ),
        ]

    def recognises(self, model_dir: Path) -> bool:
        return any((model_dir / f).is_file() for f in (SKOPS, *PICKLES))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        features = read_features(model_dir)
        model = load_sklearn(model_dir, allow_pickle)
        if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
            raise InvalidModelError(
                f"{type(model).__name__} is not a fitted classifier with predict_proba: quantgate's tabular "
                "task judges classifiers"
            )
        expected = getattr(model, "n_features_in_", len(features))
        if expected != len(features):
            raise InvalidModelError(
                f"the model reads {expected} features, {FEATURES} lists {len(features)}: save the list it "
                "was trained on"
            )
        return {
            "features": features,
            "classes": [str(c) for c in model.classes_],
            "type": type(model).__name__,
        }

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame) -> None:
        classes = self.check_model(model_dir, allow_pickle=True)["classes"]
        self._check_frame(heldout, read_features(model_dir), classes)

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        features = read_features(model_dir)
        kinds = {
            name: ("integer" if dtype.startswith(("int", "uint")) else "number")
            for name, dtype in features.items()
        }
        return self.schema.model_copy(update={"columns": {**kinds, LABEL: "label"}})

    def reads(self, heldout: Path) -> bool:
        return True  # no other task type recognises the same models

    def read_heldout(self, path: Path) -> pd.DataFrame:
        try:
            if path.suffix.lower() in {".parquet", ".pq"}:
                return pd.read_parquet(path)
            return pd.read_csv(path, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise HeldoutValidationError(
                f"held-out file {path.name} is not UTF-8 (bad byte at offset {exc.start}): re-save it as "
                "UTF-8",
                ["encoding"],
            ) from None
        except (ValueError, OSError, ImportError) as exc:
            raise HeldoutValidationError(
                f"held-out file {path.name} is not a readable CSV or Parquet table ({exc}): save it with "
                "DataFrame.to_csv(index=False) or to_parquet()",
                ["unreadable table"],
            ) from None

    @staticmethod
    def _check_frame(frame: pd.DataFrame, features: dict[str, str], classes: list[str]) -> None:
        missing = [c for c in [*features, LABEL] if c not in frame]
        if missing:
            raise HeldoutValidationError(
                f"held-out set lacks columns {missing} (the model reads {list(features)} and the gold column "
                f"{LABEL!r}): add them and register a new version",
                [f"missing columns {missing}"],
            )
        wrong = {c: str(frame[c].dtype) for c in features if not pd.api.types.is_numeric_dtype(frame[c])}
        if wrong:
            raise HeldoutValidationError(
                f"held-out feature columns {wrong} are not numeric (features.json declares "
                f"{ {c: features[c] for c in wrong} }): fix the values, e.g. a stray text cell",
                [f"non-numeric feature columns {sorted(wrong)}"],
            )
        empty = [c for c in [*features, LABEL] if frame[c].isna().any()]
        if empty:
            raise HeldoutValidationError(
                f"held-out columns {empty} have empty cells (or NA/n/a): a model cannot be judged on a row "
                "it cannot read; fill or drop those rows and register a new version",
                [f"empty cells in {empty}"],
            )
        unknown = sorted({str(v) for v in frame[LABEL].dropna()} - set(classes))
        if unknown:
            raise HeldoutValidationError(
                f"held-out labels {unknown[:8]} were never seen by the model (it knows {classes}): fix the "
                "held-out file or register the model it belongs to",
                [f"labels not in the model's classes: {unknown[:8]}"],
            )

    @staticmethod
    def _x(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
        return frame[features].to_numpy(dtype=np.float32)

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        import skops.io as sio
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        info = self.check_model(model_dir, allow_pickle)
        features = list(info["features"])
        model = load_sklearn(model_dir, allow_pickle)
        final = model.steps[-1][1] if hasattr(model, "steps") else model
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        try:
            proto = convert_sklearn(
                model,
                initial_types=[(INPUT, FloatTensorType([None, len(features)]))],
                options={id(final): {"zipmap": False}},
                target_opset={"": OPSET, "ai.onnx.ml": 3},
            )
        except Exception as exc:  # noqa: BLE001 - skl2onnx raises anything for an estimator it lacks
            raise ExportError(
                f"skl2onnx cannot convert {info['type']}: {type(exc).__name__}: {exc}"
            ) from None
        path.write_bytes(proto.SerializeToString())
        x = self._x(heldout, features)[: self.export_samples]
        expected = model.predict_proba(x)
        (got,) = open_session(Servable(path), 2).run(["probabilities"], {INPUT: x})
        diff = float(np.abs(expected - got).max())
        if not np.isfinite(diff) or diff > max(atol, 1e-5):
            raise ExportError(
                f"the ONNX conversion's probabilities differ from scikit-learn's by {diff:.3g} (> "
                f"export_atol {atol:g}): the conversion is wrong, not the quantization"
            )
        assets = out_dir / "preprocessor"
        assets.mkdir(exist_ok=True)
        shutil.copyfile(model_dir / FEATURES, assets / FEATURES)
        (assets / "classes.json").write_text(json.dumps(info["classes"]))
        source = out_dir / SOURCE_DIR
        source.mkdir(exist_ok=True)
        sio.dump(model, source / SKOPS)
        return ExportResult(
            onnx_path=path,
            tokenizer_files=sorted(assets.iterdir()),
            input_names=[INPUT],
            output_names=["label", "probabilities"],
            opset=OPSET,
            max_abs_diff_vs_torch={"probabilities": diff},
            parity_samples=len(x),
            size_bytes=path.stat().st_size,
        )

    @staticmethod
    def _meta(assets: Path) -> tuple[list[str], list[str]]:
        features = [f["name"] for f in json.loads((assets / FEATURES).read_text())["features"]]
        return features, json.loads((assets / "classes.json").read_text())

    def _gold(self, assets: Path, frame: pd.DataFrame) -> np.ndarray:
        features, classes = self._meta(assets)
        self._check_frame(frame, dict.fromkeys(features, "float64"), classes)
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[str(v)] for v in frame[LABEL]], dtype=np.int64)

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        features, _ = self._meta(assets)
        x = self._x(calibration, features)
        return [{INPUT: x[i : i + 16]} for i in range(0, len(x) - 15, 16)] or ([{INPUT: x}] if len(x) else [])

    def _proba(self, model: Servable, assets: Path, frame: pd.DataFrame, threads: int) -> np.ndarray:
        features, _ = self._meta(assets)
        (proba,) = open_session(model, threads).run(["probabilities"], {INPUT: self._x(frame, features)})
        return proba.astype(np.float64)

    def reference(self, fp32: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> Reference:
        """ONNX FP32's reference, plus scikit-learn's own probabilities: parity is judged against them."""
        import skops.io as sio

        start = time.perf_counter()
        reference = super().reference(fp32, assets, heldout, threads)
        source = fp32.path.parent / SOURCE_DIR / SKOPS  # the export's own copy, already accepted
        sklearn = sio.load(source, trusted=sio.get_untrusted_types(file=source) or None)
        features, _ = self._meta(assets)
        return reference.model_copy(
            update={
                "source_outputs": sklearn.predict_proba(self._x(heldout, features)).astype(np.float64),
                "seconds": time.perf_counter() - start,
            }
        )

    def _class_names(self, assets: Path) -> dict[int, str]:
        _, classes = self._meta(assets)
        return dict(enumerate(classes))

    def _example_texts(self, assets: Path, heldout: pd.DataFrame) -> list[str]:
        features, _ = self._meta(assets)
        return [
            ", ".join(f"{f}={v:g}" for f, v in zip(features, r, strict=True))
            for r in self._x(heldout, features)
        ]

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        features, _ = self._meta(assets)
        x = self._x(heldout, features)
        feeds = {INPUT: np.resize(x, (settings.batch, x.shape[1]))}
        return run_benchmark(engines_for(fp32, candidates, feeds, settings.threads), settings)


TABULAR = register_task_type(Tabular())
