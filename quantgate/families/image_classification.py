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
import tarfile
from pathlib import Path
from typing import Any, ClassVar

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
    parity_vs_torch,
)
from quantgate.families import classification as clf
from quantgate.families.hf_text import HEAD_FILE, HeadModule, id2label
from quantgate.gates import Gate, Limit, Thresholds
from quantgate.heldout import HeldoutSchema
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


def _decode(name: str, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HeldoutValidationError(
            f"held-out image {name} does not decode ({type(exc).__name__}): replace or remove it and "
            "register a new version",
            [f"undecodable image {name}"],
        ) from None


def read_image_tar(path: Path) -> pd.DataFrame:
    """An ImageFolder packed by `register` (or by hand): `<class>/<file>`; members are read, never
    extracted, so a name like ../../x cannot write anywhere."""
    rows = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
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
                rows.append({"image": member.name, "label": parts[0], "pixels": _decode(member.name, data)})
    except tarfile.TarError as exc:
        raise HeldoutValidationError(
            f"held-out file {path.name} is not a readable tar ({exc})", ["bad tar"]
        ) from None
    return pd.DataFrame(rows, columns=["image", "label", "pixels"])


def read_npz(path: Path) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (KeyError, ValueError, OSError) as exc:
        raise HeldoutValidationError(
            f"held-out file {path.name} must be an .npz with arrays `images` (N, H, W, C uint8) and `labels` "
            f"(N) ({exc})",
            ["npz layout"],
        ) from None
    if (
        images.ndim != 4
        or images.dtype != np.uint8
        or images.shape[-1] not in (1, 3)
        or len(labels) != len(images)
    ):
        raise HeldoutValidationError(
            f"held-out file {path.name}: images {images.shape} {images.dtype} and labels {labels.shape} "
            "are not (N, H, W, 1 or 3) uint8 with one label each",
            ["npz shapes"],
        )
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

    def gates(self, t: Thresholds) -> list[Gate]:
        return clf.gates(t)

    def recognises(self, model_dir: Path) -> bool:
        return any(a.endswith("ForImageClassification") for a in hf_architectures(model_dir))

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        config = check_model_folder(model_dir, allow_pickle, auto_class=AUTO_CLASS, needs="preprocessor")
        if len(id2label(config)) < 2:
            raise InvalidModelError("config.json names fewer than 2 labels (id2label): set them and re-save")
        return config

    def check_heldout(self, model_dir: Path, heldout: pd.DataFrame) -> None:
        import json

        labels = id2label(json.loads((model_dir / "config.json").read_text()))
        self._label_ids(heldout, labels)

    def heldout_schema(self, model_dir: Path) -> HeldoutSchema:
        return self.schema

    def reads(self, heldout: Path) -> bool:
        return True  # no other task type recognises the same models

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
            size_bytes=onnx_path.stat().st_size,
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
