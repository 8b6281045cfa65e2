"""ONNX techniques int8 (static QDQ), int8dyn (dynamic) and fp16 on small synthetic models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from coordinator.compress import fp16, int8_dynamic, int8_static, onnx_common
from coordinator.compress.base import DataSplits, NotApplicable, RecipeError, Split
from coordinator.models.synthetic import build_cnn, build_mlp

CNN_SHAPE = (3, 16, 16)


def _log(message: str) -> None:
    del message


def _splits(inputs: np.ndarray) -> DataSplits:
    return DataSplits(test=Split(inputs))


def _normal(n: int, shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)


def _run(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else len(inputs)
    parts = [session.run(None, {"input": inputs[i : i + step]})[0] for i in range(0, len(inputs), step)]
    return np.concatenate(parts)


def _top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cnn(tmp_path_factory.mktemp("m") / "cnn.onnx", channels=8, blocks=2, input_hw=16, batch=None)


@pytest.fixture(scope="module")
def wide_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights dominate the file (~0.4 MB of them), so the size ratio reflects the weight type."""
    return build_cnn(tmp_path_factory.mktemp("m") / "wide.onnx", channels=32, blocks=3, input_hw=16, batch=None)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("m") / "mlp.onnx", features=128, hidden=256)


# --- int8 static -----------------------------------------------------------------------------------------


def test_int8_static_size_agreement_and_notes(wide_cnn: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "q.onnx"
    report = int8_static.TECHNIQUE.apply(wide_cnn, target, _splits(_normal(32, CNN_SHAPE)), {}, _log)
    onnx.checker.check_model(str(target))
    assert not list(tmp_path.glob("out/*.data"))  # self-contained
    ref, got = _run(wide_cnn, _normal(64, CNN_SHAPE, seed=2)), _run(target, _normal(64, CNN_SHAPE, seed=2))
    assert _top1(ref, got) >= 0.9
    notes = report.notes
    assert report.technique == "int8"
    assert notes["size_after_bytes"] == target.stat().st_size
    assert notes["size_after_bytes"] <= 0.35 * notes["size_before_bytes"]
    assert notes["calibration"] == "minmax" and notes["calibration_samples"] == 32
    assert notes["per_channel"] is True and notes["preprocess"] == "ok"
    assert isinstance(notes["reduce_range"], bool) and notes["reduce_range_reason"].startswith("auto")
    assert notes["quantized_nodes"] > 0 and notes["quant_node_types"]["QuantizeLinear"] > 0
    assert notes["int8_initializers"] > 0


@pytest.mark.parametrize("calib", ["minmax", "entropy", "percentile"])
def test_int8_static_calibration_methods(small_cnn: Path, tmp_path: Path, calib: str) -> None:
    params = {"calib": calib, "per_channel": "false", "reduce_range": "false"}
    report = int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(16, CNN_SHAPE)), params, _log)
    assert report.notes["calibration"] == calib
    assert report.notes["reduce_range"] is False and report.notes["reduce_range_reason"] == "set by the recipe"
    x = _normal(64, CNN_SHAPE, seed=3)
    assert _top1(_run(small_cnn, x), _run(tmp_path / "q.onnx", x)) >= 0.9
    scales = {t.name: t for t in onnx.load_model(str(tmp_path / "q.onnx")).graph.initializer}
    input_scale = float(numpy_helper.to_array(scales["input_scale"]))
    data = _normal(16, CNN_SHAPE)
    minmax_scale = (data.max() - data.min()) / 255  # u8 asymmetric over the full range
    if calib == "minmax":
        assert input_scale == pytest.approx(minmax_scale, rel=1e-3)
    if calib == "entropy":  # onnxruntime's own 128-bin default would give minmax's scale exactly
        assert report.notes["entropy_bins"].startswith(str(int8_static.ENTROPY_BINS))
        assert input_scale < 0.95 * minmax_scale


def test_int8_static_fixed_batch_one_feeds_single_samples(tmp_path: Path) -> None:
    model = build_cnn(tmp_path / "b1.onnx", channels=8, blocks=2, input_hw=16, batch=1)
    report = int8_static.TECHNIQUE.apply(
        model, tmp_path / "q.onnx", _splits(_normal(5, CNN_SHAPE)), {"activations": "s8"}, _log
    )
    assert report.notes["calibration_batches"] == 5 and report.notes["calibration_samples"] == 5
    assert _run(tmp_path / "q.onnx", _normal(2, CNN_SHAPE)).shape == (2, 10)


def test_int8_static_wrong_shape_names_both(small_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"\(N, 3, 16, 16\).*\(4, 3, 8, 8\)"):
        int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, (3, 8, 8))), {}, _log)
    with pytest.raises(RecipeError, match="shape"):
        int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, (768,))), {}, _log)
    assert not (tmp_path / "q.onnx").exists()


def test_int8_static_float64_says_convert(small_cnn: Path, tmp_path: Path) -> None:
    data = _splits(_normal(4, CNN_SHAPE).astype(np.float64))
    with pytest.raises(RecipeError, match=r"float64.*float32.*convert") as info:
        int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", data, {}, _log)
    assert "astype" in str(info.value)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"calib": "kl"}, "calib"),
        ({"per_channel": "yes"}, "per_channel"),
        ({"samples": "0"}, "samples"),
        ({"calibration": "entropy"}, "calibration"),
        ({"activations": "s8", "weights": "u8"}, "weights=u8 is not supported"),
    ],
)
def test_int8_static_bad_params(small_cnn: Path, tmp_path: Path, params: dict[str, str], key: str) -> None:
    with pytest.raises(RecipeError, match=key):
        int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, CNN_SHAPE)), params, _log)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2", True),
        ("fpu sse2 avx2 avx512_vnni", False),
        ("sse2 avx_vnni", False),
        ("fp asimd", False),
        (None, False),
    ],
)
def test_reduce_range_auto(tmp_path: Path, flags: str | None, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    value, reason = onnx_common.reduce_range_decision("auto", cpuinfo)
    assert value is expected and reason.startswith("auto")
    assert onnx_common.reduce_range_decision("true", cpuinfo) == (True, "set by the recipe")


# --- int8 dynamic ----------------------------------------------------------------------------------------


def test_int8_dynamic_mlp(mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "d.onnx"
    report = int8_dynamic.TECHNIQUE.apply(mlp, target, _splits(_normal(4, (128,))), {}, _log)
    notes = report.notes
    assert notes["size_after_bytes"] <= 0.35 * notes["size_before_bytes"]
    assert notes["quant_node_types"]["MatMulInteger"] == 2  # both Gemms
    x = _normal(64, (128,), seed=4)
    assert _top1(_run(mlp, x), _run(target, x)) >= 0.9


def test_int8_dynamic_quantizes_conv_with_warning(small_cnn: Path, tmp_path: Path) -> None:
    # onnxruntime 1.32 rewrites Conv into ConvInteger dynamically, so a CNN is not NotApplicable.
    report = int8_dynamic.TECHNIQUE.apply(small_cnn, tmp_path / "d.onnx", _splits(_normal(4, CNN_SHAPE)), {}, _log)
    assert report.notes["quant_node_types"]["ConvInteger"] == 2
    assert "ConvInteger" in report.notes["warning"]


def test_int8_dynamic_not_applicable_without_weights(tmp_path: Path) -> None:
    source = tmp_path / "relu.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    with pytest.raises(NotApplicable, match="no MatMul/Gemm"):
        int8_dynamic.TECHNIQUE.apply(source, tmp_path / "d.onnx", _splits(_normal(4, (4,))), {}, _log)
    assert not (tmp_path / "d.onnx").exists()


# --- fp16 ------------------------------------------------------------------------------------------------


def test_fp16_io_size_and_accuracy(wide_cnn: Path, tmp_path: Path) -> None:
    target = tmp_path / "h.onnx"
    report = fp16.TECHNIQUE.apply(wide_cnn, target, _splits(_normal(40, CNN_SHAPE)), {}, _log)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]
    notes = report.notes
    assert 0.45 <= notes["size_ratio"] <= 0.55
    assert notes["check_samples"] == fp16.CHECK_SAMPLES
    assert notes["max_abs_diff"] < 0.05 and notes["top1_agreement"] >= 0.99


def test_fp16_overflow_is_not_applicable(tmp_path: Path) -> None:
    source = tmp_path / "big.onnx"
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["output"])],
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [2], [1000.0, 1000.0])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    data = _splits(np.full((4, 2), 100.0, dtype=np.float32))  # 1e5 > float16 max 65504
    with pytest.raises(NotApplicable, match="FP16 overflows"):
        fp16.TECHNIQUE.apply(source, tmp_path / "h.onnx", data, {}, _log)


def test_fp16_rejects_params_and_float64(small_cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown parameter"):
        fp16.TECHNIQUE.apply(small_cnn, tmp_path / "h.onnx", _splits(_normal(4, CNN_SHAPE)), {"x": "1"}, _log)
    with pytest.raises(RecipeError, match="float64"):
        fp16.TECHNIQUE.apply(
            small_cnn, tmp_path / "h.onnx", _splits(_normal(4, CNN_SHAPE).astype(np.float64)), {}, _log
        )


def test_int8_static_preprocess_failure_falls_back(
    small_cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.quantization import shape_inference

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    report = int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, CNN_SHAPE)), {}, _log)
    assert report.notes["preprocess"].startswith("skipped: RuntimeError: symbolic shape inference failed")
    assert report.notes["quantized_nodes"] > 0


@pytest.mark.parametrize(("activations", "weights"), [("s8", "s8"), ("u8", "u8")])
def test_int8_static_type_combinations(small_cnn: Path, tmp_path: Path, activations: str, weights: str) -> None:
    params = {"activations": activations, "weights": weights}
    report = int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, CNN_SHAPE)), params, _log)
    assert report.notes["activations"] == activations and report.notes["weights"] == weights
    assert _run(tmp_path / "q.onnx", _normal(2, CNN_SHAPE)).shape == (2, 10)


def test_int8_static_symmetric_gives_zero_points_of_zero_for_tensorrt(small_cnn: Path, tmp_path: Path) -> None:
    # TensorRT's parser takes only signed, symmetric Q/DQ; this is the recipe form the README gives for it.
    params = {"activations": "s8", "symmetric": "true"}
    report = int8_static.TECHNIQUE.apply(small_cnn, tmp_path / "q.onnx", _splits(_normal(4, CNN_SHAPE)), params, _log)
    assert report.notes["symmetric_activations"] is True
    model = onnx.load(str(tmp_path / "q.onnx"))
    zero_points = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if "zero_point" in i.name}
    # Biases are int32 (as TensorRT expects); activations and weights signed int8; every zero point 0.
    offending = {n: z for n, z in zero_points.items() if z.any() or z.dtype != (np.int32 if "bias" in n else np.int8)}
    assert zero_points and not offending, offending
