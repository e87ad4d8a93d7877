"""Held-out bombs, built streaming (zeros compress to almost nothing), so building one costs the test
process little: small files that declare huge contents. Shared by tests/unit/test_heldout_bounds.py and
tests/integration/test_bad_input.py."""

from __future__ import annotations

import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A grayscale PNG of black pixels, compressed row by row: about 1/1000 of width*height on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte 0, then the row's pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


class Zeros:
    """A file of `size` zero bytes that exists only as it is read."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left, 1 << 24)
        self.left -= n
        return b"\x00" * n


def image_folder(root: Path, images: int = 3, side: int = 8) -> Path:
    """A small legitimate ImageFolder: two classes of `side`x`side` black PNGs."""
    for i in range(images):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        png_of_zeros(root / f"c{i % 2}" / f"{i}.png", side, side)
    return root


def tar_gz_with_member(path: Path, size: int, pax_header: bool = False) -> Path:
    """A .tar.gz holding one `size`-byte member of zeros (or, with pax_header, a pax extended header of
    that size, which tarfile itself reads whole before it yields the member it describes)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("c0/big.png" if not pax_header else "././@PaxHeader")
        info.size = size
        if pax_header:
            info.type = tarfile.XHDTYPE
        tar.addfile(info, Zeros(size))
    return path


def npz_declaring(path: Path, shape: tuple[int, ...], labels: int | None = None) -> Path:
    """An .npz whose `images` array is `shape` uint8 zeros, deflated as it is written."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(fh, header)
            zeros = Zeros(int(np.prod(shape)))
            while chunk := zeros.read(1 << 24):
                fh.write(chunk)
        with archive.open("labels.npy", "w") as fh:
            np.lib.format.write_array(fh, np.zeros(shape[0] if labels is None else labels, dtype=np.int64))
    return path


def csv_rows(path: Path, rows: int) -> Path:
    with path.open("w") as fh:
        fh.write("x,label\n")
        for _ in range(rows // 100_000):
            fh.write("0,0\n" * 100_000)
        fh.write("0,0\n" * (rows % 100_000))
    return path


def conll_tokens(path: Path, tokens: int) -> Path:
    """`tokens` tokens in sentences of 10."""
    sentence = "a\tO\n" * 10 + "\n"
    with path.open("w") as fh:
        for _ in range(tokens // 10):
            fh.write(sentence)
        fh.write("a\tO\n" * (tokens % 10))
    return path


def tiny_cnn(out: Path) -> Path:
    """An image classifier folder `register` accepts (classes c0, c1): a one-stage ResNet from a config
    and its image processor."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    labels = {0: "c0", 1: "c1"}
    config = ResNetConfig(embedding_size=4, hidden_sizes=[4], depths=[1], layer_type="basic", num_labels=2,
                          id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip
    ResNetForImageClassification(config).eval().save_pretrained(out, safe_serialization=True)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(out)
    return out
