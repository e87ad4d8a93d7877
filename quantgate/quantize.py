"""Recipes: named, serialisable descriptions of how an FP32 model becomes a cheaper one, and the one
function that builds a candidate from one.

A recipe is data: it round-trips through JSON unchanged, lands in the run report and the manifest, and
a flow parameter can carry a custom one. Its `backend` field says which `Quantizer` builds it
(quantgate/backends/); each backend declares its own recipe fields and its catalogue of named recipes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from quantgate.backends import AccuracyTarget, get_quantizer, get_runtime, parse_recipe, quantizers
from quantgate.bench import BASELINES
from quantgate.build_cache import build_key, cached_build
from quantgate.errors import ConfigError
from quantgate.recipe import QuantizeResult, Recipe

RESERVED_NAMES = set(BASELINES)  # benchmark engine names of the baselines


def catalogue() -> dict[str, Recipe]:
    return {r.name: r for q in quantizers() for r in q.catalogue()}


def default_search() -> list[str]:
    return [name for q in quantizers() for name in q.default_search()]


def get_recipe(name: str) -> Recipe:
    recipes = catalogue()
    try:
        return recipes[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {sorted(recipes)}") from None


def resolve_recipes(items: list[str | Recipe] | None, default: tuple[str, ...] = ()) -> list[Recipe]:
    """Names from the catalogue or full recipes (a flow parameter may carry either); None = `default` (a
    task type's own search), or the backends' default search."""
    chosen = items or list(default) or default_search()
    recipes = [get_recipe(i) if isinstance(i, str) else parse_recipe(i) for i in chosen]
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
    target: AccuracyTarget | None = None,
    cache_root: Path | None = None,
) -> QuantizeResult:
    """Build one candidate with its backend's quantizer; `prepared` holds each backend's shared work. With
    `cache_root`, a build whose inputs are files is taken from (or added to) the build cache there."""
    quantizer = get_quantizer(recipe.backend)
    shared = (prepared or {}).get(recipe.backend)

    def build(out: Path) -> QuantizeResult:
        return quantizer.build(recipe, fp32, out, prepared=shared, calibration=calibration, target=target)

    inputs = quantizer.build_inputs(recipe, shared) if cache_root is not None else None
    if cache_root is None or inputs is None:
        return build(out_dir)
    graphs = [*get_runtime("onnxruntime").files(fp32), *inputs]
    key = build_key(recipe, quantizer, graphs, calibration)
    result = cached_build(cache_root, key, recipe, out_dir, build, get_runtime(quantizer.runtime).files)
    return quantizer.settle(recipe, result) if result.cached else result
