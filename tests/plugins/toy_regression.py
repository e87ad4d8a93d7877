"""A second task type, written the way a team would add one, outside quantgate's shared modules: a
regression head (a small MLP trained on scikit-learn's diabetes data, real data shipped with the
package) judged by mean absolute error, lower is better, with a limit and a gate of its own.

It is one class on `ResampledTaskType` (which writes reference / champion / evaluate) and one
`register_task_type` line; gates.py, report.py, plots.py, cli.py and the flows
are not edited for it (tests/integration/test_seams.py runs it through the real flow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from quantgate.backends import Servable, open_session
from quantgate.bench import BenchReport, BenchSettings, draw_requests, run_benchmark
from quantgate.errors import ExportError, InvalidModelError
from quantgate.evaluate import parity_report
from quantgate.export import OPSET, ExportResult
from quantgate.gates import GateSpec, Limit, Thresholds, judged_by
from quantgate.heldout import HeldoutSchema
from quantgate.stats import bootstrap_indices, percentile_interval
from quantgate.tasktypes import (
    Column,
    Comparison,
    PlotAxis,
    Reference,
    ResampledTaskType,
    TaskMetric,
    engines_for,
    register_task_type,
)

FEATURES = [f"f{i}" for i in range(10)]
HIDDEN = 32


def _module(hidden: int) -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )


def train(out: Path, heldout_csv: Path, seed: int = 0) -> None:
    """Train on the first 342 rows of the diabetes set (seconds); the other 100 rows are the held-out."""
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    torch.manual_seed(seed)
    model = _module(HIDDEN)
    xt, yt = torch.tensor(x[:342], dtype=torch.float32), torch.tensor(y[:342], dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(model(xt).squeeze(1), yt)
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "toy-mlp", "hidden": HIDDEN}))
    frame = pd.DataFrame(x[342:], columns=FEATURES)
    frame["target"] = y[342:]
    frame.to_csv(heldout_csv, index=False)


class ToyRegression(ResampledTaskType):
    name = "toy-regression"
    recognised_by = "config.json model_type toy-mlp"
    heldout_format = "csv"
    schema = HeldoutSchema(
        columns={**dict.fromkeys(FEATURES, "score"), "target": "score"},
        score_min=-1e6,
        score_max=1e6,
        min_rows=20,
    )
    metric = TaskMetric(name="mae", higher_is_better=False)
    default_recipes: ClassVar[tuple[str, ...]] = ()
    limits: ClassVar[tuple[Limit, ...]] = (
        Limit(
            name="max_mae_vs_mean",
            default=0.9,
            gt=0,
            help="toy regression: FP32 MAE / MAE of predicting the mean (upper 95% bound)",
        ),
        Limit(
            name="max_prediction_shift",
            default=0.05,
            ge=0,
            help="toy regression: mean |candidate - FP32| prediction / target std",
        ),
    )
    columns: ClassVar[tuple[Column, ...]] = (Column(metric="prediction_shift"),)
    plot_axes: ClassVar[tuple[PlotAxis, ...]] = (
        PlotAxis(
            metric="prediction_shift", label="prediction shift / target std", limit="max_prediction_shift"
        ),
    )

    gate_specs: ClassVar[tuple[GateSpec, ...]] = judged_by(
        evidence=(
            GateSpec(
                name="FP32 beats the mean",
                metric="mae_vs_mean",
                op="<=",
                limit="max_mae_vs_mean",
                kind="evidence",
                judge="upper",
                description="FP32 MAE / MAE of always predicting the held-out mean",
            ),
        ),
        quality=(
            GateSpec(
                name="prediction shift", metric="prediction_shift", op="<=", limit="max_prediction_shift"
            ),
        ),
    )

    def recognises(self, model_dir: Path) -> bool:
        try:
            return json.loads((model_dir / "config.json").read_text()).get("model_type") == "toy-mlp"
        except (OSError, ValueError):
            return False

    def read_heldout(self, path: Path) -> pd.DataFrame:
        try:
            return pd.read_csv(path)
        except (ValueError, OSError) as exc:
            raise InvalidModelError(f"{path.name} is not a CSV of {FEATURES} + target ({exc})") from None

    def check_model(self, model_dir: Path, allow_pickle: bool = False) -> dict[str, Any]:
        if not (model_dir / "model.safetensors").is_file() or not (model_dir / "config.json").is_file():
            raise InvalidModelError(f"{model_dir} needs model.safetensors and config.json")
        return json.loads((model_dir / "config.json").read_text())

    def _load(self, model_dir: Path) -> Any:
        from safetensors.torch import load_file

        config = self.check_model(model_dir)
        module = _module(int(config["hidden"]))
        module.load_state_dict(load_file(str(model_dir / "model.safetensors")))
        return module.eval()

    @staticmethod
    def _features(heldout: pd.DataFrame) -> np.ndarray:
        return heldout[FEATURES].to_numpy(dtype=np.float32)

    def export(
        self, model_dir: Path, out_dir: Path, heldout: pd.DataFrame, atol: float, allow_pickle: bool = False
    ) -> ExportResult:
        import torch

        module = self._load(model_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.onnx"
        x = self._features(heldout)
        torch.onnx.export(
            module,
            (torch.from_numpy(x[:2]),),
            str(path),
            input_names=["features"],
            output_names=["prediction"],
            dynamic_axes={"features": {0: "batch"}, "prediction": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        (got,) = open_session(Servable(path), 1).run(["prediction"], {"features": x})
        diff = float(np.abs(expected - got).max())
        if diff > atol:
            raise ExportError(f"toy export differs from PyTorch by {diff:.3g}")
        return ExportResult(
            onnx_path=path,
            input_names=["features"],
            output_names=["prediction"],
            opset=OPSET,
            max_abs_diff_vs_torch={"prediction": diff},
            parity_samples=len(x),
            size_bytes=path.stat().st_size,
        )

    def calibration_feeds(self, assets: Path, calibration: pd.DataFrame) -> list[dict[str, np.ndarray]]:
        x = self._features(calibration)
        return [{"features": x[i : i + 8]} for i in range(0, len(x) - 7, 8)]

    def predict(self, model: Servable, assets: Path, heldout: pd.DataFrame, threads: int) -> np.ndarray:
        (pred,) = open_session(model, threads).run(["prediction"], {"features": self._features(heldout)})
        return pred[:, 0].astype(np.float64)

    def score(
        self, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame, idx: np.ndarray
    ) -> tuple[float, np.ndarray]:
        errors = np.abs(heldout["target"].to_numpy(dtype=np.float64) - predicted)
        return float(errors.mean()), errors[idx].mean(axis=1)

    def compare(
        self, reference: Reference, predicted: np.ndarray, assets: Path, heldout: pd.DataFrame,
        thresholds: Thresholds,
    ) -> Comparison:  # fmt: skip
        gold = heldout["target"].to_numpy(dtype=np.float64)
        baseline = np.abs(gold - gold.mean())[bootstrap_indices(len(gold))].mean(axis=1)
        assert reference.resampled is not None
        return Comparison(
            parity=parity_report(
                {"prediction": reference.outputs},
                {"prediction": predicted},
                thresholds.value("abs_tol"),
                thresholds.value("mean_tol"),
            ),
            extra={
                "mae_vs_mean": reference.task_metric / float(np.abs(gold - gold.mean()).mean()),
                "prediction_shift": float(np.abs(predicted - reference.outputs).mean() / gold.std()),
            },
            extra_intervals={"mae_vs_mean": percentile_interval(reference.resampled / baseline)},
        )

    def benchmark(
        self, model_dir: Path, fp32: Servable, candidates: dict[str, Servable], assets: Path,
        heldout: pd.DataFrame, settings: BenchSettings, allow_pickle: bool = False,
    ) -> BenchReport:  # fmt: skip
        x = self._features(heldout)
        requests = draw_requests(
            settings, len(x), lambda rows, pad_to: {"features": x[rows]},
            length_of=lambda feeds: len(feeds["features"]),
        )  # fmt: skip
        return run_benchmark(engines_for(fp32, candidates, settings.threads), settings, requests)


TOY_REGRESSION = register_task_type(ToyRegression())
