"""The compression pipeline and CLI on real models: skipped techniques, corrupted caches, manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.compress.base import load_splits
from coordinator.compress.pipeline import SourceModel, VariantBuilder
from coordinator.compress.recipe import parse_recipe
from coordinator.dispatch.client import sha256_file
from coordinator.models.synthetic import build_cnn, make_dataset


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cnn")
    model = build_cnn(d / "cnn.onnx", channels=32, blocks=3, input_hw=16, batch=None)
    return model, make_dataset(d / "cnn.npz", model_path=model, n=64)


def test_torch_technique_on_an_onnx_model_is_a_skip_with_reason(tmp_path: Path, onnx_model: tuple[Path, Path]) -> None:
    model, data = onnx_model
    builder = VariantBuilder(tmp_path / "cache")
    source = SourceModel(sha256_file(model), onnx_path=model)
    built = builder.build(source, parse_recipe("channels:0.5"), load_splits(data), sha256_file(data))
    assert built.path is None
    assert "needs the PyTorch model" in built.skipped


def test_corrupted_cached_variant_is_detected_and_rebuilt(tmp_path: Path, onnx_model: tuple[Path, Path]) -> None:
    model, data = onnx_model
    messages: list[str] = []
    builder = VariantBuilder(tmp_path / "cache", messages.append)
    source = SourceModel(sha256_file(model), onnx_path=model)
    first = builder.build(source, parse_recipe("int8"), load_splits(data), sha256_file(data))
    assert first.path is not None and first.manifest["size_bytes"] < 0.35 * model.stat().st_size
    again = builder.build(source, parse_recipe("int8"), load_splits(data), sha256_file(data))
    assert again.sha256 == first.sha256 and any("using cached variant" in m for m in messages)
    first.path.write_bytes(first.path.read_bytes()[:-100] + b"\0" * 100)  # bit rot in the cache
    rebuilt = builder.build(source, parse_recipe("int8"), load_splits(data), sha256_file(data))
    assert any("corrupted" in m and "rebuilding" in m for m in messages)
    assert rebuilt.path is not None and sha256_file(rebuilt.path) == rebuilt.sha256


def _edgebench(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_compress_cli_writes_variants_and_manifests(tmp_path: Path, onnx_model: tuple[Path, Path]) -> None:
    model, data = onnx_model
    out = tmp_path / "variants"
    done = _edgebench(
        tmp_path / "home",
        "compress",
        str(model),
        "--dataset",
        str(data),
        "--variants",
        "fp32,int8,fp16,prune:0.5",
        "-o",
        str(out),
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    rows = {r["variant"]: r for r in json.loads(done.stdout)}
    assert rows["prune:amount=0.5"]["skipped"].startswith("prune needs the PyTorch model")
    manifest = json.loads((out / "int8.json").read_text())
    assert manifest["parent_sha256"] == sha256_file(model) and manifest["recipe"] == "int8"
    assert manifest["sha256"] == sha256_file(out / "int8.onnx")
    assert manifest["accuracy_top1"] is not None and manifest["steps"][0]["technique"] == "int8"
    assert (out / "fp16.onnx").stat().st_size < 0.6 * model.stat().st_size


def test_compress_cli_bad_recipe_points_at_the_token(tmp_path: Path, onnx_model: tuple[Path, Path]) -> None:
    model, data = onnx_model
    done = _edgebench(tmp_path, "compress", str(model), "--dataset", str(data), "--variants", "int8++fp16")
    assert done.returncode == 2 and "empty step" in done.stderr and "^" in done.stderr
    assert "Traceback" not in done.stderr
    bad = _edgebench(tmp_path, "compress", str(model), "--dataset", str(data), "--variants", "int8:calib=best")
    assert bad.returncode == 2 and "calib" in bad.stderr and "minmax" in bad.stderr


class _TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_recipes_share_their_torch_stage_and_each_format_gets_its_own_int8(tmp_path: Path) -> None:
    """`prune:0.5` and `prune:0.5+int8` prune once; the INT8 variant is then made for OpenVINO by NNCF and for
    LiteRT by ai-edge-quantizer from that pruned network, while eager torch has no INT8 form (a reason)."""
    pytest.importorskip("nncf")
    pytest.importorskip("litert_torch")
    from coordinator.compress.base import DataSplits, Split
    from coordinator.convert.targets import convert_all

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=96)
    data = DataSplits(test=Split(x[:32], y[:32]), train=Split(x[32:], y[32:]))
    source = SourceModel("5" * 64, torch_model=_TinyCNN().eval(), example_shape=(1, 1, 8, 8))
    messages: list[str] = []
    builder = VariantBuilder(tmp_path / "cache", messages.append)
    pruned = builder.build(source, parse_recipe("prune:0.5"), data, "d" * 64)
    quantized = builder.build(source, parse_recipe("prune:0.5+int8"), data, "d" * 64)
    assert pruned.path is not None and quantized.path is not None
    assert sum("pruned" in m for m in messages) == 1 and any("reusing the cached result" in m for m in messages)
    assert quantized.manifest["steps"][0]["technique"] == "prune"  # the reused step is still in the manifest

    recipe = parse_recipe("prune:0.5+int8")
    stage = builder.stage(source, recipe, "d" * 64)
    assert stage.program is not None and stage.onnx.is_file()
    folder = builder.folder(source, recipe, "d" * 64)
    made, missing = convert_all(("openvino_ir", "tflite", "torch_export"), stage, recipe, data, folder, print)
    by_format = {a.format: a for a in made}
    assert by_format["openvino_ir"].notes == "OpenVINO IR, NNCF static INT8"
    assert [name for name, _p, _s in by_format["openvino_ir"].companions] == ["model.bin"]
    assert by_format["tflite"].notes == "TFLite, full-integer INT8 (ai-edge-quantizer)"
    assert dict(missing)["torch_export"].startswith("eager PyTorch runs the network as trained")
