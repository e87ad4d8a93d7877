"""Held-out bombs (issue #20 point 2): small files that declare huge contents are refused from their
headers, before anything is decoded, with an error naming the file, the measured size, the limit and the
QUANTGATE_* variable that raises it; a raised limit lets a large but legitimate file through.

Each bomb is read by the real task type's reader in a child process, whose peak RSS above its own
baseline (after imports) is asserted: the refusal must come before the memory is spent. The bombs
(tests/heldout_bombs.py) are built streaming, so building them costs this process little too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantgate import lifecycle
from quantgate.errors import HeldoutValidationError
from quantgate.heldout import pack_folder
from quantgate.registry import ModelRef
from quantgate.store import MemoryStore
from quantgate.tasktypes import get_task_type
from tests import heldout_bombs as bombs

# Peak RSS a refused bomb may add to the reading process. Before the bounds (2fc1bc8) the PNG, tar.gz and
# npz bombs below each cost 0.5 to 1 GB to read, and the CSV and CoNLL ones were accepted; a refusal
# from the header costs a few MB (the CoNLL one ~50 MB: what 2 million tokens cost up to the bound).
MAX_GROWTH_MB = 300

# The child: import everything first (the baseline), read the file with the task type's own reader,
# report the outcome and the peak RSS (ru_maxrss: KiB on Linux) above that baseline.
CHILD = """
import json, resource, sys
from pathlib import Path
from quantgate.errors import HeldoutValidationError
from quantgate.tasktypes import get_task_type
import quantgate.families.image_classification, quantgate.families.tabular
import quantgate.families.token_classification, PIL.PngImagePlugin, pandas
task = get_task_type(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    frame = task.read_heldout(Path(sys.argv[2]))
    outcome = {"accepted": len(frame)}
except HeldoutValidationError as exc:
    outcome = {"refused": str(exc)}
outcome["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(outcome))
"""


def read_in_child(task: str, path: Path, **limits: int) -> dict:
    """Read `path` as `task`'s held-out set in a fresh process with QUANTGATE_<limit> set; the outcome."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTGATE_MAX_")}
    env.update({f"QUANTGATE_{k.upper()}": str(v) for k, v in limits.items()})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, task, str(path)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_refused_cheaply(outcome: dict, *words: str) -> None:
    assert "refused" in outcome, outcome
    message = outcome["refused"]
    for word in words:
        assert word in message, message
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome


# --- images -------------------------------------------------------------------------------------------------


def test_a_huge_png_in_an_image_folder_is_refused_from_its_header(tmp_path):
    folder = bombs.image_folder(tmp_path / "heldout")
    bombs.png_of_zeros(folder / "c1" / "bomb.png", 10_000, 10_000)  # 100 MP: ~100 KB on disk, 300 MB as RGB
    packed = pack_folder(folder, tmp_path / "packed")
    assert packed.stat().st_size < 1_000_000
    outcome = read_in_child("image-classification", packed)
    assert_refused_cheaply(
        outcome,
        "heldout.tar:c1/bomb.png",
        "10000x10000",
        "100,000,000",
        "25,000,000",
        "QUANTGATE_MAX_IMAGE_PIXELS",
    )


def test_a_raised_pixel_limit_lets_a_large_image_through(tmp_path):
    folder = bombs.image_folder(tmp_path / "heldout")
    bombs.png_of_zeros(folder / "c1" / "large.png", 2000, 1500)  # 3 MP
    packed = pack_folder(folder, tmp_path / "packed")
    refused = read_in_child("image-classification", packed, max_image_pixels=1_000_000)
    assert_refused_cheaply(refused, "3,000,000", "1,000,000", "QUANTGATE_MAX_IMAGE_PIXELS")
    accepted = read_in_child("image-classification", packed, max_image_pixels=3_000_000)
    assert accepted.get("accepted") == 4, accepted


def test_decoded_pixels_of_the_whole_set_are_bounded(tmp_path):
    packed = pack_folder(bombs.image_folder(tmp_path / "heldout", images=30, side=100), tmp_path / "packed")
    # 30 images of 100x100 RGB = 900,000 bytes decoded; the file itself is a few KB.
    outcome = read_in_child("image-classification", packed, max_heldout_bytes=500_000)
    assert_refused_cheaply(outcome, "decoded pixel bytes", "500,000", "QUANTGATE_MAX_HELDOUT_BYTES")
    assert read_in_child("image-classification", packed, max_heldout_bytes=1_000_000)["accepted"] == 30


def test_a_tar_gz_with_a_huge_member_is_refused_before_the_member_is_read(tmp_path):
    bomb = bombs.tar_gz_with_member(tmp_path / "bomb.tar.gz", 512 * 2**20)  # 512 MiB of zeros: ~0.5 MB
    assert bomb.stat().st_size < 4_000_000
    outcome = read_in_child("image-classification", bomb)
    assert_refused_cheaply(
        outcome, "bomb.tar.gz:c0/big.png", "536,870,912", "67,108,864", "QUANTGATE_MAX_HELDOUT_MEMBER_BYTES"
    )


def test_a_tar_gz_with_a_huge_pax_header_is_refused_before_tarfile_reads_it(tmp_path):
    bomb = bombs.tar_gz_with_member(tmp_path / "pax.tar.gz", 512 * 2**20, pax_header=True)
    outcome = read_in_child("image-classification", bomb)
    assert_refused_cheaply(outcome, "pax.tar.gz", "536,870,912", "QUANTGATE_MAX_HELDOUT_MEMBER_BYTES")


def test_an_npz_declaring_more_pixels_than_the_bound_is_refused_from_its_npy_header(tmp_path):
    bomb = bombs.npz_declaring(tmp_path / "bomb.npz", (200, 1000, 1000, 3))  # 600 MB of zeros: ~0.6 MB
    assert bomb.stat().st_size < 4_000_000
    outcome = read_in_child("image-classification", bomb)
    assert_refused_cheaply(outcome, "bomb.npz", "600,001,600", "536,870,912", "QUANTGATE_MAX_HELDOUT_BYTES")
    # Only what is declared counts: the same layout at a legitimate size loads.
    small = bombs.npz_declaring(tmp_path / "small.npz", (20, 16, 16, 3))
    assert read_in_child("image-classification", small)["accepted"] == 20


def test_an_npz_image_above_the_pixel_bound_and_an_object_array_are_refused(tmp_path, monkeypatch):
    from quantgate.families.image_classification import read_npz

    wide = bombs.npz_declaring(tmp_path / "wide.npz", (1, 6000, 6000, 1))
    with pytest.raises(HeldoutValidationError, match=r"6000x6000.*QUANTGATE_MAX_IMAGE_PIXELS"):
        read_npz(wide)
    monkeypatch.setenv("QUANTGATE_MAX_IMAGE_PIXELS", str(36_000_000))
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_BYTES", str(200_000_000))
    assert len(read_npz(wide)) == 1
    pickled = tmp_path / "pickled.npz"
    np.savez(
        pickled, images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([{"a": 1}, None], dtype=object)
    )
    with pytest.raises(HeldoutValidationError, match="Python objects"):
        read_npz(pickled)


# --- tables and text ----------------------------------------------------------------------------------------


def test_a_csv_with_more_rows_than_the_bound_is_refused_and_a_raised_bound_reads_it(tmp_path):
    path = bombs.csv_rows(tmp_path / "rows.csv", 1_000_001)
    outcome = read_in_child("tabular", path)
    assert_refused_cheaply(outcome, "rows.csv", "1,000,001", "1,000,000", "QUANTGATE_MAX_HELDOUT_ROWS")
    assert read_in_child("tabular", path, max_heldout_rows=2_000_000)["accepted"] == 1_000_001


def test_a_wide_csv_is_bounded_by_its_cells_before_it_is_parsed(tmp_path, monkeypatch):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(100)) + "\n" + ("0," * 99 + "0\n") * 200)
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_BYTES", "80000")  # above the file (~40 KB), below 200x100x8
    with pytest.raises(HeldoutValidationError, match=r"100 columns.*QUANTGATE_MAX_HELDOUT_BYTES"):
        get_task_type("tabular").read_heldout(path)


def test_a_parquet_file_with_more_rows_than_the_bound_is_refused_from_its_footer(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"x": np.zeros(1000), "label": np.zeros(1000, dtype=int)}).to_parquet(path)
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_ROWS", "999")
    with pytest.raises(HeldoutValidationError, match="rows 1,000 is above the limit 999"):
        get_task_type("tabular").read_heldout(path)


def test_a_conll_file_with_more_tokens_than_the_bound_is_refused_and_a_raised_bound_reads_it(tmp_path):
    path = bombs.conll_tokens(tmp_path / "tokens.conll", 2_000_001)
    outcome = read_in_child("token-classification", path)
    assert_refused_cheaply(outcome, "tokens.conll", "2,000,001", "2,000,000", "QUANTGATE_MAX_HELDOUT_TOKENS")
    assert read_in_child("token-classification", path, max_heldout_tokens=3_000_000)["accepted"] == 200_001


@pytest.mark.parametrize(
    ("task", "text"),
    [
        ("sentence-embedding", "g\tf\t2012\t1.0\ta\tb\n" * 11),
        ("sequence-classification", "sentence\tlabel\n" + "a\t1\n" * 11),
        ("token-classification", "a\tO\n\n" * 11),
    ],
    ids=["sts-tsv", "sst2-tsv", "conll"],
)
def test_text_held_out_sets_are_bounded_by_rows_and_by_bytes(tmp_path, monkeypatch, task, text):
    path = tmp_path / "set.tsv"
    path.write_text(text)
    reader = get_task_type(task).read_heldout
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_ROWS", "10")
    with pytest.raises(HeldoutValidationError, match=r"11 is above the limit 10 .QUANTGATE_MAX_HELDOUT_ROWS"):
        reader(path)
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_ROWS", "11")
    assert len(reader(path)) == 11
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_BYTES", "20")
    with pytest.raises(HeldoutValidationError, match=r"size on disk .bytes. .* QUANTGATE_MAX_HELDOUT_BYTES"):
        reader(path)


def test_a_retrieval_set_is_bounded_by_queries_and_documents(tmp_path, monkeypatch):
    path = tmp_path / "set.json"
    data = {"queries": {"q": "a"}, "corpus": {f"d{i}": "b" for i in range(11)}, "qrels": {"q": ["d0"]}}
    path.write_text(json.dumps(data))
    monkeypatch.setenv("QUANTGATE_MAX_HELDOUT_ROWS", "10")
    with pytest.raises(HeldoutValidationError, match="corpus documents 11 is above the limit 10"):
        get_task_type("sentence-retrieval").read_heldout(path)


def test_a_limit_that_is_not_a_positive_number_is_a_config_error_naming_the_variable(tmp_path, monkeypatch):
    from quantgate.errors import ConfigError

    path = tmp_path / "set.tsv"
    path.write_text("g\tf\t2012\t1.0\ta\tb\n")
    monkeypatch.setenv("QUANTGATE_MAX_IMAGE_PIXELS", "0")
    with pytest.raises(ConfigError, match="QUANTGATE_MAX_IMAGE_PIXELS"):
        get_task_type("sentence-embedding").read_heldout(path)


# --- at registration ----------------------------------------------------------------------------------------


def test_a_pixel_bomb_is_refused_at_register_and_storage_is_unchanged(tmp_path):
    tiny_cnn = bombs.tiny_cnn(tmp_path / "cnn")
    folder = bombs.image_folder(tmp_path / "heldout", images=24)
    store, ref = MemoryStore(), ModelRef(name="cnn", version="v1")
    lifecycle.register(store, ref, tiny_cnn, folder, "image-classification")  # the legitimate set registers
    bombs.png_of_zeros(folder / "c0" / "bomb.png", 10_000, 10_000)
    before = store.snapshot()
    with pytest.raises(HeldoutValidationError, match=r"c0/bomb.png.*QUANTGATE_MAX_IMAGE_PIXELS"):
        lifecycle.register(
            store, ModelRef(name="cnn", version="v2"), tiny_cnn, folder, "image-classification"
        )
    assert store.snapshot() == before
