"""The sensitive-node fallback's generic parts: a ranked node, and which number of the worst nodes to keep
in FP32 next (grow 1, 2, 3, 4, 6, ... until a trial passes, then bisect back towards the fewest). How
nodes are ranked is the backend's (quantgate/backends/ort_sensitivity.py for ONNX Runtime)."""

from __future__ import annotations

from pydantic import BaseModel


class NodeSensitivity(BaseModel):
    node: str
    sqnr_db: float
    macs_per_token: int


def exclusion_steps(n_nodes: int, max_trials: int) -> list[int]:
    """How many of the worst nodes each trial keeps in FP32: 1, 2, 3, 4, 6, 8, 12, ... (fewest first,
    growing geometrically so a small trial budget still reaches far enough)."""
    steps: list[int] = []
    k = 1
    while k <= n_nodes and len(steps) < max_trials:
        steps.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    return steps


def next_exclusion(n_nodes: int, max_trials: int, tried: list[tuple[int, bool]]) -> int | None:
    """How many of the worst nodes the next fallback trial keeps in FP32, given each trial so far as
    (count, passed the accuracy gates); None = stop. The geometric steps run until one passes; as they
    may overshoot, the trials left then bisect between the largest failing and the smallest passing count,
    so the fewest nodes stay in FP32."""
    if len(tried) >= max_trials:
        return None
    passing = [k for k, ok in tried if ok]
    if not passing:
        steps = exclusion_steps(n_nodes, max_trials)
        return steps[len(tried)] if len(tried) < len(steps) else None
    fewest = min(passing)
    failed_below = max((k for k, ok in tried if not ok and k < fewest), default=0)
    return (failed_below + fewest) // 2 if fewest - failed_below > 1 else None
