"""Recipes: named, serialisable descriptions of how an FP32 model becomes a cheaper one, and the one
function that builds a candidate from one.

A recipe is data: it round-trips through JSON unchanged, lands in the run report and the manifest, and
a flow parameter can carry a custom one. Its `backend` field says which `Quantizer` builds it
(quantgate/backends/); each backend declares its own recipe fields and its catalogue of named recipes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    WithJsonSchema,
)

from quantgate.bench import BASELINES
from quantgate.errors import ConfigError

RESERVED_NAMES = set(BASELINES)  # benchmark engine names of the baselines
NAME_PATTERN = r"^[a-z0-9][a-z0-9._+-]{0,79}$"
DEFAULT_BACKEND = "onnxruntime"


class Recipe(BaseModel):
    """What every recipe has; a backend's recipe class adds its own fields (extra ones are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    backend: str = DEFAULT_BACKEND
    nodes_to_exclude: list[str] = Field(default_factory=list, description="nodes kept in FP32")

    @property
    def precision(self) -> str:
        return "int8"

    @property
    def artifact_name(self) -> str:
        return f"model.{self.precision}.onnx"

    @property
    def kind(self) -> str:
        """A short word for tables ('dynamic', 'static'...)."""
        return self.backend

    @property
    def can_fall_back(self) -> bool:
        """Whether keeping nodes in FP32 is a way this recipe could pass (not for FP16, not for copies)."""
        return False

    def keeping_fp32(self, nodes: list[str], name: str) -> Recipe:
        return self.model_copy(update={"name": name, "nodes_to_exclude": [*self.nodes_to_exclude, *nodes]})


def parse_recipe(data: Any) -> Any:
    """A dict becomes the recipe class of the backend it names (default: ONNX Runtime)."""
    if isinstance(data, dict):
        from quantgate.backends import get_quantizer

        return get_quantizer(str(data.get("backend", DEFAULT_BACKEND))).recipe_type.model_validate(data)
    return data


# A field holding any backend's recipe: validated by its backend's class, serialised with all its fields.
AnyRecipe = Annotated[
    Recipe,
    BeforeValidator(parse_recipe),
    SerializeAsAny(),
    WithJsonSchema({"type": "object", "description": "a recipe: name, backend and the backend's fields"}),
]


class QuantizeResult(BaseModel):
    path: Path
    recipe: AnyRecipe
    size_bytes: int
    op_counts: dict[str, int]
    quantized_matmuls: int
    float_matmuls: int
    fused_ops: dict[str, int] | None = None
    seconds: float = 0.0


def catalogue() -> dict[str, Recipe]:
    from quantgate.backends import quantizers

    return {r.name: r for q in quantizers() for r in q.catalogue()}


def default_search() -> list[str]:
    from quantgate.backends import quantizers

    return [name for q in quantizers() for name in q.default_search()]


def get_recipe(name: str) -> Recipe:
    recipes = catalogue()
    try:
        return recipes[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {sorted(recipes)}") from None


def resolve_recipes(items: list[str | Recipe] | None) -> list[Recipe]:
    """Names from the catalogue or full recipes (a flow parameter may carry either); None = default search."""
    recipes = [get_recipe(i) if isinstance(i, str) else parse_recipe(i) for i in (items or default_search())]
    if not recipes:
        raise ConfigError(
            "the recipe list is empty: name at least one recipe, or pass none for the default search"
        )
    names = [r.name for r in recipes]
    reserved = sorted(set(names) & RESERVED_NAMES)
    if reserved:
        raise ConfigError(f"recipe names {reserved} are reserved for the FP32 baselines: rename the recipe")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"recipe names must be unique within a run; repeated: {dupes}")
    return recipes


def load_recipe_file(path: Path) -> list[Recipe]:
    """A JSON list of recipes (objects) or catalogue names."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read recipes from {path} ({exc}): give a JSON list of recipes") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a JSON list of recipes or recipe names")
    try:
        return resolve_recipes([d if isinstance(d, str) else parse_recipe(d) for d in data])
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid recipe: {exc.errors()[0]['msg']}") from None


def build_candidate(
    recipe: Recipe,
    fp32: Path,
    out_dir: Path,
    *,
    prepared: dict[str, Any] | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> QuantizeResult:
    """Build one candidate with its backend's quantizer; `prepared` holds each backend's shared work."""
    from quantgate.backends import get_quantizer

    quantizer = get_quantizer(recipe.backend)
    return quantizer.build(
        recipe, fp32, out_dir, prepared=(prepared or {}).get(recipe.backend), calibration=calibration
    )
