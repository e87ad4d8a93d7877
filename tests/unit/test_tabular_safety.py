"""Issue #20 on the tabular family: a `model.skops` whose reduce node names a plain function re-exported
by a scikit-learn module is refused before skops builds anything (the payloads really ran on the code
before the fix: a file deleted, a folder created, a marker written by a subprocess and by Python source),
real scikit-learn classifiers still load without --allow-pickle, and a features.json that lies about its
dtypes is refused with the columns, the declared dtype and a value."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from quantgate.errors import HeldoutValidationError, InvalidModelError
from quantgate.families.tabular import (
    SOURCE_DIR,
    dtype_mismatches,
    is_trusted_sklearn_type,
    load_sklearn,
)
from quantgate.heldout import validate_heldout
from quantgate.tasktypes import get_task_type
from tests.hostile_skops import PAYLOADS, inject, scene, untouched

TASK = get_task_type("tabular")


@pytest.fixture(scope="module")
def cancer_logistic(tmp_path_factory):
    from benchmarks.train import train_tabular

    return train_tabular(tmp_path_factory.mktemp("cancer"), "logistic")


def _hostile_copy(model_dir, tmp_path, build):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    scratch = scene(tmp_path / "scratch")
    inject(folder / "model.skops", build(scratch))
    return folder, scratch


# --- 1. code execution from model.skops -------------------------------------------------------------------


@pytest.mark.parametrize(("case", "typename", "build"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_a_skops_file_calling_a_function_from_a_sklearn_module_is_refused_by_name_and_nothing_runs(
    cancer_logistic, tmp_path, case, typename, build
):
    folder, scratch = _hostile_copy(cancer_logistic[0], tmp_path, build)
    with pytest.raises(InvalidModelError, match=re.escape(typename)) as refused:
        TASK.check_model(folder)
    assert "--allow-pickle only if you trust its source" in str(refused.value)
    assert untouched(scratch), sorted(p.name for p in scratch.iterdir())


def test_the_same_payload_is_refused_by_the_flows_export_before_skl2onnx_sees_it(cancer_logistic, tmp_path):
    model_dir, heldout = cancer_logistic
    _, typename, build = PAYLOADS[2]  # subprocess.check_output writing a marker
    folder, scratch = _hostile_copy(model_dir, tmp_path, build)
    with pytest.raises(InvalidModelError, match=re.escape(typename)):
        TASK.export(folder, tmp_path / "export", pd.read_csv(heldout), atol=1e-4)
    assert untouched(scratch)
    assert not (tmp_path / "export" / "model.onnx").exists()


def test_the_exports_copy_of_the_model_is_checked_again_when_the_reference_loads_it(
    cancer_logistic, tmp_path
):
    """Tabular.reference used to trust whatever the export's copy listed."""
    from quantgate.backends import Servable

    model_dir, heldout = cancer_logistic
    frame = pd.read_csv(heldout)
    exported = TASK.export(model_dir, tmp_path / "export", frame, atol=1e-4)
    assets = exported.onnx_path.parent / "preprocessor"
    TASK.reference(Servable(exported.onnx_path), assets, frame, 1)  # the clean copy loads
    _, typename, build = PAYLOADS[0]  # os.remove
    scratch = scene(tmp_path / "scratch")
    inject(exported.onnx_path.parent / SOURCE_DIR / "model.skops", build(scratch))
    with pytest.raises(InvalidModelError, match=re.escape(typename)):
        TASK.reference(Servable(exported.onnx_path), assets, frame, 1)
    assert untouched(scratch)


def _fitted(kind: str):
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    model = {
        "logistic-pipeline": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "mlp-adam-pipeline": lambda: make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=30)),
        "mlp-sgd": lambda: MLPClassifier((8,), solver="sgd", max_iter=10),
        "random-forest": lambda: RandomForestClassifier(n_estimators=3, random_state=0),
        "extra-trees": lambda: ExtraTreesClassifier(n_estimators=3, random_state=0),
        "gradient-boosting": lambda: GradientBoostingClassifier(n_estimators=3, random_state=0),
        "sgd-log-loss": lambda: SGDClassifier(loss="log_loss", random_state=0),
        "one-vs-rest": lambda: OneVsRestClassifier(LogisticRegression(max_iter=500)),
        "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(max_iter=3),
    }[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few iterations on purpose: ConvergenceWarning
        return model.fit(x, y), x


LEGIT = [
    "logistic-pipeline",
    "mlp-adam-pipeline",
    "mlp-sgd",
    "random-forest",
    "extra-trees",
    "gradient-boosting",
    "sgd-log-loss",
    "one-vs-rest",
]


@pytest.mark.parametrize("kind", LEGIT)
def test_real_scikit_learn_classifiers_load_without_allow_pickle(tmp_path, kind):
    import skops.io as sio

    model, x = _fitted(kind)
    sio.dump(model, tmp_path / "model.skops")
    loaded = load_sklearn(tmp_path, allow_pickle=False)
    np.testing.assert_allclose(loaded.predict_proba(x[:20]), model.predict_proba(x[:20]))


def test_hist_gradient_boosting_needs_allow_pickle_as_skops_advises(tmp_path):
    """skops leaves TreePredictor untrusted (raw node indices that predict() follows unchecked); so does
    quantgate. The user who trusts the file says so."""
    import skops.io as sio

    model, x = _fitted("hist-gradient-boosting")
    sio.dump(model, tmp_path / "model.skops")
    with pytest.raises(InvalidModelError, match=r"predictor\.TreePredictor"):
        load_sklearn(tmp_path, allow_pickle=False)
    assert load_sklearn(tmp_path, allow_pickle=True).predict_proba(x[:5]).shape == (5, 2)


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer", True),
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.multiclass._ConstantPredictor", True),  # a private estimator class
        ("sklearn.datasets._lfw.remove", False),  # os.remove
        ("sklearn.utils._testing.check_output", False),  # subprocess.check_output
        ("sklearn.setup_module", False),  # a function of scikit-learn's own
        ("sklearn.utils.Bunch", False),  # a class, not an estimator
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", False),
        ("sklearn.tests.test_base.T", False),  # scikit-learn's bundled tests are never imported
        ("sklearn.no_such_module.Thing", False),
        ("os.remove", False),
        ("sklearnx.Thing", False),
        ("sklearn.linear_model._logistic.LogisticRegression.fit", False),  # a method node's name
    ],
)
def test_only_scikit_learn_estimator_and_state_classes_are_trusted(name, trusted):
    assert is_trusted_sklearn_type(name) is trusted


# --- 3. a features.json that lies about its dtypes --------------------------------------------------------


def _declare(model_dir, tmp_path, dtypes: dict[str, str]):
    folder = tmp_path / "declared"
    shutil.copytree(model_dir, folder)
    data = json.loads((folder / "features.json").read_text())
    for f in data["features"]:
        f["dtype"] = dtypes.get(f["name"], dtypes.get("*", f["dtype"]))
    (folder / "features.json").write_text(json.dumps(data))
    return folder


def test_thirty_float_columns_declared_bool_are_refused_naming_columns_dtype_and_a_value(
    cancer_logistic, tmp_path
):
    model_dir, heldout = cancer_logistic
    folder = _declare(model_dir, tmp_path, {"*": "bool"})
    frame = pd.read_csv(heldout)
    with pytest.raises(HeldoutValidationError) as refused:
        TASK.check_heldout(folder, frame)
    message = str(refused.value)
    assert "declared bool holds" in message
    first = frame["mean radius"].iloc[0].item()  # the offending value is one the file really holds
    assert f"'mean radius' declared bool holds {first!r}" in message
    assert "(and 25 more)" in message  # 30 columns: five shown, all listed
    assert len(refused.value.failures) == 30
    assert "Declare the dtype the model was trained on" in message
    # The flow's GX suite refuses the same file (whole-number kind, range 0..1).
    outcome = validate_heldout(frame, TASK.heldout_schema(folder))
    assert not outcome.success
    assert any("'mean radius'" in f and "be_between" in f for f in outcome.failures), outcome.failures
    # And the export, whose features.json is the promoted schema, never writes it.
    with pytest.raises(HeldoutValidationError):
        TASK.export(folder, tmp_path / "export", frame, atol=1e-4)
    assert not (tmp_path / "export" / "preprocessor").exists()


MISMATCHES = [
    ("bool", [0.0, 1.0, 0.5], 0.5),  # 0.5 is fractional
    ("bool", [0, 1, 2], 2),  # whole, out of range
    ("int64", [1.0, 2.5, 3.0], 2.5),  # fractional
    ("int64", [1.0, 2.0, 3.0], 1.0),  # whole numbers written as decimals: not integers to GX either
    ("int8", [1, 127, 128], 128),
    ("uint8", [0, -1, 3], -1),
    ("int16", [0, 40000, 1], 40000),
    ("float32", [0.0, 1e39, 1.0], 1e39),  # inf once cast for the ONNX model
]


@pytest.mark.parametrize(("declared", "values", "offending"), MISMATCHES)
def test_a_declared_dtype_the_values_do_not_fit_is_named_with_a_value(declared, values, offending):
    frame = pd.DataFrame({"a": values, "b": [1.5, 2.5, 3.5]})
    assert dtype_mismatches(frame, {"a": declared, "b": "float64"}) == {"a": (declared, offending)}


def _schema_for(tmp_path, declared: str):
    (tmp_path / "features.json").write_text(json.dumps({"features": [{"name": "a", "dtype": declared}]}))
    return TASK.heldout_schema(tmp_path)


def _table(values) -> pd.DataFrame:
    column = pd.Series(values * 8)  # 24 rows: the tabular schema's min_rows is 20
    return pd.DataFrame({"a": column, "label": [0, 1] * (len(column) // 2)})


@pytest.mark.parametrize(("declared", "values", "offending"), MISMATCHES)
def test_the_flows_gx_suite_refuses_what_register_refuses(tmp_path, declared, values, offending):
    outcome = validate_heldout(_table(values), _schema_for(tmp_path, declared))
    assert not outcome.success
    assert any("'a'" in f for f in outcome.failures), outcome.failures


@pytest.mark.parametrize(
    ("declared", "values"),
    [
        ("bool", [True, False, True]),
        ("bool", [0, 1, 1]),
        ("int8", [-128, 0, 127]),
        ("uint8", [0, 255, 3]),
        ("int64", [-5, 10**12, 0]),
        ("float64", [1, 2, 3]),  # integers are floats too
        ("float32", [0.5, -3.25, 1e30]),
    ],
)
def test_a_truthful_declaration_passes_at_register_and_in_the_gx_suite(tmp_path, declared, values):
    assert dtype_mismatches(pd.DataFrame({"a": values}), {"a": declared}) == {}
    outcome = validate_heldout(_table(values), _schema_for(tmp_path, declared))
    assert outcome.success, outcome.failures


def test_a_truthful_declaration_passes_the_gx_suite_and_the_export_promotes_it(cancer_logistic, tmp_path):
    model_dir, heldout = cancer_logistic
    frame = pd.read_csv(heldout)
    TASK.check_heldout(model_dir, frame)
    assert validate_heldout(frame, TASK.heldout_schema(model_dir)).success
    exported = TASK.export(model_dir, tmp_path / "export", frame, atol=1e-4)
    promoted = exported.onnx_path.parent / "preprocessor" / "features.json"
    assert promoted.read_bytes() == (model_dir / "features.json").read_bytes()


# --- trees: trusted as a class, their node arrays checked ---------------------------------------------------


def _crafted_tree(tmp_path, change: str):
    """A fitted forest whose first tree was edited the way a hostile file would (skops.io.exceptions:
    scikit-learn follows these indices at predict() without bounds checks)."""
    import skops.io as sio

    model, _ = _fitted("random-forest")
    tree = model.estimators_[0].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    internal = int(np.flatnonzero(nodes["left_child"] != -1)[0])
    if change == "child-beyond-the-last-node":
        nodes["right_child"][internal] = 10**6
    elif change == "child-loops-back":
        nodes["left_child"][internal] = internal
    elif change == "feature-beyond-the-columns":
        nodes["feature"][internal] = 31
    elif change == "leaf-with-one-child":
        leaf = int(np.flatnonzero(nodes["left_child"] == -1)[0])
        nodes["right_child"][leaf] = leaf + 1
    if change == "no-nodes":  # predict() would read node 0 of an empty array
        state = {**state, "nodes": nodes[:0].copy(), "values": state["values"][:0].copy(), "node_count": 0}
    tree.__setstate__({**state, "nodes": nodes} if change != "no-nodes" else state)
    sio.dump(model, tmp_path / "model.skops")
    return tmp_path


TREE_CASES = [
    ("child-beyond-the-last-node", "a child beyond the last node"),
    ("child-loops-back", "a child that is not a later node"),
    ("feature-beyond-the-columns", "a feature index outside 0..29"),
    ("leaf-with-one-child", "a leaf with one child"),
    ("no-nodes", "claims 0 nodes"),
]


@pytest.mark.parametrize(("change", "words"), TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_a_tree_whose_nodes_predict_would_follow_out_of_bounds_is_refused(tmp_path, change, words):
    folder = _crafted_tree(tmp_path, change)
    with pytest.raises(InvalidModelError, match=re.escape(words)):
        load_sklearn(folder, allow_pickle=False)


# --- --allow-pickle: the run's own word, not another run's ------------------------------------------------


def _vouched_folder(cancer_logistic, tmp_path):
    """The logistic pipeline with one attribute of a type that is no scikit-learn class: loading it needs
    --allow-pickle (the registering user's word), and skl2onnx converts the model as usual."""
    from fractions import Fraction

    import skops.io as sio

    model_dir, _ = cancer_logistic
    skops_file = model_dir / "model.skops"
    model = sio.load(skops_file, trusted=sio.get_untrusted_types(file=skops_file))
    model.vouched_note_ = Fraction(1, 3)
    folder = tmp_path / "vouched-model"
    folder.mkdir()
    shutil.copy(model_dir / "features.json", folder)
    sio.dump(model, folder / "model.skops")
    return folder


def test_a_model_vouched_for_with_allow_pickle_is_loaded_the_same_way_by_the_reference(
    cancer_logistic, tmp_path
):
    """The reference of a run made with --allow-pickle loads the export's copy with it too; a copy exported
    without it stays strict."""
    from quantgate.backends import Servable

    folder = _vouched_folder(cancer_logistic, tmp_path)
    frame = pd.read_csv(cancer_logistic[1])
    with pytest.raises(InvalidModelError, match=r"fractions\.Fraction"):
        TASK.export(folder, tmp_path / "strict", frame, atol=1e-4)
    exported = TASK.export(folder, tmp_path / "vouched", frame, atol=1e-4, allow_pickle=True)
    assets = exported.onnx_path.parent / "preprocessor"
    reference = TASK.reference(Servable(exported.onnx_path), assets, frame, 1)
    assert reference.source_outputs.shape == (len(frame), 2)
    (exported.onnx_path.parent / SOURCE_DIR / "allow-pickle").unlink()  # as a run without it would see it
    with pytest.raises(InvalidModelError, match=r"the export's copy .*fractions\.Fraction"):
        TASK.reference(Servable(exported.onnx_path), assets, frame, 1)


def test_an_export_made_with_allow_pickle_is_never_reused_by_a_run_without_it(cancer_logistic, tmp_path):
    from prefect.logging import disable_run_logger

    from tasks.candidate import export

    folder = _vouched_folder(cancer_logistic, tmp_path)
    frame = pd.read_csv(cancer_logistic[1])
    args = (TASK, folder, frame, tmp_path / "cache", "c" * 64, 1e-4)
    with disable_run_logger():
        export.fn(*args, allow_pickle=True)
        with pytest.raises(InvalidModelError, match=r"fractions\.Fraction"):
            export.fn(*args, allow_pickle=False)  # a cache miss: loaded, and refused, again
