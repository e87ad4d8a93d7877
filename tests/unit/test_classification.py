"""The classifier families' metrics, held-out parsing and model recognition, on hand-made inputs whose
answers are known (or computed by scikit-learn, the reference implementation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from quantgate.errors import ConfigError, HeldoutValidationError
from quantgate.families import classification as clf
from quantgate.families.hf_text import label_ids
from quantgate.heldout import load_headed_tsv, validate_heldout
from quantgate.tasktypes import detect_task_type, get_task_type


def _onehot(labels, classes, confidence=0.9):
    p = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


def test_macro_f1_matches_scikit_learn_including_a_class_never_predicted():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, gold, rng.integers(0, 3, 300))  # class 3 rarely predicted
    assert clf.macro_f1(gold, pred, 4) == pytest.approx(f1_score(gold, pred, average="macro"))


def test_ece_of_a_model_that_is_right_exactly_as_often_as_it_is_sure_is_zero_and_overconfidence_shows():
    gold = np.array([0] * 8 + [1] * 2)
    proba = np.tile([0.8, 0.2], (10, 1))  # says class 0 with 0.8, right 8 times in 10
    assert clf.expected_calibration_error(gold, proba) == pytest.approx(0.0)
    sure = np.tile([0.99, 0.01], (10, 1))
    assert clf.expected_calibration_error(gold, sure) == pytest.approx(0.19)


def test_flips_are_counted_and_shown_first_even_when_accuracy_does_not_move():
    gold = np.array([0, 1] * 100)
    fp32 = _onehot(gold, 2)
    cand = fp32.copy()
    # Two right answers flip to wrong ones, one row only loses confidence.
    cand[0] = [0.4, 0.6]  # was right (0), now wrong
    cand[3] = [0.45, 0.55]  # stays right (1) but less sure
    cand[5] = [0.6, 0.4]  # was right (1), now wrong
    scores = clf.score_classifier(gold, fp32, cand)
    assert scores.extra["label_agreement"] == pytest.approx(198 / 200)
    assert scores.accuracy == pytest.approx(0.99)
    lo, hi = scores.extra_intervals["label_agreement"]
    assert lo < 198 / 200 < hi
    examples = clf.flipped_examples(
        [f"text {i}" for i in range(200)], fp32, cand, ["neg", "pos"].__getitem__, gold
    )
    assert [e.row for e in examples[:2]] == [0, 5]  # the flips, largest change first
    assert examples[0].fp32.startswith("neg")
    assert examples[0].candidate.startswith("pos")
    assert examples[2].row == 3
    assert len(examples) == 10


def test_a_model_no_better_than_the_majority_class_has_no_lift():
    gold = np.array([1] * 70 + [0] * 30)
    always_one = _onehot(np.ones(100, dtype=int), 2)
    scores = clf.score_classifier(gold, always_one, always_one)
    assert scores.extra["lift_over_majority"] == pytest.approx(0.0)
    assert scores.extra_intervals["lift_over_majority"][0] <= 0.0


def test_held_out_labels_are_names_or_indices_and_an_unknown_one_is_named():
    labels = {0: "negative", 1: "positive"}
    assert label_ids(["negative", "1", " positive "], labels).tolist() == [0, 1, 1]
    with pytest.raises(HeldoutValidationError, match=r"\['2', 'neutral'\] are not labels of the model"):
        label_ids(["neutral", "0", "2"], labels)


def test_sst2_tsv_with_quotes_parses_and_a_row_with_an_extra_tab_is_refused(tmp_path):
    good = tmp_path / "dev.tsv"
    good.write_text('sentence\tlabel\nit \'s a "great" film \t1\nawful \t0\n', encoding="utf-8")
    frame = load_headed_tsv(good)
    assert frame["sentence"].tolist() == ['it \'s a "great" film ', "awful "]
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na\tb\t1\n", encoding="utf-8")
    with pytest.raises(HeldoutValidationError, match="line 2 has 3 fields"):
        load_headed_tsv(bad)


def test_gx_checks_the_optional_second_sentence_only_when_the_file_has_it(tmp_path):
    task = get_task_type("sequence-classification")
    rows = "".join(f"sentence {i}\tpair {i}\t{i % 2}\n" for i in range(30))
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence\tsentence2\tlabel\n" + rows + "blank second\t \t1\n", encoding="utf-8")
    outcome = validate_heldout(task.read_heldout(pairs), task.schema)
    assert not outcome.success
    assert any("sentence2" in f for f in outcome.failures), outcome.failures
    single = tmp_path / "single.tsv"
    single.write_text("sentence\tlabel\n" + "".join(f"s {i}\t{i % 2}\n" for i in range(30)), encoding="utf-8")
    assert validate_heldout(task.read_heldout(single), task.schema).success
    extra = tmp_path / "extra.tsv"
    extra.write_text(
        "sentence\tlabel\tnotes\n" + "".join(f"s {i}\t1\tx\n" for i in range(30)), encoding="utf-8"
    )
    assert not validate_heldout(task.read_heldout(extra), task.schema).success


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["BertModel"], "sentence-embedding"),
        (["DistilBertForSequenceClassification"], "sequence-classification"),
    ],
)
def test_the_kind_of_model_is_told_from_its_config(tmp_path, architectures, task):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    assert detect_task_type(tmp_path).name == task


def test_a_model_of_an_unknown_kind_is_refused_naming_the_kinds_quantgate_knows(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ConfigError) as err:
        detect_task_type(tmp_path)
    message = str(err.value)
    assert "BertForMaskedLM" in message
    assert "--task" in message
    assert "sentence-embedding" in message
    assert "sequence-classification" in message
