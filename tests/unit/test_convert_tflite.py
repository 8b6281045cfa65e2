"""PyTorch -> TFLite with litert-torch, and INT8 with ai-edge-quantizer: real conversions of a tiny CNN and of
the built-in digits CNN, NCHW I/O, wrong calibration data, unsupported operators, a missing SDK, and no
half-written output when a check fails."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.compress.base import NotApplicable, RecipeError
from coordinator.convert import tflite
from coordinator.convert.base import ConversionFailed, ConverterMissing

pytest.importorskip("torch")

import torch
from torch import nn

needs_litert = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")),
    reason="litert-torch/ai-edge-litert/ai-edge-quantizer not installed (pip install 'edgebench[convert-tflite]')",
)

SHAPE = (3, 16, 16)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def _normal(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def _interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


@pytest.fixture(scope="module")
def float_tflite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    if any(importlib.util.find_spec(m) is None for m in ("litert_torch", "ai_edge_litert")):
        pytest.skip("litert-torch not installed")
    model = TinyCNN().train()  # converted in eval mode, and handed back in training mode
    out = tmp_path_factory.mktemp("tflite") / "model.tflite"
    result = tflite.torch_to_tflite(model, (1, *SHAPE), out, check_inputs=_normal(12))
    assert model.training
    return result.path, result.notes


@needs_litert
def test_float_tflite_keeps_nchw_io_and_matches_torch(float_tflite: tuple[Path, dict[str, Any]]) -> None:
    path, notes = float_tflite
    assert path.name == "model.tflite" and sorted(p.name for p in path.parent.iterdir()) == ["model.tflite"]
    details = _interpreter(path).get_input_details()
    assert [list(d["shape"]) for d in details] == [[1, *SHAPE]] and details[0]["dtype"] == np.float32
    check = notes["numeric_check"]
    assert check["samples"] == 12 and check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    assert notes["precision"] == "fp32" and notes["layout"].startswith("NCHW")
    assert notes["ops"].get("CONV_2D", 0) >= 1 and notes["size_bytes"] == path.stat().st_size
    assert notes["tool"].startswith("litert-torch ") and notes["seconds"] > 0


@needs_litert
def test_batch_from_example_shape_and_an_exported_program(tmp_path: Path) -> None:
    """A loaded torch.export program's module refuses eval(); it converts as it is. Batch 2: 5 check
    inputs give two batches and one sample left out."""
    program = torch.export.export(TinyCNN().eval(), (torch.zeros(2, *SHAPE),))
    module = program.module()
    result = tflite.torch_to_tflite(module, (2, *SHAPE), tmp_path / "b2.tflite", check_inputs=_normal(5))
    assert result.notes["numeric_check"]["samples"] == 4
    assert result.notes["numeric_check"]["samples_left_out"] == 1
    assert list(_interpreter(result.path).get_input_details()[0]["shape"]) == [2, *SHAPE]


@needs_litert
def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match=r"operator aten\.special_bessel_j0\S* is not supported"):
        tflite.torch_to_tflite(Bessel(), (1, 8), tmp_path / "bessel.tflite")
    assert list(tmp_path.iterdir()) == []


@needs_litert
def test_failed_check_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tflite.Runner.run

    def off(self: Any, batch: np.ndarray) -> list[np.ndarray]:
        return [o + 0.25 for o in real(self, batch)]

    monkeypatch.setattr(tflite.Runner, "run", off)
    with pytest.raises(ConversionFailed, match=r"numeric check failed, TFLite vs torch: output 0 differs by 0\.25"):
        tflite.torch_to_tflite(TinyCNN(), (1, *SHAPE), tmp_path / "model.tflite", check_inputs=_normal(3))
    assert list(tmp_path.iterdir()) == []


@needs_litert
def test_full_int8_has_quantized_io_and_agrees(float_tflite: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = float_tflite
    result = tflite.quantize_int8(path, tmp_path / "int8.tflite", _normal(48, seed=2), check_inputs=_normal(64, seed=3))
    notes = result.notes
    (input_q,) = notes["input_quantization"].values()
    (output_q,) = notes["output_quantization"].values()
    assert input_q["dtype"] == "int8" and input_q["shape"] == [1, *SHAPE] and input_q["scale"] > 0
    assert output_q["dtype"] == "int8" and output_q["scale"] > 0 and -128 <= output_q["zero_point"] <= 127
    details = _interpreter(result.path).get_input_details()[0]
    assert details["dtype"] == np.int8 and details["quantization"][0] == pytest.approx(input_q["scale"])
    assert notes["quantized_ops"].get("CONV_2D", 0) >= 1 and notes["quantized_ops"].get("FULLY_CONNECTED") == 1
    assert notes["numeric_check"]["top1_agreement"] >= tflite.MIN_INT8_TOP1_AGREEMENT
    assert notes["calibration_samples"] == 48 and notes["recipe"] == "static_wi8_ai8"
    assert notes["size_ratio"] < 0.6


@needs_litert
@pytest.mark.parametrize(
    ("calibration", "pattern"),
    [
        (np.zeros((8, 3, 8, 8), np.float32), r"shape \(8, 3, 8, 8\).*expected \(N, 3, 16, 16\) float32"),
        (np.zeros((8, *SHAPE), np.float64), r"dtype float64.*given \(8, 3, 16, 16\) float64"),
        (np.zeros((8, 3, 16), np.float32), r"expected \(N, 3, 16, 16\) float32, given \(8, 3, 16\) float32"),
    ],
)
def test_wrong_calibration_is_a_recipe_error(
    float_tflite: tuple[Path, dict[str, Any]], tmp_path: Path, calibration: np.ndarray, pattern: str
) -> None:
    path, _ = float_tflite
    with pytest.raises(RecipeError, match=pattern):
        tflite.quantize_int8(path, tmp_path / "int8.tflite", calibration)
    assert list(tmp_path.iterdir()) == []


@needs_litert
def test_labels_and_missing_input(float_tflite: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = float_tflite
    with pytest.raises(RecipeError, match="check_labels were given without check_inputs"):
        tflite.quantize_int8(path, tmp_path / "q.tflite", _normal(4), check_labels=np.zeros(4, np.int64))
    with pytest.raises(RecipeError, match="does not exist"):
        tflite.quantize_dynamic_int8(tmp_path / "absent.tflite", tmp_path / "q.tflite")


@needs_litert
def test_dynamic_int8_stores_int8_weights(float_tflite: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = float_tflite
    result = tflite.quantize_dynamic_int8(path, tmp_path / "dyn.tflite")
    assert result.notes["int8_weight_tensors"] >= 3 and result.notes["smoke_run"].startswith("ok")
    assert result.notes["size_ratio"] < 0.6
    assert _interpreter(result.path).get_input_details()[0]["dtype"] == np.float32  # float I/O


@pytest.mark.parametrize("module", ["litert_torch", "ai_edge_litert.interpreter", "ai_edge_quantizer.quantizer"])
def test_missing_sdk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"not used")
    if module != "ai_edge_quantizer.quantizer":
        with pytest.raises(ConverterMissing, match=r"pip install 'edgebench\[convert-tflite\]'") as caught:
            tflite.torch_to_tflite(TinyCNN(), (1, *SHAPE), tmp_path / "out.tflite")
        assert module in str(caught.value) and isinstance(caught.value, NotApplicable)
    if module != "litert_torch":
        for convert in (
            lambda: tflite.quantize_int8(fake, tmp_path / "q.tflite", _normal(2)),
            lambda: tflite.quantize_dynamic_int8(fake, tmp_path / "q.tflite"),
        ):
            with pytest.raises(ConverterMissing, match="convert-tflite"):
                convert()


@needs_litert
@pytest.mark.slow
def test_builtin_digits_float_and_int8_keep_accuracy(tmp_path: Path) -> None:
    """The shipped digits CNN: FP32 TFLite matches torch, full INT8 keeps accuracy within 1 point."""
    from coordinator.models.builtin import IMAGE_SIZE, digits_splits, load_teacher

    splits = digits_splits()
    assert splits.calibration is not None and splits.test.labels is not None
    fp32 = tflite.torch_to_tflite(
        load_teacher(), (1, 1, IMAGE_SIZE, IMAGE_SIZE), tmp_path / "fp32.tflite", check_inputs=splits.test.inputs
    )
    int8 = tflite.quantize_int8(
        fp32.path,
        tmp_path / "int8.tflite",
        splits.calibration.inputs,
        check_inputs=splits.test.inputs,
        check_labels=splits.test.labels,
    )
    dynamic = tflite.quantize_dynamic_int8(fp32.path, tmp_path / "dyn.tflite")
    check = int8.notes["numeric_check"]
    print(
        f"\ndigits TFLite: FP32 {fp32.notes['size_bytes']} B ({fp32.notes['seconds']} s, max |diff| vs torch "
        f"{fp32.notes['numeric_check']['max_abs_diff']:.2g}), full INT8 {int8.notes['size_bytes']} B "
        f"(ratio {int8.notes['size_ratio']:.3f}, {int8.notes['seconds']} s), dynamic INT8 "
        f"{dynamic.notes['size_bytes']} B (ratio {dynamic.notes['size_ratio']:.3f}); accuracy float "
        f"{check['accuracy_float']:.4f} INT8 {check['accuracy_int8']:.4f}, agreement {check['top1_agreement']:.4f}"
    )
    assert fp32.notes["numeric_check"]["top1_agreement"] == 1.0
    assert check["samples"] == len(splits.test.inputs)
    assert check["accuracy_int8"] >= check["accuracy_float"] - 0.01
    assert 0.2 < int8.notes["size_ratio"] < 0.3
