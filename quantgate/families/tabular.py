"""Tabular classifiers (scikit-learn).

Recognised by a `model.skops` file (skops' safe format) beside a `features.json` naming the feature
columns and their dtypes (`{"features": [{"name": "mean radius", "dtype": "float64"}, ...]}`). A joblib
or pickle file is refused unless `--allow-pickle`: loading one runs whatever code it holds; so is a skops
file holding a type that is neither trusted by skops by default nor one of scikit-learn's estimator or
state classes (`trusted_skops_types`: a function re-exported by a scikit-learn module is not). Converted
with skl2onnx (probabilities as a plain tensor, no ZipMap). Held-out: CSV or Parquet with the feature
columns and `label`.

The declared dtypes are checked against the held-out values (`dtype_mismatches`, at register, and by the
GX suite `heldout_schema` builds in the flow): a whole-number dtype needs integer values within its range,
bool 0/1. The promoted `preprocessor/features.json` is that declared, verified file.

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
from quantgate.bench import BenchReport, BenchSettings, ServingProfile, draw_requests, run_benchmark
from quantgate.errors import ExportError, HeldoutValidationError, InvalidModelError
from quantgate.export import OPSET, ExportResult
from quantgate.families import classification as clf
from quantgate.gates import GateSpec, Limit, judged_by, tail_spec
from quantgate.heldout import HeldoutSchema, read_table
from quantgate.tasktypes import (
    Column,
    PlotAxis,
    Reference,
    TaskMetric,
    engines_for,
    register_task_type,
    serving_settings,
)

SKOPS = "model.skops"
PICKLES = ("model.joblib", "model.pkl", "model.pickle")
FEATURES = "features.json"
LABEL = "label"
SOURCE_DIR = "sklearn"  # the export's copy of the scikit-learn model: parity's reference, never promoted
# Beside that copy when the export loaded the model with --allow-pickle: the reference then loads the copy
# the same way (an export made with it is cached apart, tasks/candidate.py, so no other run sees this).
VOUCHED = "allow-pickle"
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


def dtype_range(dtype: str) -> tuple[float, float] | None:
    """The values a declared dtype can hold: bool 0..1, an integer type its own range, float32 its finite
    range (a larger value becomes inf on the way into the ONNX model); float64 anything finite."""
    if dtype == "bool":
        return (0, 1)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return (int(info.min), int(info.max))
    if dtype == "float32":
        top = float(np.finfo(np.float32).max)
        return (-top, top)
    return None


def is_whole_dtype(dtype: str) -> bool:
    """Declared as whole numbers: the held-out column must be read as integers (or True/False), the way
    the GX suite's `integer` kind checks it in the flow."""
    return dtype == "bool" or dtype.startswith(("int", "uint"))


def dtype_mismatches(frame: pd.DataFrame, features: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """{column: (declared dtype, an offending value)} for each numeric feature column whose values are not
    what features.json declares: fractional or decimal-written numbers in a whole-number column, a value
    outside the dtype's range (17.99 in a bool column, 300 in an int8 one)."""
    bad: dict[str, tuple[str, Any]] = {}
    for column, dtype in features.items():
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values):
            continue  # named by the non-numeric check
        if is_whole_dtype(dtype) and not (
            pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values)
        ):
            fractional = values[values.notna() & (values != values.round())]
            sample = fractional if len(fractional) else values.dropna()
            if len(sample):  # an all-empty column is named by the empty-cell check
                bad[column] = (dtype, sample.iloc[0].item())
            continue
        bounds = dtype_range(dtype)
        if bounds is None:
            continue
        numbers = values.astype("float64") if pd.api.types.is_bool_dtype(values) else values
        outside = values[(numbers < bounds[0]) | (numbers > bounds[1])]
        if len(outside):
            bad[column] = (dtype, outside.iloc[0].item())
    return bad


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


# scikit-learn's own state classes that real classifiers hold and skops does not trust by default, each
# found by dumping the models benchmarks/train.py and the tests build and reading get_untrusted_types().
# Exact names of classes, never a prefix: a scikit-learn module also re-exports plain functions
# (`sklearn.datasets._lfw.remove` is os.remove, `sklearn.utils._testing.check_output` is subprocess's), and
# skops rebuilds a reduce node by calling `getattr(import_module(module), name)(*args)` (issue #20).
SKLEARN_STATE_CLASSES = frozenset(
    {
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",  # MLP*, solver="adam"
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",  # MLP*, solver="sgd"
        # Trees, forests, gradient boosting. skops leaves it out because a crafted file can hold node
        # indices that predict() follows unchecked; quantgate checks them after loading (check_tree_nodes).
        "sklearn.tree._tree.Tree",
    }
)
# Left out on purpose: HistGradientBoosting's TreePredictor (skops: raw node indices that predict() follows
# unchecked); such a model needs --allow-pickle, and would end nothing-to-quantize like any tree ensemble.


def is_trusted_sklearn_type(name: str) -> bool:
    """Whether a type a skops file lists (beyond skops' defaults) may be built without --allow-pickle: one
    of SKLEARN_STATE_CLASSES, or a class (never a function) that subclasses scikit-learn's BaseEstimator
    (private estimators such as a one-vs-rest's `_ConstantPredictor`)."""
    if name in SKLEARN_STATE_CLASSES:
        return True
    module, _, attr = name.rpartition(".")
    parts = module.split(".")
    # Importing one of scikit-learn's own modules to look at the name runs only scikit-learn's code; its
    # bundled tests and conftest are not part of the library a model needs.
    if parts[0] != "sklearn" or not attr or any(p in {"tests", "conftest"} for p in parts):
        return False
    import importlib
    import inspect

    from sklearn.base import BaseEstimator

    try:
        found = getattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - no such module or name: not a class we know
        return False
    return inspect.isclass(found) and issubclass(found, BaseEstimator)


def trusted_skops_types(skops_file: Path, allow_pickle: bool) -> list[str]:
    """The types to pass to skops.io.load: what the file lists beyond skops' defaults, once each is known
    to be a scikit-learn class (or allow_pickle says the user trusts the source). Refuses the file
    otherwise, naming the types: building them would call them."""
    import skops.io as sio

    listed = sorted(sio.get_untrusted_types(file=skops_file))
    refused = [t for t in listed if not is_trusted_sklearn_type(t)]
    if refused and not allow_pickle:
        raise InvalidModelError(
            f"{skops_file.name} holds types quantgate does not trust: {refused} (a function, or a class that "
            "is not a scikit-learn estimator or known state class; loading the file would call it). Save the "
            "model with scikit-learn's own classes only, or pass --allow-pickle only if you trust its source"
        )
    return listed


def _trees(obj: Any, width: int | None = None, seen: set[int] | None = None) -> list[tuple[Any, int | None]]:
    """Every sklearn.tree._tree.Tree inside a loaded model, each with the narrowest `n_features_in_` of
    the estimators above it (the width of the X its predict() is given, whatever the tree says)."""
    from sklearn.base import BaseEstimator
    from sklearn.tree._tree import Tree

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, Tree):
        return [(obj, width)]
    if isinstance(obj, BaseEstimator):
        declared = vars(obj).get("n_features_in_")
        if isinstance(declared, int | np.integer):
            width = int(declared) if width is None else min(width, int(declared))
        children: Any = list(vars(obj).values())
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple):
        children = obj
    elif isinstance(obj, np.ndarray) and obj.dtype == object:
        children = obj.ravel().tolist()
    else:
        return []
    return [t for child in children for t in _trees(child, width, seen)]


def check_tree_nodes(model: Any) -> None:
    """Refuse a tree whose node arrays predict() would follow out of bounds. scikit-learn indexes them
    without checks (skops leaves Tree untrusted for this reason, skops.io.exceptions.UNTRUSTED_TYPE_REASONS):
    no nodes at all, a child that is not a later node (out of range, or a loop), a feature index beyond
    the columns the model is given. Allowed with --allow-pickle: the user vouches for the file."""
    for number, (tree, width) in enumerate(_trees(model)):
        where = f"{SKOPS}: tree {number}"
        # The node arrays below are views of node_count nodes (scikit-learn clamps it to the stored ones).
        if not 1 <= tree.node_count <= tree.capacity:
            raise InvalidModelError(
                f"{where} claims {tree.node_count} nodes and stores {tree.capacity}: the file is corrupt or "
                "crafted; save the model again with skops.io.dump"
            )
        left, right, feature = tree.children_left, tree.children_right, tree.feature
        index = np.arange(tree.node_count)
        leaf = left == -1
        columns = tree.n_features if width is None else min(width, tree.n_features)
        problems = {
            "a leaf with one child": leaf != (right == -1),
            "a child that is not a later node": ~leaf & ((left <= index) | (right <= index)),
            "a child beyond the last node": ~leaf & ((left >= tree.node_count) | (right >= tree.node_count)),
            f"a feature index outside 0..{columns - 1}": ~leaf & ((feature < 0) | (feature >= columns)),
        }
        for problem, nodes in problems.items():
            if nodes.any():
                raise InvalidModelError(
                    f"{where} has {problem} (node {int(np.flatnonzero(nodes)[0])}): scikit-learn would read "
                    "outside the model's memory at predict time; save the model again with skops.io.dump, or "
                    "pass --allow-pickle only if you trust its source"
                )


def load_sklearn(model_dir: Path, allow_pickle: bool) -> Any:
    """The estimator, loaded safely: skops with its default trusted types plus scikit-learn's estimator
    and state classes (`trusted_skops_types`; anything else refused by name), a pickle only with
    allow_pickle."""
    skops_file = model_dir / SKOPS
    if skops_file.is_file():
        import skops.io as sio

        try:
            trusted = trusted_skops_types(skops_file, allow_pickle)
            model = sio.load(skops_file, trusted=trusted or None)
            if not allow_pickle:
                check_tree_nodes(model)
            return model
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
    packages: ClassVar[tuple[str, ...]] = ("scikit-learn", "skl2onnx", "skops")
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
    # Tables are mostly scored in batches (a nightly job, a feature pipeline): throughput at 64 rows a
    # request unless the registration declares its traffic.
    serving_default = ServingProfile(batch_sizes=[64], objective="throughput")

    gate_specs: ClassVar[tuple[GateSpec, ...]] = judged_by(
        evidence=(clf.BEATS_MAJORITY,),
        quality=(clf.LABEL_AGREEMENT, clf.MACRO_F1_DROP, clf.ECE_INCREASE),
        parity=(
            tail_spec(
                name="parity vs scikit-learn (tail)",
                metric="share_above_proba_abs_diff",
                per_row="max_proba_abs_diff",
                share="max_share_above_proba_abs_diff",
                tail="above",
            ),
            clf.MEAN_PROB_DIFF,
            # The write-ups' parity_report.json check, kept as it was: an export sanity check on the
            # held-out rows (and the write-ups' bar, benchmarks/families.py). It vouches for no unseen row;
            # the tail does. Without it, digits-mlp's dynamic-int8 passes with 11 of 476 rows past 0.04 (one
            # by 0.16).
            GateSpec(
                name="parity vs scikit-learn (max)",
                metric="max_abs_diff",
                op="<=",
                limit="max_proba_abs_diff",
                description="max |candidate - predict_proba| over the held-out rows: the write-ups' check",
            ),
            GateSpec(
                name="parity vs scikit-learn (mean)",
                metric="mean_abs_diff",
                op="<=",
                limit="max_proba_mean_diff",
                description="mean |candidate - predict_proba| of the original scikit-learn model",
            ),
        ),
    )

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

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        # Loaded again under the registrant's own --allow-pickle, never vouched for here.
        classes = self.check_model(model_dir, allow_pickle=allow_pickle)["classes"]
        self._check_frame(heldout, read_features(model_dir), classes)

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        features = read_features(model_dir)
        kinds = {name: ("integer" if is_whole_dtype(dtype) else "number") for name, dtype in features.items()}
        ranges = {name: r for name, dtype in features.items() if (r := dtype_range(dtype)) is not None}
        return self.schema.model_copy(update={"columns": {**kinds, LABEL: "label"}, "value_ranges": ranges})

    def reads(self, heldout: Path) -> bool:
        return True  # no other task type recognises the same models

    def read_heldout(self, path: Path) -> pd.DataFrame:
        try:
            return read_table(path)
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
        # The model reads float32: inf, and finite values past float32's range (which become inf), are a
        # ValueError deep inside scikit-learn and ONNX Runtime; name them here instead.
        limit = float(np.finfo(np.float32).max)
        huge = [c for c in features if (frame[c].astype(np.float64).abs() > limit).any()]
        if huge:
            rows = frame.index[(frame[huge].astype(np.float64).abs() > limit).any(axis=1)].tolist()
            raise HeldoutValidationError(
                f"held-out columns {huge} hold infinite values (or values beyond float32's range, "
                f"±{limit:.3g}) in rows {rows[:5]}: a model cannot be judged on them; fix or drop those rows "
                "and register a new version",
                [f"infinite values in {huge}"],
            )
        lying = dtype_mismatches(frame, features)
        if lying:
            shown = "; ".join(f"{c!r} declared {d} holds {v!r}" for c, (d, v) in list(lying.items())[:5])
            more = f" (and {len(lying) - 5} more)" if len(lying) > 5 else ""
            raise HeldoutValidationError(
                f"held-out feature columns {sorted(lying)} do not hold what {FEATURES} declares: {shown}"
                f"{more}. A whole-number dtype (int*, uint*, bool) needs integers written without a decimal "
                f"point, within its range. Declare the dtype the model was trained on (e.g. float64 for "
                f"decimals) in {FEATURES}, or fix the values, and register a new version",
                [f"{c}: declared {d}, holds {v!r}" for c, (d, v) in lying.items()],
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
        # features.json is promoted as the artifact's input schema (preprocessor/features.json): the data
        # must match it first (also checked at register and by the GX suite, heldout_schema).
        self._check_frame(heldout, info["features"], info["classes"])
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
        if allow_pickle:
            (source / VOUCHED).write_text("loaded with --allow-pickle: the user trusts this model's source\n")
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
        start = time.perf_counter()
        reference = super().reference(fp32, assets, heldout, threads)
        # The export's own copy: checked again like the registered file, with the run's own --allow-pickle
        # (a cache entry is a file on disk, and trusting whatever it lists would let a changed copy name
        # any function).
        source = fp32.path.parent / SOURCE_DIR
        try:
            sklearn = load_sklearn(source, allow_pickle=(source / VOUCHED).is_file())
        except InvalidModelError as exc:
            raise InvalidModelError(f"the export's copy of the scikit-learn model: {exc}") from None
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
        settings = serving_settings(self, settings)
        features, _ = self._meta(assets)
        x = self._x(heldout, features)
        requests = draw_requests(
            settings,
            len(x),
            lambda rows, pad_to: {INPUT: x[rows]},
            length_of=lambda feeds: int(feeds[INPUT].shape[0]),
        )
        return run_benchmark(engines_for(fp32, candidates, settings.threads), settings, requests)


TABULAR = register_task_type(Tabular())
