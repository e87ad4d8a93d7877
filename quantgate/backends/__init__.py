"""Backends: how an FP32 model becomes a cheaper one (a `Quantizer`) and how an artifact is opened and run
(a `Runtime`). Each backend is one module in this folder whose classes register themselves by name when
it is imported (after Olive's `Pass.__init_subclass__` registry); a recipe names its backend, a servable
names its runtime. ONNX Runtime is the first (`backends/onnxruntime.py`), and nothing outside that module
imports ONNX Runtime's quantization API.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

import numpy as np
from pydantic import BeforeValidator, SerializeAsAny, WithJsonSchema

from quantgate.errors import ConfigError
from quantgate.recipe import DEFAULT_BACKEND, QuantizeResult, Recipe

if TYPE_CHECKING:
    from quantgate.bench import Engine
    from quantgate.sensitivity import NodeSensitivity

# Backends shipped with quantgate, imported on first lookup (a test or a plugin imports its own module).
BUILTIN = ("quantgate.backends.onnxruntime", "quantgate.backends.openvino")


class Session(Protocol):
    """What a runtime hands back: ONNX Runtime's InferenceSession has this shape."""

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Servable:
    """An artifact on local disk and the runtime that opens it."""

    path: Path
    runtime: str = "onnxruntime"


@dataclass(frozen=True)
class AccuracyTarget:
    """What a quantizer that tunes itself against accuracy (NNCF's accuracy control) is handed by the search:
    the task metric of a servable on the run's evaluation split (oriented so that higher is better), the
    drop the run allows (its `max_task_metric_drop`), and model inputs of the evaluation rows (to rank
    layers by how much their outputs move)."""

    metric: Callable[[Servable], float]
    max_drop: float
    feeds: Callable[[], list[dict[str, np.ndarray]]]


class Runtime(ABC):
    """Open, run and describe an artifact; apply the session settings stored beside it."""

    name: ClassVar[str]
    # The distributions that run the artifact (its engine): the manifest records the versions it was judged
    # with, and `quantgate pull` warns when the local ones differ.
    packages: ClassVar[tuple[str, ...]] = ()
    # One session opened with one thread runs calls from several threads at once, each on its calling
    # thread (ONNX Runtime's `InferenceSession.run` is thread-safe): an evaluation then spreads its batches
    # over the cores without changing them. False: one call at a time (an OpenVINO infer request).
    concurrent_runs: ClassVar[bool] = False
    registry: ClassVar[dict[str, type[Runtime]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Runtime.registry[cls.name] = cls

    @abstractmethod
    def session(self, path: Path, threads: int) -> Session: ...

    @abstractmethod
    def files(self, path: Path) -> list[Path]:
        """Every file the artifact is made of (the model, its external data, its session settings): what
        is uploaded, promoted, verified and pulled as one."""

    def engine(self, name: str, path: Path, threads: int) -> Engine:
        """A benchmark engine running one request's feeds per call."""
        from quantgate.bench import Engine

        def load() -> Any:
            sess = self.session(path, threads)
            return lambda feeds: sess.run(None, feeds)

        return Engine(name=name, load=load, size_bytes=sum(f.stat().st_size for f in self.files(path)))


class Quantizer(ABC):
    """Build one candidate from the FP32 model with one recipe of this backend."""

    name: ClassVar[str]
    recipe_type: ClassVar[type[Recipe]]
    runtime: ClassVar[str] = "onnxruntime"
    packages: ClassVar[tuple[str, ...]] = ()  # the distributions it builds with: the report records them
    registry: ClassVar[dict[str, type[Quantizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Quantizer.registry[cls.name] = cls

    def catalogue(self) -> list[Recipe]:
        """Named recipes this backend offers (the CLI's --recipe, the default search)."""
        return []

    def default_search(self) -> list[str]:
        return []

    def prepare(
        self, recipes: list[Recipe], fp32: Path, model_dir: Path, out_dir: Path
    ) -> tuple[Any, list[str]]:
        """Work shared by several recipes, done once per run (ORT: the transformer fusion); returns it and
        any warnings for the report."""
        return None, []

    @abstractmethod
    def build(
        self,
        recipe: Recipe,
        fp32: Path,
        out_dir: Path,
        *,
        prepared: Any = None,
        calibration: list[dict[str, np.ndarray]] | None = None,
        target: AccuracyTarget | None = None,
    ) -> QuantizeResult:
        """`target` is given by the search (None when a candidate is built outside it); a quantizer that does
        not tune against accuracy ignores it."""

    def build_inputs(self, recipe: Recipe, prepared: Any) -> list[Path] | None:
        """The files a build of `recipe` reads besides the FP32 graph and the calibration batches (their
        content is part of the build cache's key, quantgate/build_cache.py); None when the build depends on
        more than that (what `prepare` made in memory, the run's own metric), so it is never taken from the
        cache. None by default: a backend opts in by naming everything its build reads."""
        return None

    def graph_of(self, recipe: Recipe) -> dict[str, Any]:
        """What of a recipe its built graph depends on: the build cache's key (by default every field).
        Two recipes with the same value build the same files, so one build serves both (`settle` then
        writes what differs beside them)."""
        return recipe.model_dump(mode="json")

    def settle(self, recipe: Recipe, result: QuantizeResult) -> QuantizeResult:
        """Called on a build taken from the cache, possibly made for another recipe of the same graph:
        writes this recipe's own side files (nothing by default) and returns the result as this recipe's."""
        del recipe  # a backend with side files of its own overrides this
        return result

    def fallback_source(self, recipe: Recipe, fp32: Path, prepared: Any) -> Path:
        """The graph the sensitive-node fallback ranks nodes of."""
        return fp32

    def rank_sensitive_nodes(
        self, recipe: Recipe, source: Path, calibration: list[dict[str, np.ndarray]]
    ) -> list[NodeSensitivity]:
        """Nodes ranked by how much their quantization hurts; [] = this backend has no fallback."""
        return []


def _load_builtin() -> None:
    """The built-in backends, then the plugins' (quantgate/plugins.py)."""
    from quantgate.plugins import load_plugins

    for module in BUILTIN:
        importlib.import_module(module)
    load_plugins()


def get_quantizer(name: str) -> Quantizer:
    _load_builtin()
    try:
        return Quantizer.registry[name]()
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}: choose one of {sorted(Quantizer.registry)} (a recipe's 'backend')"
        ) from None


def get_runtime(name: str) -> Runtime:
    _load_builtin()
    try:
        return Runtime.registry[name]()
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}: choose one of {sorted(Runtime.registry)}") from None


def backend_packages(backend: str) -> tuple[str, ...]:
    """The distributions a candidate of `backend` depends on: its quantizer's, then its runtime's."""
    quantizer = get_quantizer(backend)
    return tuple(dict.fromkeys((*quantizer.packages, *get_runtime(quantizer.runtime).packages)))


def engine_packages(backend: str) -> tuple[str, ...]:
    """The distributions that run an artifact `backend` built (its runtime's)."""
    return get_runtime(get_quantizer(backend).runtime).packages


def quantizers() -> list[Quantizer]:
    _load_builtin()
    return [cls() for cls in Quantizer.registry.values()]


def open_session(servable: Servable, threads: int) -> Session:
    return get_runtime(servable.runtime).session(servable.path, threads)


def parse_recipe(data: Any) -> Any:
    """A dict becomes the recipe class of the backend it names (default: ONNX Runtime)."""
    if isinstance(data, dict):
        return get_quantizer(str(data.get("backend", DEFAULT_BACKEND))).recipe_type.model_validate(data)
    return data


# A field holding any backend's recipe: validated by its backend's class, serialised with all its fields.
AnyRecipe = Annotated[
    Recipe,
    BeforeValidator(parse_recipe),
    SerializeAsAny(),
    WithJsonSchema({"type": "object", "description": "a recipe: name, backend and the backend's fields"}),
]
