"""The champion: the promoted version serving now, pulled and verified, to be judged beside a new version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from quantgate.backends import Servable
from quantgate.errors import ConfigError
from quantgate.lifecycle._records import NO_TRUST
from quantgate.lifecycle.decisions import current
from quantgate.lifecycle.download import pull_promotion
from quantgate.registry import Manifest
from quantgate.signing import TrustedKeys
from quantgate.store import Store


@dataclass(frozen=True)
class Champion:
    """The promoted version serving now, pulled and verified, to be judged beside a new version."""

    version: str
    manifest: Manifest
    model_path: Path
    tokenizer_dir: Path  # the promoted assets folder (tokenizer or preprocessor)
    runtime: str = "onnxruntime"

    @property
    def servable(self) -> Servable:
        return Servable(self.model_path, self.runtime)


def pull_champion(
    store: Store, model: str, task: str, dest: Path, trusted: TrustedKeys = NO_TRUST
) -> Champion | None:
    """The model's current promoted version, every file verified (None for a first version, or when
    the current one is of another task type)."""
    pointer = current(store, model)
    if pointer is None:
        return None
    manifest, _ = pull_promotion(store, model, pointer.version, dest, trusted)
    if manifest.task != task:
        return None
    from quantgate.serving import servable_in

    try:
        servable = servable_in(dest, manifest)
    except (ValidationError, ConfigError):
        return None  # promoted by another tool, or an older recipe schema: nothing to run it with
    return Champion(
        version=pointer.version,
        manifest=manifest,
        model_path=servable.path,
        tokenizer_dir=dest / "tokenizer",
        runtime=servable.runtime,
    )
