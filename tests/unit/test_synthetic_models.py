"""Tests of `coordinator.models.synthetic`: the built-in synthetic ONNX models and data sets."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from coordinator.models.synthetic import (  # noqa: E402
    BIG_INITIALIZER_MAX_MB,
    DEFAULT_BENCH_CNN,
    build_big_initializer,
    build_cnn,
    build_mlp,
    input_spec,
    make_dataset,
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(path: Path, x: npt.NDArray[np.float32]) -> tuple[list[str], list[str], npt.NDArray[Any]]:
    """Check the model, then run it; return input names, output names and the first output."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    (out,) = session.run(None, {"input": x})
    return in_names, out_names, np.asarray(out)


def _no_external_data(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def test_cnn_fixed_batch_runs_with_documented_names_and_shapes(tmp_path: Path) -> None:
    path = build_cnn(tmp_path / "cnn.onnx", channels=8, blocks=3, input_hw=16, num_classes=7)
    assert path == tmp_path / "cnn.onnx"
    assert input_spec(path) == [("input", (1, 3, 16, 16), "float32")]
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16), dtype=np.float32)
    in_names, out_names, logits = _run(path, x)
    assert (in_names, out_names) == (["input"], ["logits"])
    assert logits.shape == (1, 7)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert _no_external_data(path)


def test_cnn_symbolic_batch_and_logits_stay_order_one(tmp_path: Path) -> None:
    path = build_cnn(tmp_path / "cnn.onnx", channels=8, blocks=5, input_hw=32, in_channels=1, batch=None)
    assert input_spec(path) == [("input", ("batch", 1, 32, 32), "float32")]
    x = np.random.default_rng(2).standard_normal((4, 1, 32, 32), dtype=np.float32)
    _, _, logits = _run(path, x)
    assert logits.shape == (4, 10)
    assert np.all(np.isfinite(logits))
    # He scaling: neither vanishing nor exploding through the ReLU stack.
    assert 1e-2 < float(np.std(logits)) < 1e2


def test_cnn_uses_both_downsampling_kinds(tmp_path: Path) -> None:
    path = build_cnn(tmp_path / "cnn.onnx", channels=4, blocks=3, input_hw=16)
    nodes = onnx.load(str(path)).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("MaxPool") == 1
    strides = [list(a.ints) for n in nodes if n.op_type == "Conv" for a in n.attribute if a.name == "strides"]
    assert strides == [[1, 1], [1, 1], [2, 2]]
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_builders_are_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = build_cnn(tmp_path / "a.onnx", channels=8, blocks=2, input_hw=16, seed=3)
    b = build_cnn(tmp_path / "b.onnx", channels=8, blocks=2, input_hw=16, seed=3)
    c = build_cnn(tmp_path / "c.onnx", channels=8, blocks=2, input_hw=16, seed=4)
    assert _sha256(a) == _sha256(b) != _sha256(c)
    m1 = build_mlp(tmp_path / "m1.onnx", seed=5)
    m2 = build_mlp(tmp_path / "m2.onnx", seed=5)
    assert _sha256(m1) == _sha256(m2)
    g1 = build_big_initializer(tmp_path / "g1.onnx", megabytes=1, seed=6)
    g2 = build_big_initializer(tmp_path / "g2.onnx", megabytes=1, seed=6)
    assert _sha256(g1) == _sha256(g2)
    # Written through a temporary file that does not outlive the build.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.onnx", "b.onnx", "c.onnx", "g1.onnx", "g2.onnx", "m1.onnx", "m2.onnx"]


def test_default_bench_cnn_builds_and_runs(tmp_path: Path) -> None:
    path = DEFAULT_BENCH_CNN.build(tmp_path / "bench.onnx")
    hw, ch = DEFAULT_BENCH_CNN.input_hw, DEFAULT_BENCH_CNN.in_channels
    assert input_spec(path) == [("input", (1, ch, hw, hw), "float32")]
    x = np.zeros((1, ch, hw, hw), dtype=np.float32)
    _, _, logits = _run(path, x)
    assert logits.shape == (1, DEFAULT_BENCH_CNN.num_classes)


def test_mlp_runs_with_documented_names_and_shapes(tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx", features=12, hidden=20, num_classes=5)
    assert input_spec(path) == [("input", ("batch", 12), "float32")]
    x = np.random.default_rng(0).standard_normal((3, 12), dtype=np.float32)
    in_names, out_names, logits = _run(path, x)
    assert (in_names, out_names) == (["input"], ["logits"])
    assert logits.shape == (3, 5)
    fixed = build_mlp(tmp_path / "mlp1.onnx", batch=2)
    assert input_spec(fixed) == [("input", (2, 64), "float32")]


def test_big_initializer_size_and_io(tmp_path: Path) -> None:
    path = build_big_initializer(tmp_path / "big.onnx", megabytes=3)
    size = path.stat().st_size
    assert 3 * 2**20 <= size < 3 * 2**20 + 4096
    ((name, shape, dtype),) = input_spec(path)
    assert (name, dtype) == ("input", "float32")
    assert shape[0] == 1
    x = np.ones(tuple(int(d) for d in shape), dtype=np.float32)
    in_names, out_names, out = _run(path, x)
    assert (in_names, out_names) == (["input"], ["output"])
    assert out.shape[0] == 1
    assert _no_external_data(path)


@pytest.mark.parametrize("megabytes", [0, BIG_INITIALIZER_MAX_MB + 1, 4096])
def test_big_initializer_rejects_sizes_outside_the_cap(tmp_path: Path, megabytes: int) -> None:
    with pytest.raises(ValueError, match="megabytes must be between 1 and 1500"):
        build_big_initializer(tmp_path / "big.onnx", megabytes=megabytes)
    assert not (tmp_path / "big.onnx").exists()


def test_invalid_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        build_cnn(tmp_path / "x.onnx", channels=0)
    with pytest.raises(ValueError, match="batch"):
        build_mlp(tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match="opset"):
        build_mlp(tmp_path / "x.onnx", opset=10)


def test_input_spec_skips_initializers_listed_as_inputs(tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx", features=4)
    model = onnx.load(str(path))
    for init in model.graph.initializer:  # old-style (IR < 4) models list weights as inputs too
        model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert input_spec(tmp_path / "old.onnx") == [("input", ("batch", 4), "float32")]


def test_make_dataset_keys_shapes_dtypes_and_label_noise(tmp_path: Path) -> None:
    model = build_mlp(tmp_path / "mlp.onnx", features=16, hidden=32, num_classes=10)
    out = make_dataset(tmp_path / "data" / "set.npz", model_path=model, n=500, seed=1)
    assert out == tmp_path / "data" / "set.npz"
    with np.load(out) as data:
        assert sorted(data.files) == ["inputs", "labels", "reference_outputs"]
        inputs, labels, ref = data["inputs"], data["labels"], data["reference_outputs"]
    assert inputs.shape == (500, 16) and inputs.dtype == np.float32
    assert labels.shape == (500,) and labels.dtype == np.int64
    assert ref.shape == (500, 10) and ref.dtype == np.float32
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": inputs})
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-6)
    agreement = float(np.mean(labels == np.argmax(expected, axis=1)))
    assert 0.80 <= agreement <= 0.97
    assert agreement == pytest.approx(0.9)
    assert labels.min() >= 0 and labels.max() < 10


def test_make_dataset_fixed_batch_model_and_flags(tmp_path: Path) -> None:
    model = build_cnn(tmp_path / "cnn.onnx", channels=4, blocks=2, input_hw=8, batch=1)
    only_inputs = make_dataset(
        tmp_path / "a.npz", model_path=model, n=6, seed=2, with_labels=False, with_reference=False
    )
    with np.load(only_inputs) as data:
        assert data.files == ["inputs"]
        first = data["inputs"]
    assert first.shape == (6, 3, 8, 8)
    both = make_dataset(tmp_path / "b.npz", model_path=model, n=6, seed=2)
    with np.load(both) as data:
        # The inputs do not depend on the flags; reference outputs come from per-sample runs.
        np.testing.assert_array_equal(data["inputs"], first)
        assert data["reference_outputs"].shape == (6, 10)
    with pytest.raises(ValueError, match="does not divide"):
        make_dataset(tmp_path / "c.npz", model_path=build_mlp(tmp_path / "m.onnx", batch=4), n=6)
