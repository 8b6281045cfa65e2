"""The contracts every compression technique implements, and the data they train or calibrate on.

Two kinds of technique, because they work on different representations:
- a **torch technique** takes an `nn.Module` and returns a new one (pruning, fine-tuning, distillation);
- an **ONNX technique** takes an ONNX file and writes another (INT8 quantization, FP16, OpenVINO INT8).
A recipe runs its torch steps first, exports once to ONNX (numerically checked), then its ONNX steps.

A technique that does not apply to a model raises `NotApplicable` with the reason (it becomes a visible
skip in reports, never a crash); bad parameters raise `RecipeError` naming the parameter.
torch is imported only inside torch techniques, so ONNX-only work never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

Log = Callable[[str], None]


class NotApplicable(Exception):
    """The technique cannot be applied to this model (e.g. channel pruning without prunable convolutions)."""


class RecipeError(ValueError):
    """A recipe or a technique parameter is wrong; the message points at what and says what is allowed."""


@dataclass(frozen=True)
class Split:
    inputs: np.ndarray  # (N, ...) float32
    labels: np.ndarray | None = None  # (N,) int64

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class DataSplits:
    """The dataset as compression sees it. `.npz` keys (README, "Datasets"): `inputs` + optional `labels`
    (the held-out evaluation split); optional `train_inputs`/`train_labels` (fine-tuning, distillation);
    optional `calibration_inputs` (quantization; defaults to a slice of the training split, else of the
    evaluation split)."""

    test: Split
    train: Split | None = None
    calibration: Split | None = None

    def calibration_inputs(self, limit: int = 256) -> np.ndarray:
        source = self.calibration or self.train or self.test
        return source.inputs[:limit]


@dataclass
class StepReport:
    """What one technique did: numbers for the manifest and the report (sizes, sparsity, MACs, ...)."""

    technique: str
    params: dict[str, str]
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class TorchTechnique(Protocol):
    name: str

    def apply(self, model: Any, data: DataSplits, params: Mapping[str, str], log: Log) -> tuple[Any, StepReport]:
        """Return a new (or modified copy of the) nn.Module and what was done."""
        ...


class OnnxTechnique(Protocol):
    name: str

    def apply(self, source: Path, target: Path, data: DataSplits, params: Mapping[str, str], log: Log) -> StepReport:
        """Write the transformed model to `target` (a single self-contained .onnx file)."""
        ...


def param_float(
    params: Mapping[str, str], key: str, default: float, *, low: float, high: float, open_interval: bool = False
) -> float:
    """Read a numeric parameter, checked against its range (open interval when asked)."""
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RecipeError(f"parameter {key}={raw!r} is not a number") from None
    inside = low < value < high if open_interval else low <= value <= high
    if not inside:
        bounds = f"({low}, {high})" if open_interval else f"[{low}, {high}]"
        raise RecipeError(f"parameter {key}={raw} is outside {bounds}")
    return value


def param_choice(params: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = params.get(key, default)
    if value not in choices:
        raise RecipeError(f"parameter {key}={value!r} must be one of {', '.join(choices)}")
    return value


def load_splits(path: Path) -> DataSplits:
    """Read a dataset `.npz` (no pickle) into splits; errors name the key and shape that are wrong."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if "inputs" not in arrays:
        raise RecipeError(f"{path.name}: the dataset needs an 'inputs' array; it has {sorted(arrays)}")

    def split(inputs_key: str, labels_key: str) -> Split | None:
        if inputs_key not in arrays:
            return None
        inputs = arrays[inputs_key]
        labels = arrays.get(labels_key)
        if labels is not None and labels.shape != (len(inputs),):
            raise RecipeError(
                f"{path.name}: '{labels_key}' has shape {list(labels.shape)}, expected ({len(inputs)},) "
                f"to match '{inputs_key}'"
            )
        return Split(inputs, labels)

    test = split("inputs", "labels")
    assert test is not None
    return DataSplits(
        test=test,
        train=split("train_inputs", "train_labels"),
        calibration=split("calibration_inputs", "calibration_labels"),
    )
