"""What every recipe is, whatever its backend: a name, the backend that builds it, the nodes it keeps in
FP32; and what building one yields. Backends (quantgate/backends/) subclass `Recipe` with their own fields.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

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

    @property
    def calibrated(self) -> bool:
        """Whether building it runs the model on calibration data (the slow builds: the search starts them
        first)."""
        return False

    def keeping_fp32(self, nodes: list[str], name: str) -> Recipe:
        return self.model_copy(update={"name": name, "nodes_to_exclude": [*self.nodes_to_exclude, *nodes]})


class QuantizeResult(BaseModel):
    path: Path
    recipe: SerializeAsAny[Recipe]
    size_bytes: int
    op_counts: dict[str, int]
    quantized_matmuls: int
    float_matmuls: int
    fused_ops: dict[str, int] | None = None
    seconds: float = 0.0
    cached: bool = Field(False, description="copied from the build cache (quantgate/build_cache.py)")
