"""Image classification (CNNs: transformers' ResNet, EfficientNet, MobileNet classes).

Recognised by config.json architectures `*ForImageClassification` with a preprocessor_config.json (the
image processor: resize, normalise). Held-out: an image folder (one sub-folder per class, the ImageFolder
convention; `register` uploads it as one tar) or an `.npz` with `images` (N, H, W, C uint8) and `labels`;
every image must decode. Task metric: top-1 accuracy, with the classifier gates.

Why static INT8 for CNNs: dynamic quantization turns Conv into ConvInteger and quantizes activations at
run time, which on CPU is often no faster than FP32; static QDQ with ranges calibrated on the calibration
split gives QLinearConv kernels. The default search tries both in one run, so the report shows which won
on this model and by how much.
"""

from __future__ import annotations

import io
import math
import tarfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable, open_session
from quantgate.bench import BenchReport, BenchSettings, draw_requests
from quantgate.errors import HeldoutValidationError, InvalidModelError
from quantgate.export import (
    OPSET,
    ExportResult,
    check_model_folder,
    export_module,
    load_hf_model,
    model_files_size,
    parity_vs_torch,
)
from quantgate.families import classification as clf
from quantgate.families.hf_text import HEAD_FILE, HeadModule, id2label
from quantgate.gates import Limit
from quantgate.heldout import HeldoutSchema, check_bound, check_file_size, heldout_limits
from quantgate.settings import HeldoutLimits
from quantgate.tasktypes import (
    Column,
    PlotAxis,
    TaskMetric,
    benchmark_with_torch,
    hf_architectures,
    register_task_type,
    serving_settings,
)

AUTO_CLASS = "AutoModelForImageClassification"
INPUT = "pixel_values"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _decode(
    name: str, data: bytes, limits: HeldoutLimits, decoded_so_far: int, archive: str = ""
) -> np.ndarray:
    """One image as (H, W, 3) uint8. Image.open reads only the header, so the size is checked before a
    pixel is decoded: a 140 KB PNG of 12000x12000 would otherwise become 432 MB of RGB (2 GB at peak)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP on; the bound below is the one that decides (and names its setting).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            where = f"{archive}:{name}" if archive else name
            check_bound(
                where, f"image size {width}x{height} (pixels)", width * height, "max_image_pixels", limits
            )
            check_bound(
                where,
                "decoded pixel bytes of the set up to this image",
                decoded_so_far + width * height * 3,
                "max_heldout_bytes",
                limits,
            )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HeldoutValidationError(
            f"held-out image {name} does not decode ({type(exc).__name__}): replace or remove it and "
            "register a new version",
            [f"undecodable image {name}"],
        ) from None


class _BoundedReads:
    """The decompressed tar stream, refusing any single read above the member bound: tarfile itself reads
    a pax or GNU long-name header whole (`fileobj.read(size)`) before it hands us the member it
    describes, so a 1.5 GB "header" would be in memory before any check of ours could run."""

    def __init__(self, raw: BinaryIO, name: str, limits: HeldoutLimits) -> None:
        self.raw, self.name, self.limits = raw, name, limits

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise ValueError("an unbounded read of a held-out tar")  # tarfile never asks for one
        check_bound(
            self.name, "a tar header or member (bytes)", size, "max_heldout_member_bytes", self.limits
        )
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _open_decompressed(path: Path) -> BinaryIO:
    """The tar bytes of a plain, gzip, bz2 or xz tar, decompressed as they are read (never whole)."""
    import bz2
    import gzip
    import lzma

    with path.open("rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return path.open("rb")


def read_image_tar(path: Path) -> pd.DataFrame:
    """An ImageFolder packed by `register` (or by hand): `<class>/<file>`; members are read, never
    extracted, so a name like ../../x cannot write anywhere. Streamed one member at a time, each checked
    from its header (size, then the image's width x height) before its bytes are read or decoded."""
    import lzma
    import zlib

    limits = heldout_limits()
    check_file_size(path, limits)
    rows: list[dict[str, Any]] = []
    decoded = 0
    try:
        with (
            _open_decompressed(path) as raw,
            tarfile.open(fileobj=_BoundedReads(raw, path.name, limits), mode="r:") as tar,
        ):
            entries = 0
            while (member := tar.next()) is not None:
                # tarfile keeps every header it has read (for random access we never use): drop them so
                # a tar of a million empty entries costs one header at a time.
                tar.members.clear()
                entries += 1
                check_bound(path.name, "entries (at least)", entries, "max_heldout_rows", limits)
                check_bound(
                    f"{path.name}:{member.name}", "member size (bytes)", member.size,
                    "max_heldout_member_bytes", limits,
                )  # fmt: skip
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                if len(parts) != 2 or Path(parts[1]).suffix.lower() not in IMAGE_SUFFIXES:
                    raise HeldoutValidationError(
                        f"held-out folder entry {member.name!r} is not <class>/<image file>: put each "
                        f"image ({', '.join(sorted(IMAGE_SUFFIXES))}) in the sub-folder of its class",
                        [f"not class/image: {member.name}"],
                    )
                fh = tar.extractfile(member)
                data = fh.read() if fh else b""
                pixels = _decode(member.name, data, limits, decoded, archive=path.name)
                decoded += pixels.nbytes
                rows.append({"image": member.name, "label": parts[0], "pixels": pixels})
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise HeldoutValidationError(
            f"held-out file {path.name} is not a readable tar ({exc})", ["bad tar"]
        ) from None
    return pd.DataFrame(rows, columns=["image", "label", "pixels"])


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of an .npz, from the .npy headers inside it: nothing is decoded (a
    1 MB savez_compressed file of zeros can declare gigabytes)."""
    import zipfile

    from numpy.lib import format as npy

    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as fh:
                version = npy.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = npy.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = npy.read_array_header_2_0(fh)
                else:
                    raise ValueError(
                        f"{info.filename}: .npy format {version} (save with np.savez_compressed)"
                    )
            out[info.filename.removesuffix(".npy")] = (shape, dtype)
    return out


def read_npz(path: Path) -> pd.DataFrame:
    limits = heldout_limits()
    check_file_size(path, limits)
    layout = (
        f"held-out file {path.name} must be an .npz with arrays `images` (N, H, W, C uint8) and `labels` (N)"
    )
    try:
        headers = _npz_headers(path)
    except (ValueError, OSError, EOFError) as exc:
        raise HeldoutValidationError(f"{layout} ({exc})", ["npz layout"]) from None
    if "images" not in headers or "labels" not in headers:
        raise HeldoutValidationError(f"{layout} (it has {sorted(headers)})", ["npz layout"])
    (shape, dtype), (label_shape, label_dtype) = headers["images"], headers["labels"]
    if dtype.hasobject or label_dtype.hasobject:
        bad = dtype if dtype.hasobject else label_dtype
        raise HeldoutValidationError(
            f"held-out file {path.name} holds Python objects (dtype {bad}), which load by unpickling: "
            "save numbers and strings only",
            ["npz object dtype"],
        )
    if len(shape) != 4 or dtype != np.uint8 or shape[-1] not in (1, 3) or label_shape[:1] != shape[:1]:
        raise HeldoutValidationError(
            f"held-out file {path.name}: images {shape} {dtype} and labels {label_shape} "
            "are not (N, H, W, 1 or 3) uint8 with one label each",
            ["npz shapes"],
        )
    n, height, width, _ = shape
    check_bound(path.name, "images", n, "max_heldout_rows", limits)
    check_bound(
        path.name, f"image size {width}x{height} (pixels)", width * height, "max_image_pixels", limits
    )
    # Decoded as RGB (a grayscale array is repeated to 3 channels), plus the labels.
    declared = n * height * width * 3 + math.prod(label_shape) * label_dtype.itemsize
    check_bound(path.name, "decoded array bytes", declared, "max_heldout_bytes", limits)
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise HeldoutValidationError(f"{layout} ({exc})", ["npz layout"]) from None
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    return pd.DataFrame(
        {
            "image": [f"npz[{i}]" for i in range(len(images))],
            "label": [str(v) for v in labels],
            "pixels": list(rgb),
        }
    )


class ImageClassification(clf.ProbabilityClassifier):
    name = "image-classification"
    packages: ClassVar[tuple[str, ...]] = ("transformers", "torch", "pillow")
    recognised_by = "config.json architectures `*ForImageClassification` and a preprocessor_config.json"
    heldout_format = "image folder (class/image) or .npz (images N,H,W,C uint8; labels)"
    schema = HeldoutSchema(
        columns={"image": "text", "label": "label", "pixels": "array"},
        min_rows=20,
        unique_columns=["image"],
    )
    metric = TaskMetric(name="top1_accuracy")
    # Dynamic INT8 (ConvInteger) beside static QDQ calibrated three ways, per channel.
    default_recipes: ClassVar[tuple[str, ...]] = (
        "dynamic-int8-per-channel",
        "static-qdq-cnn-minmax",
        "static-qdq-cnn-entropy",
        "static-qdq-cnn-percentile",
    )
    limits: ClassVar[tuple[Limit, ...]] = clf.LIMITS
    columns: ClassVar[tuple[Column, ...]] = (
        Column(metric="label_agreement"),
        Column(metric="macro_f1_drop"),
        Column(metric="ece_increase"),
    )
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(metric="label_agreement", label="label agreement with FP32", limit="min_label_agreement"),
    )
    batch = 32
    calibration_batch = 8

    def recognises(self, model_dir: Path) -> bool:
        return any(a.endswith("ForImageClassification") for a in hf_architectures(model_dir))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        config = check_model_folder(model_dir, allow_pickle, auto_class=AUTO_CLASS, needs="preprocessor")
        if len(id2label(config)) < 2:
            raise InvalidModelError("config.json names fewer than 2 labels (id2label): set them and re-save")
        return config

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame, allow_pickle: bool = False) -> None:
        import json

        labels = id2label(json.loads((model_dir / "config.json").read_text()))
        self._label_ids(heldout, labels)

    def read_heldout(self, path: Path) -> pd.DataFrame:
        if path.suffix.lower() == ".npz":
            return read_npz(path)
        return read_image_tar(path)

    @staticmethod
    def _label_ids(frame: pd.DataFrame, labels: dict[int, str]) -> np.ndarray:
        from quantgate.families.hf_text import label_ids

        return label_ids(frame["label"], labels)

    @staticmethod
    def _processor(folder: Path) -> Any:
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"cannot load the image processor in {folder.name}: {exc}") from None

    def _pixels(self, processor: Any, frame: pd.DataFrame, idx: list[int] | range) -> np.ndarray:
        images = [frame["pixels"].iloc[i] for i in idx]
        return processor(images=images, return_tensors="np")[INPUT].astype(np.float32)

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        import json

        config = self.check_model(model_dir, allow_pickle)
        processor = self._processor(model_dir)
        model = load_hf_model(model_dir, AUTO_CLASS, allow_pickle)
        module = HeadModule(model, [INPUT])
        sample = list(range(min(32, len(heldout))))
        batches = [
            {INPUT: self._pixels(processor, heldout, sample[i : i + 8])} for i in range(0, len(sample), 8)
        ]
        onnx_path = out_dir / "model.onnx"
        axes = {INPUT: {0: "batch"}, "logits": {0: "batch"}}
        export_module(module, onnx_path, {INPUT: batches[0][INPUT][:2]}, ["logits"], axes, model_dir.name)
        assets = out_dir / "preprocessor"
        processor.save_pretrained(assets)
        labels = {str(k): v for k, v in sorted(id2label(config).items())}
        (assets / HEAD_FILE).write_text(json.dumps({"labels": labels, "inputs": [INPUT]}, indent=1))
        diffs = parity_vs_torch(module, onnx_path, batches, ["logits"], atol)
        return ExportResult(
            onnx_path=onnx_path,
            tokenizer_files=sorted(p for p in assets.iterdir() if p.is_file()),
            input_names=[INPUT],
            output_names=["logits"],
            opset=OPSET,
            max_abs_diff_vs_torch=diffs,
            parity_samples=len(sample),
            size_bytes=model_files_size(onnx_path),
        )

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        processor, b = self._processor(assets), self.calibration_batch
        n = len(calibration) // b * b or len(calibration)
        return [
            {INPUT: self._pixels(processor, calibration, range(i, min(i + b, n)))} for i in range(0, n, b)
        ]

    def _proba(self, model: Servable, assets: Path, frame: pd.DataFrame, threads: int) -> np.ndarray:
        processor, session = self._processor(assets), open_session(model, threads)
        out = []
        for start in range(0, len(frame), self.batch):
            pixels = self._pixels(processor, frame, range(start, min(start + self.batch, len(frame))))
            out.append(session.run(["logits"], {INPUT: pixels})[0])
        return clf.softmax(np.concatenate(out))

    def _gold(self, assets: Path, frame: pd.DataFrame) -> np.ndarray:
        return self._label_ids(frame, self._class_names(assets))

    def _class_names(self, assets: Path) -> dict[int, str]:
        import json

        return {int(k): v for k, v in json.loads((assets / HEAD_FILE).read_text())["labels"].items()}

    def _example_texts(self, assets: Path, heldout: pd.DataFrame) -> list[str]:
        return heldout["image"].astype(str).tolist()

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        """Held-out images at the processor's own image size, in the profile's batch sizes (a request's
        length is its batch: `seq_len` and token lengths mean nothing to a CNN)."""
        settings = serving_settings(self, settings)
        processor = self._processor(assets)
        requests = draw_requests(
            settings,
            len(heldout),
            lambda rows, pad_to: {INPUT: self._pixels(processor, heldout, rows)},
            length_of=lambda feeds: int(feeds[INPUT].shape[0]),
        )
        return benchmark_with_torch(
            lambda: HeadModule(load_hf_model(model_dir, AUTO_CLASS, allow_pickle), [INPUT]),
            model_dir,
            fp32,
            candidates,
            requests,
            settings,
        )


IMAGE_CLASSIFICATION = register_task_type(ImageClassification())
