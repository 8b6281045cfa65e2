"""Tests of `coordinator.convert.onnx_export`: checked ONNX export and loading user models."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from coordinator.convert.onnx_export import (  # noqa: E402
    ExportError,
    ModelLoadError,
    export_onnx,
    load_exported_program,
    load_factory,
)


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them matters
        bn = model[1]
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


class _Bessel(nn.Module):
    """Calls aten::special_bessel_j0, which the ONNX exporter of torch 2.13 has no symbolic for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.special.bessel_j0(x)
        return out


class _WithBessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.head = _Bessel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.conv(x))
        return out


class _DiffersInOnnx(nn.Module):
    """Adds 0.5 to logit 2 only while being exported: ONNX and torch differ by exactly that much."""

    bump: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("bump", torch.tensor([0.0, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.linear(x)
        if torch.onnx.is_in_onnx_export():
            y = y + self.bump
        return y


def test_export_is_self_contained_with_dynamic_batch(tmp_path: Path) -> None:
    model = _tiny_cnn()
    target = tmp_path / "out" / "tiny.onnx"
    report = export_onnx(model, torch.randn(2, 1, 8, 8), target)

    assert report.path == target and target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.onnx"]  # no .onnx.data, no temp file
    assert report.size_bytes == target.stat().st_size
    assert report.output_names == ("logits",) and report.opset == 18 and report.batches_checked == 4
    assert report.max_abs_diff < 1e-4
    assert model.training  # the training flag is restored
    model.eval()
    proto = onnx.load(str(target))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded into the Conv

    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_static_batch_fixes_the_shape(tmp_path: Path) -> None:
    report = export_onnx(_tiny_cnn(), torch.randn(2, 1, 8, 8), tmp_path / "s.onnx", dynamic_batch=False)
    proto = onnx.load(str(report.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert report.batches_checked == 2


def test_numeric_mismatch_names_the_worst_difference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(_DiffersInOnnx(), torch.randn(2, 4), target, atol=1e-4, rtol=0.0)
    message = str(info.value)
    assert "output 'logits' differs from torch by 0.5 " in message
    assert re.search(r"at index \(\d+, 2\)", message), message
    assert "tolerance atol=0.0001 + rtol=0*|torch|" in message
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_unsupported_operator_names_operator_and_layer(tmp_path: Path) -> None:
    target = tmp_path / "bessel.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(_WithBessel().eval(), torch.randn(1, 1, 4, 4), target)
    message = str(info.value)
    assert "aten::special_bessel_j0" in message
    assert "layer 'head' (_Bessel)" in message
    assert not target.exists()


def test_load_factory_with_weights(tmp_path: Path) -> None:
    spec = "coordinator.models.builtin:DigitsCNN"
    torch.manual_seed(1)
    source = load_factory(spec, None)
    weights = tmp_path / "w.pt"
    torch.save(source.state_dict(), weights)
    torch.manual_seed(2)
    loaded = load_factory(spec, weights)
    assert not loaded.training
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_load_factory_refuses_pickled_full_model(tmp_path: Path) -> None:
    from coordinator.models.builtin import DigitsCNN

    path = tmp_path / "full.pt"
    torch.save(DigitsCNN(0.125), path)  # the whole module, pickled
    with pytest.raises(ModelLoadError, match=r"full\.pt: refused to load.*weights_only=True.*state_dict\(\)"):
        load_factory("coordinator.models.builtin:DigitsCNN", path)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("coordinator.models.builtin", "must look like 'package.module:factory'"),
        ("coordinator.no_such_module:f", "cannot import module"),
        ("coordinator.models.builtin:NoSuchFactory", "has no attribute 'NoSuchFactory'"),
        ("coordinator.models.builtin:NUM_CLASSES", "is not callable"),
    ],
)
def test_load_factory_bad_spec(spec: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(fragment)):
        load_factory(spec, None)


def test_load_factory_weights_that_do_not_fit(tmp_path: Path) -> None:
    from coordinator.models.builtin import DigitsCNN

    weights = tmp_path / "narrow.pt"
    torch.save(DigitsCNN(0.5).state_dict(), weights)
    with pytest.raises(ModelLoadError, match=r"narrow\.pt: the weights do not fit"):
        load_factory("coordinator.models.builtin:DigitsCNN", weights)


def test_load_exported_program_roundtrip(tmp_path: Path) -> None:
    model = _tiny_cnn().eval()
    x = torch.randn(2, 1, 8, 8)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    loaded = load_exported_program(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_exported_program(tmp_path / "missing.pt2")
