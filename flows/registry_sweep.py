"""registry-sweep: the safety net. Runs quantize-and-promote for every registered version that has no
decision yet: versions whose registration event was missed, or that another tool uploaded. A decided
version is never run again; a version whose runs keep failing is left alone after `max_failures`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.quantize_and_promote import quantize_and_promote
from quantgate.backends import AnyRecipe
from quantgate.bench import BenchSettings
from quantgate.search import SearchBudget
from quantgate.settings import Settings
from quantgate.thresholds import GateThresholds
from tasks import storage


@flow(name="registry-sweep", validate_parameters=True)
def registry_sweep(
    max_runs: int = 10,
    max_failures: int = 3,
    recipes: list[str | AnyRecipe] | None = None,
    thresholds: GateThresholds = GateThresholds(),  # noqa: B008 - pydantic defaults are immutable here
    bench: BenchSettings = BenchSettings(),  # noqa: B008
    budget: SearchBudget = SearchBudget(),  # noqa: B008
) -> list[dict[str, Any]]:
    settings = Settings()
    pending = storage.find_undecided(settings, max_failures)
    results = []
    for ref in pending[:max_runs]:
        state = quantize_and_promote(
            model=ref.name,
            version=ref.version,
            recipes=recipes,
            thresholds=thresholds,
            bench=bench,
            budget=budget,
            return_state=True,
        )
        results.append({"model": ref.name, "version": ref.version, "state": state.name})
    return results
