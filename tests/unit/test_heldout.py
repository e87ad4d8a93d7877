from pathlib import Path

import pytest

from quantgate.errors import HeldoutValidationError
from quantgate.families.sentence_embedding import load_sts_tsv
from quantgate.heldout import require_valid, validate_heldout
from quantgate.tasktypes import SentenceEmbedding

SCHEMA = SentenceEmbedding.schema


def test_real_sts_dev_parses_with_quotes_and_extra_fields(sts_path):
    df = load_sts_tsv(sts_path)
    assert len(df) == 1500
    assert df["score"].between(0, 5).all()
    assert df["sentence1"].str.contains('"').any()  # quoting is off: quote characters survive
    outcome = validate_heldout(df, SCHEMA)
    assert outcome.success, outcome.failures


def test_broken_rows_are_reported_by_column(tmp_path: Path, sts_path):
    lines = sts_path.read_text(encoding="utf-8").splitlines()[:20]
    fields = lines[3].split("\t")
    fields[4] = "7.5"  # score out of range
    lines[3] = "\t".join(fields)
    fields = lines[5].split("\t")
    fields[5] = "   "  # blank sentence
    lines[5] = "\t".join(fields)
    lines[7] = "\t".join(lines[7].split("\t")[:5])  # row cut short: no sentences
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines), encoding="utf-8")
    outcome = validate_heldout(load_sts_tsv(bad), SCHEMA)
    assert not outcome.success
    text = " ".join(outcome.failures)
    assert "'score'" in text
    assert "be_between" in text
    assert "'sentence1'" in text
    assert "match_regex" in text
    assert "not_be_null" in text
    with pytest.raises(HeldoutValidationError, match=r"failed .* data check"):
        require_valid(outcome, bad.name)


def test_wrong_file_shape_fails_schema_checks(tmp_path: Path):
    csv = tmp_path / "wrong.tsv"
    csv.write_text("sentence,label\nhello,1\n" * 20, encoding="utf-8")
    outcome = validate_heldout(load_sts_tsv(csv), SCHEMA)
    assert not outcome.success
    assert any("not_be_null" in f for f in outcome.failures)


def test_too_few_rows_fail(tmp_path: Path, sts_path):
    few = tmp_path / "few.tsv"
    few.write_text(
        "".join(sts_path.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8"
    )
    outcome = validate_heldout(load_sts_tsv(few), SCHEMA)
    assert any("row_count" in f for f in outcome.failures)


def test_non_utf8_file_is_refused_with_the_way_out(tmp_path: Path):
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes("x\tx\t2012\t3.0\tcaf\u00e9\tna\u00efve\n".encode("latin-1"))
    with pytest.raises(HeldoutValidationError, match=r"not UTF-8.*re-save"):
        load_sts_tsv(latin)


def test_held_out_text_is_escaped_in_the_data_docs_html(tmp_path):
    """A sentence holding markup shows up in the Data Docs as text, never as markup that runs."""
    import pandas as pd

    from quantgate.heldout import validate_heldout
    from quantgate.tasktypes import get_task_type

    evil = "<script>alert(1)</script>"
    rows = [{"score": 1.0, "sentence1": f"s{i}", "sentence2": f"t{i}"} for i in range(20)]
    rows += [{"score": 2.0, "sentence1": evil, "sentence2": evil}] * 3  # duplicates: listed as unexpected
    outcome = validate_heldout(
        pd.DataFrame(rows), get_task_type("sentence-embedding").schema, docs_dir=tmp_path
    )
    assert not outcome.success
    assert evil in " ".join(outcome.failures)  # the run's own report keeps the raw value
    pages = [(tmp_path / p).read_text() for p in outcome.data_docs]
    validation_page = next(p for p in pages if "&lt;script&gt;alert(1)&lt;/script&gt;" in p)
    assert "compound_columns" in validation_page or "unique" in validation_page
    assert not any("<script>alert(1)" in p for p in pages)


def test_an_infinite_feature_value_fails_validation_in_the_flow_too():
    """A table uploaded by another tool skips `register`'s checks; GX in the flow names the column (#20:
    an inf cell was a ValueError from scikit-learn in the run)."""
    import numpy as np
    import pandas as pd

    from quantgate.heldout import HeldoutSchema

    schema = HeldoutSchema(columns={"x": "number", "label": "label"}, min_rows=2, max_duplicate_fraction=1.0)
    frame = pd.DataFrame({"x": [1.0, np.inf, 2.0, 1e39], "label": ["a", "b", "a", "b"]})
    outcome = validate_heldout(frame, schema)
    assert not outcome.success
    assert any("'x'" in f and "between" in f for f in outcome.failures), outcome.failures
    assert validate_heldout(frame.assign(x=[1.0, -2.5, 3e38, 0.0]), schema).success


def test_data_docs_templates_are_compiled_once_per_process_and_render_the_same_pages(
    tmp_path: Path, sts_path, monkeypatch: pytest.MonkeyPatch
):
    import jinja2

    df = load_sts_tsv(sts_path).head(60)
    first = validate_heldout(df, SCHEMA, docs_dir=tmp_path / "first")
    compiled: list[str] = []
    compile_ = jinja2.Environment.compile

    def counting(self, source, name=None, filename=None, *args, **kwargs):
        compiled.append(name)
        return compile_(self, source, name, filename, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    second = validate_heldout(df, SCHEMA, docs_dir=tmp_path / "second")
    assert compiled == []  # every template came from the process's bytecode cache
    # the same pages, from the same templates: the section pages and the index
    assert len(second.data_docs) == len(first.data_docs) >= 3
    for a, b in zip(first.data_docs, second.data_docs, strict=True):
        assert a.split("/")[0] == b.split("/")[0]
        assert (tmp_path / "second" / b).stat().st_size > 1000
    index = (tmp_path / "second" / "index.html").read_text(encoding="utf-8")
    assert "sentence" in index.lower() or "suite" in index.lower()
