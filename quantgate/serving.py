"""Open a promoted artifact, whatever its engine: the manifest names the recipe, the recipe its backend,
the backend its runtime (ONNX Runtime with its session settings, OpenVINO with its precision hint).

    quantgate pull minilm --to ./serving
    session = load_runtime(Path("./serving"), threads=1)
    (embedding,) = session.run(["sentence_embedding"], feeds)
"""

from __future__ import annotations

from pathlib import Path

from quantgate.backends import Servable, Session, get_quantizer, open_session, parse_recipe
from quantgate.errors import InvalidModelError
from quantgate.registry import Manifest


def servable_in(folder: Path, manifest: Manifest) -> Servable:
    """The artifact a pulled promotion serves, and the runtime that opens it."""
    recipe = parse_recipe(manifest.recipe)
    return Servable(folder / recipe.artifact_name, get_quantizer(recipe.backend).runtime)


def load_runtime(folder: Path, threads: int = 1) -> Session:
    """A session on the artifact `quantgate pull` put in `folder` (its manifest.json says which)."""
    try:
        manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(
            f"{folder} holds no readable manifest.json ({exc}): pull a promotion there with `quantgate pull`"
        ) from None
    return open_session(servable_in(folder, manifest), threads)
