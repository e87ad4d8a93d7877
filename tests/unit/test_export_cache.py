from pathlib import Path

from quantgate.export import ExportResult
from quantgate.export_cache import cached_export


def _builder(calls: list[Path]):
    def build(out: Path) -> ExportResult:
        calls.append(out)
        (out / "tokenizer").mkdir(parents=True)
        (out / "model.onnx").write_bytes(b"onnx-bytes")
        (out / "tokenizer" / "tokenizer.json").write_text("{}")
        return ExportResult(
            onnx_path=out / "model.onnx",
            tokenizer_files=[out / "tokenizer" / "tokenizer.json"],
            input_names=["input_ids"],
            output_names=["sentence_embedding"],
            opset=17,
            pooling="mean",
            normalize=True,
            max_abs_diff_vs_torch={"sentence_embedding": 0.0},
            parity_samples=1,
            size_bytes=10,
        )

    return build


def test_second_export_of_the_same_checksum_is_served_from_the_cache(tmp_path):
    calls: list[Path] = []
    first, hit1 = cached_export(tmp_path, "key", _builder(calls))
    second, hit2 = cached_export(tmp_path, "key", _builder(calls))
    assert (hit1, hit2) == (False, True)
    assert len(calls) == 1
    assert second == first
    assert second.onnx_path.read_bytes() == b"onnx-bytes"  # paths point into the cache, not the staging dir
    assert second.tokenizer_files[0].is_file()
    assert not list(tmp_path.glob(".key.*"))  # no staging leftovers


def test_altered_cache_entry_is_rebuilt_not_used(tmp_path):
    calls: list[Path] = []
    first, _ = cached_export(tmp_path, "key", _builder(calls))
    first.onnx_path.write_bytes(b"tampered")
    again, hit = cached_export(tmp_path, "key", _builder(calls))
    assert hit is False
    assert len(calls) == 2
    assert again.onnx_path.read_bytes() == b"onnx-bytes"


def test_different_keys_do_not_share_entries(tmp_path):
    calls: list[Path] = []
    cached_export(tmp_path, "a", _builder(calls))
    _, hit = cached_export(tmp_path, "b", _builder(calls))
    assert hit is False
    assert len(calls) == 2
