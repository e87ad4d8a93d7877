"""An artifact is a set of files: the model, its external data, the session settings it is served with,
and the side files (tokenizer or preprocessor), each with its size and sha256. The runtime that opens it
says which files the model is made of (`Runtime.files`), so a model over 2 GB (ONNX external data) is
uploaded, promoted, verified and pulled whole, like a small one."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from quantgate.backends import Servable, get_runtime
from quantgate.storage import sha256_file

ASSETS_DIR = "tokenizer"  # where the side files go beside the model (the promoted layout's name)


class ArtifactFile(BaseModel):
    path: str  # where it goes in the artifact's layout (relative)
    size: int
    sha256: str
    source: Path  # where it is on local disk


class Artifact(BaseModel):
    root: Path  # the model's folder
    model: str  # the model file's name
    runtime: str
    files: list[ArtifactFile]

    @classmethod
    def collect(cls, servable: Servable, assets: list[Path] | None = None) -> Artifact:
        """Every file of a servable (as its runtime lists them) and its side files under tokenizer/."""
        root = servable.path.parent
        local = {
            p.relative_to(root).as_posix(): p for p in get_runtime(servable.runtime).files(servable.path)
        }
        local |= {f"{ASSETS_DIR}/{p.name}": p for p in assets or []}
        return cls(
            root=root,
            model=servable.path.name,
            runtime=servable.runtime,
            files=[
                ArtifactFile(path=rel, size=p.stat().st_size, sha256=sha256_file(p), source=p)
                for rel, p in sorted(local.items())
            ],
        )

    def local_files(self) -> dict[str, Path]:
        """layout path -> local file: what a promotion uploads."""
        return {f.path: f.source for f in self.files}
