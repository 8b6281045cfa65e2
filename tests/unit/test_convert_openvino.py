"""ONNX -> OpenVINO IR (FP32/FP16 weights) and NNCF INT8: real conversions of a tiny CNN and of the built-in
digits CNN, wrong calibration data, a missing SDK, and no half-written output when a check fails."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.compress.base import NotApplicable, RecipeError
from coordinator.convert import openvino_ir
from coordinator.convert.base import ConversionFailed, ConverterMissing

pytest.importorskip("torch")

import torch
from torch import nn

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="openvino/nncf not installed (pip install 'edgebench[convert-openvino]')",
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


def _normal(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coordinator.convert.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(TinyCNN().eval(), torch.zeros(1, *SHAPE), path)
    return path


def _only_outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@needs_openvino
def test_fp32_ir_is_checked_against_onnxruntime(tiny_onnx: Path, tmp_path: Path) -> None:
    result = openvino_ir.onnx_to_ir(tiny_onnx, tmp_path / "ir", fp16_weights=False, check_inputs=_normal(20))
    assert result.format == "openvino_ir"
    assert result.path == tmp_path / "ir" / "model.xml" and result.path.is_file()
    assert result.companions == (tmp_path / "ir" / "model.bin",)
    assert _only_outputs(tmp_path / "ir") == ["model.bin", "model.xml"]  # no temporary leftovers
    notes = result.notes
    assert notes["weights"] == "fp32" and "f16" not in notes["weight_constants"]
    assert notes["tool"].startswith("openvino ")
    check = notes["numeric_check"]
    assert check["samples"] == 20 and check["precision_hint"] == "f32"
    assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    assert notes["seconds"] > 0 and notes["bin_bytes"] == result.companions[0].stat().st_size


@needs_openvino
def test_fp16_weights_halve_the_bin_and_stay_close(tiny_onnx: Path, tmp_path: Path) -> None:
    fp32 = openvino_ir.onnx_to_ir(tiny_onnx, tmp_path / "fp32", fp16_weights=False)
    fp16 = openvino_ir.onnx_to_ir(tiny_onnx, tmp_path / "fp16", fp16_weights=True, check_inputs=_normal(20))
    ratio = fp16.companions[0].stat().st_size / fp32.companions[0].stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    assert fp16.notes["weights"] == "fp16" and fp16.notes["weight_constants"].get("f16", 0) > 0
    assert "f32" not in fp16.notes["weight_constants"]
    assert 0 < fp16.notes["numeric_check"]["max_abs_diff"] < 1e-2
    # Without check inputs a seeded random batch is checked.
    assert fp32.notes["numeric_check"]["inputs"] == "seeded standard-normal batch"


@needs_openvino
def test_failed_check_leaves_nothing_behind(tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ir"
    out.mkdir()
    (out / "model.xml").write_text("stale")  # an old result must not survive next to a new .bin
    real = openvino_ir._openvino_outputs

    def off_by_half(ov: Any, xml: Path, inputs: np.ndarray) -> list[np.ndarray]:
        outputs = real(ov, xml, inputs)
        outputs[0][3, 7] += 0.5
        return outputs

    monkeypatch.setattr(openvino_ir, "_openvino_outputs", off_by_half)
    with pytest.raises(ConversionFailed, match=r"numeric check failed.*output 0 differs by 0\.5.* at index \(3, 7\)"):
        openvino_ir.onnx_to_ir(tiny_onnx, out, fp16_weights=False, check_inputs=_normal(8))
    assert _only_outputs(out) == ["model.xml"] and (out / "model.xml").read_text() == "stale"


@needs_openvino
def test_nncf_int8_quantizes_the_tiny_cnn(tiny_onnx: Path, tmp_path: Path) -> None:
    result = openvino_ir.nncf_int8(tiny_onnx, tmp_path / "int8", _normal(64, seed=2), subset_size=32)
    notes = result.notes
    assert notes["fake_quantize_ops"] > 0 and notes["int8_weight_constants"] == 3
    assert notes["quantized_ops"] == {"Convolution": 2, "MatMul": 1}
    assert notes["calibration_samples"] == 32 and notes["preset"] == "performance"
    assert notes["numeric_check"] == "skipped: no check inputs given"
    assert _only_outputs(tmp_path / "int8") == ["model.bin", "model.xml"]
    checked = openvino_ir.nncf_int8(
        tiny_onnx, tmp_path / "checked", _normal(64, seed=2), check_inputs=_normal(64, seed=3), preset="mixed"
    )
    assert checked.notes["numeric_check"]["top1_agreement"] >= openvino_ir.MIN_INT8_TOP1_AGREEMENT


@needs_openvino
@pytest.mark.parametrize(
    ("calibration", "pattern"),
    [
        (np.zeros((8, 3, 8, 8), np.float32), r"shape \(8, 3, 8, 8\).*expected \(N, 3, 16, 16\) float32"),
        (np.zeros((8, 16, 16), np.float32), r"expected \(N, 3, 16, 16\) float32, given \(8, 16, 16\) float32"),
        (np.zeros((8, *SHAPE), np.float64), r"dtype float64.*astype.*given \(8, 3, 16, 16\) float64"),
        (np.zeros((0, *SHAPE), np.float32), r"no calibration inputs"),
    ],
)
def test_wrong_calibration_is_a_recipe_error(
    tiny_onnx: Path, tmp_path: Path, calibration: np.ndarray, pattern: str
) -> None:
    with pytest.raises(RecipeError, match=pattern):
        openvino_ir.nncf_int8(tiny_onnx, tmp_path / "int8", calibration)
    assert not (tmp_path / "int8" / "model.xml").exists()


@needs_openvino
def test_bad_parameters_and_labels(tiny_onnx: Path, tmp_path: Path) -> None:
    calibration = _normal(4)
    with pytest.raises(RecipeError, match="preset='fast' must be one of performance, mixed"):
        openvino_ir.nncf_int8(tiny_onnx, tmp_path, calibration, preset="fast")
    with pytest.raises(RecipeError, match="subset_size=0"):
        openvino_ir.nncf_int8(tiny_onnx, tmp_path, calibration, subset_size=0)
    with pytest.raises(RecipeError, match=r"check_labels have shape \(3,\)"):
        openvino_ir.nncf_int8(tiny_onnx, tmp_path, calibration, check_inputs=_normal(4), check_labels=np.zeros(3, int))
    with pytest.raises(RecipeError, match="check inputs have shape"):
        openvino_ir.onnx_to_ir(tiny_onnx, tmp_path, fp16_weights=False, check_inputs=np.zeros((2, 3), np.float32))


@needs_openvino
def test_unreadable_model_is_a_conversion_failure(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf \x00\xff" * 50)
    with pytest.raises(ConversionFailed, match=r"OpenVINO cannot read garbage\.onnx"):
        openvino_ir.onnx_to_ir(garbage, tmp_path / "ir", fp16_weights=False)
    assert isinstance(ConversionFailed("x"), NotApplicable)


@pytest.mark.parametrize("module", ["openvino", "nncf"])
def test_missing_sdk_names_the_extra(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConverterMissing, match=r"pip install 'edgebench\[convert-openvino\]'") as caught:
        openvino_ir.nncf_int8(tiny_onnx, tmp_path, _normal(4))
    assert module in str(caught.value) and isinstance(caught.value, NotApplicable)
    if module == "openvino":
        with pytest.raises(ConverterMissing, match="convert-openvino"):
            openvino_ir.onnx_to_ir(tiny_onnx, tmp_path, fp16_weights=True)


@needs_openvino
@pytest.mark.slow
def test_builtin_digits_int8_keeps_accuracy(tmp_path: Path) -> None:
    """NNCF INT8 of the shipped digits CNN: accuracy within 1 point of FP32, the .bin about a quarter."""
    from coordinator.convert.onnx_export import export_onnx
    from coordinator.models.builtin import IMAGE_SIZE, digits_splits, load_teacher

    splits = digits_splits()
    assert splits.calibration is not None and splits.test.labels is not None
    onnx_path = tmp_path / "digits.onnx"
    export_onnx(load_teacher(), torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE), onnx_path)
    fp32 = openvino_ir.onnx_to_ir(onnx_path, tmp_path / "fp32", fp16_weights=False, check_inputs=splits.test.inputs)
    int8 = openvino_ir.nncf_int8(
        onnx_path,
        tmp_path / "int8",
        splits.calibration.inputs,
        check_inputs=splits.test.inputs,
        check_labels=splits.test.labels,
    )
    check = int8.notes["numeric_check"]
    ratio = int8.companions[0].stat().st_size / fp32.companions[0].stat().st_size
    print(
        f"\ndigits OpenVINO: FP32 IR {fp32.notes['size_bytes']} B ({fp32.notes['seconds']} s), NNCF INT8 IR "
        f"{int8.notes['size_bytes']} B ({int8.notes['seconds']} s), .bin ratio {ratio:.3f}; accuracy FP32 "
        f"{check['accuracy_fp32']:.4f} INT8 {check['accuracy_int8']:.4f}, top-1 agreement {check['top1_agreement']:.4f}"
    )
    assert check["samples"] == len(splits.test.inputs)
    assert check["accuracy_int8"] >= check["accuracy_fp32"] - 0.01
    assert check["top1_agreement"] >= 0.98
    assert 0.2 < ratio < 0.3
    assert int8.notes["int8_weight_constants"] == 6  # five convolutions and the classifier


@needs_openvino
def test_fixed_batch_model_takes_whole_batches(tmp_path: Path) -> None:
    from coordinator.convert.onnx_export import export_onnx

    fixed = tmp_path / "fixed.onnx"
    export_onnx(TinyCNN().eval(), torch.zeros(2, *SHAPE), fixed, dynamic_batch=False)
    result = openvino_ir.onnx_to_ir(fixed, tmp_path / "ir", fp16_weights=False, check_inputs=_normal(5))
    assert result.notes["numeric_check"]["samples"] == 4  # the fifth sample does not fill a batch
    int8 = openvino_ir.nncf_int8(fixed, tmp_path / "int8", _normal(6), check_inputs=_normal(4))
    assert int8.notes["calibration_samples"] == 6 and int8.notes["numeric_check"]["samples"] == 4
    with pytest.raises(RecipeError, match="fixed batch size is 2, but only 1 calibration samples"):
        openvino_ir.nncf_int8(fixed, tmp_path / "none", _normal(1))


@needs_openvino
def test_no_usage_telemetry_is_sent(tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """openvino_telemetry sends each event from a forked process that tries the network; none may start."""
    import os
    import threading

    forks: list[str] = []
    real_fork = os.fork

    def recording_fork() -> int:
        forks.append(threading.current_thread().name)
        return real_fork()

    monkeypatch.setattr(os, "fork", recording_fork)
    result = openvino_ir.onnx_to_ir(tiny_onnx, tmp_path / "ir", fp16_weights=False)
    openvino_ir.nncf_int8(tiny_onnx, tmp_path / "int8", _normal(8))
    for thread in threading.enumerate():  # the telemetry sender works in a thread pool
        if thread is not threading.current_thread() and thread.name.startswith("ThreadPoolExecutor"):
            thread.join(timeout=5)
    assert forks == []
    assert result.notes["telemetry"] == "off"
