"""Open a promoted artifact, whatever its engine: the manifest names the recipe, the recipe its backend,
the backend its runtime (ONNX Runtime with its session settings, OpenVINO with its precision hint).

    quantgate pull minilm --to ./serving
    session = load_runtime(Path("./serving"), threads=1)
    (embedding,) = session.run(["sentence_embedding"], feeds)

Before opening anything, every file is checked against the pulled manifest and, when trusted keys are
configured (QUANTGATE_TRUSTED_KEYS, or `trusted=`), the promotion's signature (quantgate/signing.py).
"""

from __future__ import annotations

from pathlib import Path

from quantgate.backends import Servable, Session, get_quantizer, open_session, parse_recipe
from quantgate.errors import InvalidModelError
from quantgate.registry import Manifest
from quantgate.signing import TrustedKeys, check_folder, trusted_keys


def servable_in(folder: Path, manifest: Manifest) -> Servable:
    """The artifact a pulled promotion serves, and the runtime that opens it."""
    recipe = parse_recipe(manifest.recipe)
    return Servable(folder / recipe.artifact_name, get_quantizer(recipe.backend).runtime)


def load_runtime(folder: Path, threads: int = 1, trusted: TrustedKeys | None = None) -> Session:
    """A session on the artifact `quantgate pull` put in `folder` (its manifest.json says which), after
    checking its files and signature; `trusted` defaults to QUANTGATE_TRUSTED_KEYS."""
    try:
        manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(
            f"{folder} holds no readable manifest.json ({exc}): pull a promotion there with `quantgate pull`"
        ) from None
    if trusted is None:
        from quantgate.settings import Settings

        trusted = trusted_keys(Settings())
    check_folder(folder, manifest, trusted)
    return open_session(servable_in(folder, manifest), threads)
