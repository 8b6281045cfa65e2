"""PyTorch -> Core ML ML program as a ZIP file: real conversions of a tiny CNN (FP32 and FP16), the ZIP's
members, its determinism, unsupported operators, wrong check inputs and a missing SDK. Core ML prediction
needs macOS, so the numeric check is skipped with a note (asserted here)."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.compress.base import NotApplicable, RecipeError
from coordinator.convert import coreml
from coordinator.convert.base import ConversionFailed, ConverterMissing

pytest.importorskip("torch")

import torch
from torch import nn

needs_coremltools = pytest.mark.skipif(
    importlib.util.find_spec("coremltools") is None,
    reason="coremltools not installed (pip install 'edgebench[convert-coreml]')",
)

SHAPE = (1, 3, 16, 16)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if importlib.util.find_spec("coremltools") is None:
        pytest.skip("coremltools not installed")
    folder = tmp_path_factory.mktemp("coreml")
    model = TinyCNN().train()
    check = np.zeros((4, *SHAPE[1:]), np.float32)
    fp32 = coreml.torch_to_coreml(model, SHAPE, folder / "fp32" / "model.mlpackage.zip", fp16=False, check_inputs=check)
    assert model.training  # handed back in training mode
    fp16 = coreml.torch_to_coreml(model, SHAPE, folder / "fp16" / "model.mlpackage.zip", fp16=True)
    return {"fp32": fp32, "fp16": fp16}


def _weights_size(archive: Path) -> int:
    with zipfile.ZipFile(archive) as z:
        return sum(i.file_size for i in z.infolist() if i.filename.startswith("Data/com.apple.CoreML/weights/"))


@needs_coremltools
def test_zip_members_are_relative_sorted_and_plain(converted: dict[str, Any]) -> None:
    result = converted["fp32"]
    assert result.format == "coreml" and result.path.name == "model.mlpackage.zip" and result.companions == ()
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.mlpackage.zip"]  # no temp leftovers
    with zipfile.ZipFile(result.path) as z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        assert z.testzip() is None
    assert names == sorted(names)
    assert "Manifest.json" in names and "Data/com.apple.CoreML/model.mlmodel" in names
    assert any(n.startswith("Data/com.apple.CoreML/weights/") for n in names)
    for info in infos:
        assert not info.filename.startswith("/") and ".." not in info.filename.split("/")
        assert not info.is_dir() and info.date_time == (1980, 1, 1, 0, 0, 0)
        assert (info.external_attr >> 16) == 0o100644  # a regular file, never a symlink
    assert result.notes["zip_members"] == len(names) and result.notes["size_bytes"] == result.path.stat().st_size


@needs_coremltools
def test_precision_names_and_skipped_check(converted: dict[str, Any], tmp_path: Path) -> None:
    import coremltools as ct

    for key in ("fp32", "fp16"):
        result = converted[key]
        notes = result.notes
        assert notes["compute_precision"] == key and notes["minimum_deployment_target"] == "iOS16"
        assert notes["source"] == "torch.export" and notes["tool"].startswith("coremltools ")
        assert notes["numeric_check"].startswith("skipped: Core ML prediction needs macOS")
        assert notes["ops"]["conv"] == 2 and notes["seconds"] > 0
        package = tmp_path / f"{key}.mlpackage"
        with zipfile.ZipFile(result.path) as z:
            z.extractall(package)
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        (inp,) = spec.description.input
        (out,) = spec.description.output
        float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
        assert (inp.name, out.name) == ("input", "logits")
        assert list(inp.type.multiArrayType.shape) == list(SHAPE)
        assert inp.type.multiArrayType.dataType == float32 and out.type.multiArrayType.dataType == float32
    assert "cast" in converted["fp16"].notes["ops"] and "cast" not in converted["fp32"].notes["ops"]
    ratio = _weights_size(converted["fp16"].path) / _weights_size(converted["fp32"].path)
    assert 0.45 < ratio < 0.55, ratio


@needs_coremltools
def test_zip_is_deterministic_and_refuses_symlinks(converted: dict[str, Any], tmp_path: Path) -> None:
    package = tmp_path / "model.mlpackage"
    with zipfile.ZipFile(converted["fp32"].path) as z:
        z.extractall(package)
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    assert coreml.zip_package(package, first) == coreml.zip_package(package, second)
    assert first.read_bytes() == second.read_bytes()
    (package / "Data" / "link").symlink_to(package / "Manifest.json")
    with pytest.raises(ConversionFailed, match="Data/link, which is not a plain file"):
        coreml.zip_package(package, tmp_path / "c.zip")


@needs_coremltools
def test_exported_program_module_converts(tmp_path: Path) -> None:
    """A loaded torch.export program's module refuses eval(); it converts as it is."""
    module = torch.export.export(TinyCNN().eval(), (torch.zeros(SHAPE),)).module()
    result = coreml.torch_to_coreml(module, SHAPE, tmp_path / "model.mlpackage.zip", fp16=True)
    assert result.path.is_file() and result.notes["outputs"] == ["logits"]


@needs_coremltools
def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match=r"coremltools cannot convert the model: operator special_bessel_j0"):
        coreml.torch_to_coreml(Bessel(), (1, 8), tmp_path / "model.mlpackage.zip", fp16=False)
    assert list(tmp_path.iterdir()) == []


@needs_coremltools
def test_wrong_check_inputs_and_shape(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"expected \(N, 3, 16, 16\) float32, given \(2, 3, 8, 8\) float32"):
        coreml.torch_to_coreml(
            TinyCNN(), SHAPE, tmp_path / "m.zip", fp16=False, check_inputs=np.zeros((2, 3, 8, 8), np.float32)
        )
    with pytest.raises(RecipeError, match="example_shape"):
        coreml.torch_to_coreml(TinyCNN(), (0, 3, 16, 16), tmp_path / "m.zip", fp16=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_sdk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)  # makes `import coremltools` raise ImportError
    with pytest.raises(ConverterMissing, match=r"coremltools.*pip install 'edgebench\[convert-coreml\]'") as caught:
        coreml.torch_to_coreml(TinyCNN(), SHAPE, tmp_path / "m.zip", fp16=False)
    assert isinstance(caught.value, NotApplicable)
