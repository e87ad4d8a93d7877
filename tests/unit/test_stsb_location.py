"""The held-out STS-B split is found beside the checkout, else beside the repository it was cloned from
(a clone in a temporary folder, as CI's check makes), and QUANTGATE_STSB overrides both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.stsb import RELATIVE, candidates, missing_message, stsb_path


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """work/main (the checkout) with work/shared/... beside it, and a clone of it elsewhere."""
    monkeypatch.delenv("QUANTGATE_STSB", raising=False)
    main = tmp_path / "work" / "main"
    main.mkdir(parents=True)
    _git("init", "-q", str(main))
    data = tmp_path / "work" / RELATIVE
    data.parent.mkdir(parents=True)
    data.write_text("row\n")
    clone = tmp_path / "elsewhere" / "clone"
    _git("clone", "-q", str(main), str(clone))
    return main, clone


def test_found_beside_the_checkout_and_beside_a_clones_origin(layout):
    main, clone = layout
    data = main.parent / RELATIVE
    assert stsb_path(main) == data
    assert not (clone.parent / RELATIVE).exists()
    assert stsb_path(clone) == data.resolve()


def test_a_network_origin_is_not_searched_and_the_message_says_where_it_looked(layout):
    _, clone = layout
    _git("-C", str(clone), "remote", "set-url", "origin", "https://example.invalid/quantgate.git")
    assert candidates(clone) == [clone.parent / RELATIVE]
    assert stsb_path(clone) is None
    message = missing_message(clone)
    assert str(clone.parent / RELATIVE) in message
    assert "QUANTGATE_STSB" in message


def test_the_environment_overrides(layout, tmp_path, monkeypatch):
    main, _ = layout
    mine = tmp_path / "mine.tsv"
    monkeypatch.setenv("QUANTGATE_STSB", str(mine))
    assert stsb_path(main) is None  # named but missing: not silently replaced by another copy
    mine.write_text("row\n")
    assert stsb_path(main) == mine
