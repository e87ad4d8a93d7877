"""Export a Hugging Face model folder to ONNX, check the graph and check it reproduces PyTorch.

Why the TorchScript exporter (`dynamo=False`) with a named-argument wrapper: with transformers 5 it
exports MiniLM in < 1 s (dynamo: ~5 s) and its graph is what ONNX Runtime's transformer optimizer and
`quant_pre_process` understand (measured with torch 2.13: `quant_pre_process` fails on the dynamo
export). Passing positional args to the bare model fails (`got multiple values for argument
'use_cache'`), hence the wrapper.
Attention is loaded as "eager": SDPA exports leave ORT's fuser 0 Attention nodes to fuse.

A model whose weights reach QUANTGATE_EXTERNAL_DATA_MIN_BYTES (256 MiB; past 2 GiB, the protobuf limit of
one file, it must) is saved with ONNX external data: `model.onnx` (the graph) and `model.onnx.data` (every
tensor over 1 KiB) side by side, the weights written one at a time as torch's exporter hands them over, so
that they never sit in memory as one proto (`_install_weight_deferral`; 0 forces it: the CI-sized twin).
Every later stage opens the model by its path, so it finds the data.
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from quantgate.errors import ExportError, InvalidModelError

OPSET = 17


class ExportResult(BaseModel):
    """The FP32 ONNX export and its side files (the tokenizer or preprocessor; none for a task that reads
    numbers). `tokenizer_files` keeps its name: cached entries and reports carry it."""

    onnx_path: Path
    tokenizer_files: list[Path] = Field(default_factory=list)
    input_names: list[str]
    output_names: list[str]
    opset: int
    pooling: str = ""
    normalize: bool = False
    max_abs_diff_vs_torch: dict[str, float]
    parity_samples: int
    size_bytes: int

    @property
    def assets_dir(self) -> Path:
        """The folder of the side files, handed to the task type (the export's own folder when none)."""
        return self.tokenizer_files[0].parent if self.tokenizer_files else self.onnx_path.parent


def check_model_folder(
    model_dir: Path, allow_pickle: bool = False, auto_class: str = "AutoModel", needs: str = "tokenizer"
) -> dict[str, Any]:
    """Refuse what cannot be loaded safely, with the way out in the message. `auto_class` is the
    transformers class that loads it (the weights are checked against its architecture); `needs` the side
    files it cannot run without ("tokenizer", "preprocessor" or "")."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InvalidModelError(f"{model_dir} has no config.json: register a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"config.json is not valid JSON ({exc}): re-save the model folder") from None
    if not config.get("architectures") and not config.get("model_type"):
        raise InvalidModelError(
            "config.json names no architectures or model_type: save it with save_pretrained()"
        )
    if not (model_dir / "model.safetensors").is_file():
        if (model_dir / "pytorch_model.bin").is_file() and not allow_pickle:
            raise InvalidModelError(
                "only a pickle checkpoint (pytorch_model.bin) was found: pickles can run code when loaded. "
                "Convert it to model.safetensors, or pass --allow-pickle if you trust its source"
            )
        if not (model_dir / "pytorch_model.bin").is_file():
            raise InvalidModelError(
                f"{model_dir} has no model.safetensors: save the model with safe_serialization"
            )
    weights = model_dir / "model.safetensors"
    if weights.is_file():
        _check_safetensors_header(weights)
        check_weights_match_architecture(model_dir, weights, auto_class)
    for onnx_file in model_dir.rglob("*.onnx"):
        check_external_data(onnx_file)
    if needs == "tokenizer" and not any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InvalidModelError(
            f"{model_dir} has no tokenizer (tokenizer.json or vocab.txt): save the tokenizer too"
        )
    if needs == "preprocessor" and not (model_dir / "preprocessor_config.json").is_file():
        raise InvalidModelError(
            f"{model_dir} has no preprocessor_config.json: save the image processor with save_pretrained() "
            "too"
        )
    return config


def _check_safetensors_header(path: Path) -> None:
    """Parse only the header (cheap, no tensor is read): catches truncated or non-safetensors files."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            if not list(fh.keys()):
                raise InvalidModelError(f"{path.name} holds no tensors: re-save the model")
    except (SafetensorError, OSError) as exc:
        raise InvalidModelError(
            f"{path.name} is not a readable safetensors file ({exc}): re-save the model"
        ) from None


def _patterns_match(patterns: Any, key: str) -> bool:
    import re

    if isinstance(patterns, dict):
        patterns = list(patterns)
    return any(re.search(p, key) for p in (patterns or []))


def _weights_problem(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:4]) + (", …" if len(keys) > 4 else "")
            parts.append(f"{len(keys)} {what} ({shown})")
    return "; ".join(parts)


def _auto(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def check_weights_match_architecture(model_dir: Path, weights: Path, auto_class: str = "AutoModel") -> None:
    """Every weight the architecture in config.json needs is in model.safetensors with its shape, and
    nothing else is: otherwise transformers would randomly initialise what is missing (with a warning)
    and the run would quantize, gate and promote a model nobody trained. Checked from the safetensors
    header and a skeleton of the architecture on torch's meta device: no tensor data is read."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        with torch.device("meta"):
            skeleton = _auto(auto_class).from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidModelError(
            f"config.json does not describe an architecture transformers can build ({exc}): re-save the "
            "model with save_pretrained()"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    buffers = {name for name, _ in skeleton.named_buffers()}  # transformers skips stored buffers
    with safe_open(str(weights), framework="np") as fh:
        stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - not a dict
    prefix = f"{skeleton.base_model_prefix}." if skeleton.base_model_prefix else ""
    if prefix and not set(stored) & set(expected):
        # A checkpoint of a model with a head (bert.encoder…) read by the base model: transformers
        # drops the prefix; the head's own weights are then unexpected.
        stored = {k.removeprefix(prefix): v for k, v in stored.items()}
    tied = getattr(skeleton, "_tied_weights_keys", None) or []
    ignore_missing = getattr(skeleton, "_keys_to_ignore_on_load_missing", None) or []
    ignore_unexpected = getattr(skeleton, "_keys_to_ignore_on_load_unexpected", None) or []
    missing = sorted(
        k
        for k in set(expected) - set(stored)
        if not _patterns_match(tied, k) and not _patterns_match(ignore_missing, k)
    )
    unexpected = sorted(
        k
        for k in set(stored) - set(expected)
        if k not in buffers and not _patterns_match(ignore_unexpected, k)
    )
    mismatched = sorted(
        f"{k} {stored[k]} vs {expected[k]}" for k in set(stored) & set(expected) if stored[k] != expected[k]
    )
    if missing or unexpected or mismatched:
        arch = ", ".join(config.architectures or [type(skeleton).__name__])
        raise InvalidModelError(
            f"model.safetensors does not match the architecture in config.json ({arch}): "
            f"{_weights_problem(missing, unexpected, mismatched)} of {len(expected)} weights. Loading it "
            "would leave weights randomly initialised: re-save the model with save_pretrained() from the "
            "architecture its config.json names"
        )


def check_external_data(onnx_path: Path) -> None:
    """Refuse an ONNX file whose external-data locations leave its folder: ONNX Runtime would read any
    file the path points at (path traversal, e.g. location='../../etc/passwd')."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = onnx_path.parent.resolve()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends for garbage
        raise InvalidModelError(f"{onnx_path.name} is not a valid ONNX file ({type(exc).__name__})") from None

    def tensors(graph: Any) -> Any:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise InvalidModelError(
                f"{onnx_path.name}: tensor {tensor.name!r} reads external data from {location!r}, outside "
                "its folder: refusing to load it (re-export with external data beside the model)"
            )


def load_hf_model(model_dir: Path, auto_class: str = "AutoModel", allow_pickle: bool = False) -> Any:
    """The model in eval mode, loaded by `auto_class`, every weight accounted for (eager attention)."""
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would flood the run logs
    try:
        model, loading = _auto(auto_class).from_pretrained(
            model_dir,
            local_files_only=True,
            attn_implementation="eager",
            use_safetensors=not allow_pickle,
            weights_only=True,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise InvalidModelError(
            f"cannot load the model in {model_dir.name}: {exc}. Re-save it with save_pretrained()"
        ) from None
    # transformers only warns about these and initialises the missing weights at random.
    problem = _weights_problem(
        sorted(loading.get("missing_keys", [])),
        sorted(loading.get("unexpected_keys", [])),
        sorted(str(k) for k in loading.get("mismatched_keys", [])),
    )
    if problem or loading.get("error_msgs"):
        raise InvalidModelError(
            f"the weights in {model_dir.name} do not load completely ({problem or loading['error_msgs']}): "
            "re-save the model with save_pretrained() from the architecture its config.json names"
        )
    return model.eval()


# Tokenizers already loaded, per thread (a fast tokenizer called from two threads at once can fail, "Already
# borrowed") and per folder content: a run loads the same one for the export, the calibration, every model's
# outputs and the benchmark (~30 ms of CPU a load of MiniLM's).
_TOKENIZERS = threading.local()
_TOKENIZERS_KEPT = 4


def _folder_state(folder: Path) -> tuple[str, tuple[tuple[str, int, int], ...]] | None:
    """The folder and its files' names, sizes and modification times (None: no such folder)."""
    try:
        files = [(p.name, p.stat()) for p in folder.iterdir() if p.is_file()]
        return str(folder.resolve()), tuple(sorted((n, st.st_size, st.st_mtime_ns) for n, st in files))
    except OSError:
        return None


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in `folder`; the same object again to the same thread while the folder's files
    are unchanged."""
    from transformers import AutoTokenizer

    state = _folder_state(folder)
    kept = _TOKENIZERS.__dict__.setdefault("kept", OrderedDict())
    if state is not None and state in kept:
        kept.move_to_end(state)
        return kept[state]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"cannot load the tokenizer in {folder.name}: {exc}") from None
    if state is not None:
        kept[state] = tokenizer
        while len(kept) > _TOKENIZERS_KEPT:
            kept.popitem(last=False)
    return tokenizer


INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def tokenize(
    tokenizer: Any, texts: list[str], max_length: int, pad_to_max: bool = False
) -> dict[str, np.ndarray]:
    enc = tokenizer(
        texts,
        padding="max_length" if pad_to_max else True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    out = {name: enc[name].astype(np.int64) for name in INPUT_NAMES if name in enc}
    out.setdefault("token_type_ids", np.zeros_like(out["input_ids"]))
    return out


def model_inputs(model: Any) -> list[str]:
    """The text inputs a transformers model takes, in INPUT_NAMES order (DistilBERT has no token types)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return [n for n in INPUT_NAMES if n in accepted]


def external_data_min_bytes() -> int:
    """QUANTGATE_EXTERNAL_DATA_MIN_BYTES (settings.ExportSettings; default 256 MiB): weights of this many
    bytes or more go to external data, written one tensor at a time as torch hands them over; 0 forces it.
    Read where the export runs, as the held-out limits are, so that the task types' `export` does not carry
    a storage-layout setting through every family."""
    from pydantic import ValidationError

    from quantgate.errors import ConfigError
    from quantgate.settings import ExportSettings

    try:
        return ExportSettings().external_data_min_bytes
    except ValidationError as exc:
        raise ConfigError(
            f"bad QUANTGATE_EXTERNAL_DATA_MIN_BYTES ({exc.errors()[0]['msg']}): set a whole number of bytes "
            ">= 0 (0 writes every export with external data)"
        ) from None


def data_file(onnx_path: Path) -> Path:
    """Where an export's external data goes: beside it, `model.onnx` -> `model.onnx.data` (the name ONNX
    Runtime's quantizers give theirs, so every artifact's data file reads the same)."""
    return onnx_path.with_name(onnx_path.name + ".data")


def weight_bytes(model: Any) -> int:
    """Bytes of every tensor in a loaded model (initializers, and constants in node attributes)."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(t.ByteSize() for t in _get_all_tensors(model))


def external_locations(onnx_path: Path) -> set[str]:
    """The external-data files a model's tensors name (relative to its folder; read without the data).
    Remembered per file version (its resolved path, inode, size and mtime in ns): a build asked this of
    the same 90 MB graph six times, each a full protobuf parse (0.3 s of a 2.6 s MiniLM build)."""
    resolved = onnx_path.resolve()
    st = resolved.stat()
    return set(_external_locations(str(resolved), st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=256)
def _external_locations(path: str, _ino: int, _size: int, _mtime_ns: int) -> frozenset[str]:
    import onnx
    from onnx.external_data_helper import _get_all_tensors
    from onnx.external_data_helper import uses_external_data as external

    model = onnx.load(path, load_external_data=False)
    return frozenset(
        entry.value
        for tensor in _get_all_tensors(model)
        if external(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    )


def uses_external_data(onnx_path: Path) -> bool:
    """Whether any tensor of the file is stored outside it."""
    return bool(external_locations(onnx_path))


def save_onnx(model: Any, onnx_path: Path, external: bool) -> None:
    """Save a loaded model as one file, or with every tensor over 1 KiB in one `<name>.data` file beside it
    (onnx's external-data format: how a model past the 2 GiB protobuf limit is stored)."""
    import onnx

    data_file(onnx_path).unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(
        model,
        str(onnx_path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_file(onnx_path).name,
        size_threshold=1024,
    )


def model_files_size(onnx_path: Path) -> int:
    """Bytes of the model file and its external data, if any."""
    data = data_file(onnx_path)
    return onnx_path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


# The export writing its weights into external data itself: see `_install_weight_deferral`. Up to 2 GiB
# less 256 MiB for the graph: past the protobuf limit torch's exporter writes external data on its own and
# asserts that weights are not also deferred.
DEFER_MAX_BYTES = 2**31 - 256 * 2**20
_DEFERRAL = threading.local()
_DEFERRAL_LOCK = threading.Lock()


def _install_weight_deferral() -> bool:
    """Let torch's TorchScript exporter hand the weights over one tensor at a time (True when installed).

    Asked for a model's ONNX bytes, torch's C++ exporter builds the ModelProto with a copy of every weight,
    serializes it (a second copy) and returns Python bytes (a third), while the module's own weights are
    still in memory: a random BERT-large (1.34 GB) took a process from 0.8 to 6.3 GB. Its
    `defer_weight_export` mode returns the graph with a placeholder per initializer and the weights apart
    (name -> bytes); quantgate's exports use that mode when the weights go to external data anyway and
    write each one into `<model>.data` as onnx's own writer would (`_externalize`), so the graph torch
    writes is small. Installed once per process; an export that does not ask (`_DEFERRAL.data_path`
    unset) runs torch's exporter exactly as before. False (nothing changed) on a torch without it."""
    import torch

    with _DEFERRAL_LOCK:
        graph = getattr(torch._C, "Graph", None)
        export = getattr(graph, "_export_onnx", None)
        if export is None:
            return False
        if getattr(export, "quantgate_deferral", False):
            return True

        def export_onnx(self: Any, params: Any, opset: Any, axes: Any, defer: bool, *rest: Any) -> Any:
            data_path = getattr(_DEFERRAL, "data_path", None)
            if data_path is None or defer:
                return export(self, params, opset, axes, defer, *rest)
            proto, weights, *more = export(self, params, opset, axes, True, *rest)
            return (_externalize(proto, weights, data_path), {}, *more)

        export_onnx.quantgate_deferral = True  # type: ignore[attr-defined]
        graph._export_onnx = export_onnx
        return True


def _externalize(proto: bytes, weights: dict[str, bytes], data_path: Path) -> bytes:
    """The graph torch deferred the weights of (each initializer's data a placeholder, the bytes in
    `weights` by name), with every initializer of 1 KiB or more written into `data_path` and referenced from
    there, and the smaller ones put back in the graph: the layout `save_onnx(external=True)` writes, one
    tensor in memory at a time (each is dropped from `weights` once written)."""
    import sys

    import onnx
    from onnx.external_data_helper import _get_initializer_tensors, save_external_data, set_external_data

    model = onnx.load_model_from_string(proto)
    data_path.unlink(missing_ok=True)
    data_path.touch()
    for tensor in _get_initializer_tensors(model):
        raw = weights.pop(tensor.name, None)
        if raw is None:
            continue
        tensor.raw_data = raw
        del raw
        if sys.getsizeof(tensor.raw_data) >= 1024:  # onnx's size_threshold test, as save_onnx uses it
            set_external_data(tensor, data_path.name)
            save_external_data(tensor, str(data_path.parent))
            tensor.ClearField("raw_data")
    if weights:
        raise ExportError(
            f"torch deferred {len(weights)} weight(s) the graph has no initializer for "
            f"({', '.join(sorted(weights)[:3])}): export with QUANTGATE_EXTERNAL_DATA_MIN_BYTES above the "
            "model's weights to write it in one file"
        )
    return model.SerializeToString()


def _return_freed_memory() -> None:
    """Hand the heap's freed pages back to the kernel (glibc's `malloc_trim`; nothing elsewhere). The
    weights torch handed over were freed one by one as they were written, but glibc keeps freed heap memory
    for the process to reuse: a random BERT-large's export left 3.2 GB resident instead of 1.9 GB."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):  # AttributeError: a C library without it
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _module_weight_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers, each storage once (tied weights share one)."""
    import itertools

    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in itertools.chain(module.parameters(), module.buffers())
    }
    return sum(storages.values())


def export_module(
    module: Any,
    onnx_path: Path,
    example: dict[str, np.ndarray],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    name: str,
    external_min_bytes: int | None = None,
) -> None:
    """TorchScript-export a module taking `example`'s named inputs (in that order), save it as one file, or
    with its weights in `<name>.data` beside it when they reach `external_min_bytes` (None: the setting,
    `external_data_min_bytes()`), and run onnx's full checker on it."""
    import shutil

    import onnx
    import torch

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # Past 2 GiB the TorchScript exporter writes one external file per tensor, named after the tensor,
    # beside the model: it exports into a folder of its own, which is removed once the model is re-saved.
    scratch = onnx_path.parent / f".{onnx_path.name}.export"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    exported = scratch / onnx_path.name
    threshold = external_data_min_bytes() if external_min_bytes is None else external_min_bytes
    # Weights going to external data are written there one at a time as torch hands them over, never as
    # one proto in memory (`_install_weight_deferral`). Not near or past 2 GiB: there torch writes each
    # weight to a file of its own (and refuses to defer them), and the files are gathered below.
    weights = _module_weight_bytes(module)
    deferred = threshold <= weights < DEFER_MAX_BYTES and _install_weight_deferral()
    _DEFERRAL.data_path = data_file(exported) if deferred else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript tracer warnings about python control flow
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(v) for v in example.values()),
                str(exported),
                input_names=list(example),
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,
            )
        _DEFERRAL.data_path = None
        if deferred:
            _return_freed_memory()
        data_file(onnx_path).unlink(missing_ok=True)
        written = sorted(p.name for p in scratch.iterdir())
        if deferred and written == sorted([exported.name, data_file(exported).name]):
            # The layout wanted, written by `_externalize`: moved into place, data first.
            data_file(exported).replace(data_file(onnx_path))
            exported.replace(onnx_path)
        elif written == [onnx_path.name] and exported.stat().st_size < threshold:
            # One file, below the external-data threshold: already the layout wanted, so it is moved, not
            # loaded and saved again. The round trip held the proto and its serialized bytes beside the
            # module's weights (BERT-large: benchmarks/export_memory.py --one-file).
            exported.replace(onnx_path)
        else:
            model_proto = onnx.load(str(exported))
            shutil.rmtree(scratch)
            save_onnx(model_proto, onnx_path, external=weight_bytes(model_proto) >= threshold)
            del model_proto
        # On the path, not the proto: the checker then reads a model with external data (and one past
        # 2 GiB, which cannot be one proto in memory) from where its data is.
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"ONNX export of {name} failed: {exc}") from None
    finally:
        _DEFERRAL.data_path = None
        shutil.rmtree(scratch, ignore_errors=True)


def parity_vs_torch(
    module: Any, onnx_path: Path, batches: list[dict[str, np.ndarray]], output_names: list[str], atol: float
) -> dict[str, float]:
    """Worst |ONNX - PyTorch| per output over the batches; an ExportError beyond `atol`."""
    import onnxruntime as ort
    import torch

    # ORT directly, not a backend's runtime: the export is checked as the graph it is, before any
    # backend's session settings (and the backends sit above this module).
    options = ort.SessionOptions()
    # The graph as exported, without ORT's fusions: they rewrite it into new copies of its weights beside
    # the PyTorch module (BERT-large: 4.49 -> 4.10 GB peak, benchmarks/export_memory.py).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(output_names, 0.0)
    for feeds in batches:
        with torch.no_grad():
            out = module(*(torch.from_numpy(v) for v in feeds.values()))
        ref = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        if not all(np.isfinite(r).all() for r in ref):
            raise InvalidModelError(
                "the PyTorch model outputs NaN or Inf on the held-out inputs: check its weights"
            )
        got = session.run(output_names, feeds)
        for name, r, g in zip(output_names, ref, got, strict=True):
            worst[name] = max(worst[name], float(np.abs(r - g).max()))
    top = max(worst.values())
    if not np.isfinite(top) or top > atol:
        samples = sum(len(next(iter(b.values()))) for b in batches)
        raise ExportError(
            f"exported ONNX graph differs from PyTorch by {top:.3g} (> export_atol {atol:g}) on "
            f"{samples} held-out inputs: the export is wrong, not the quantization"
        )
    return worst
