"""The OpenVINO backend with real OpenVINO sessions on a tiny model, as ONNX and as IR (.xml + .bin)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model is built with torch (coordinator/dev install)")
ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install edgebench[openvino])")

from agent.runtimes.base import InputMismatch, ModelLoadError, RuntimeUnsupported  # noqa: E402
from agent.runtimes.openvino import BACKEND, OpenVinoSession, check_device  # noqa: E402
from agent.types import ModelFormat, PrecisionHint, RuntimeConfig  # noqa: E402
from tests.runtime_models import build_ir, build_onnx, reference, sample_input, tiny_module  # noqa: E402

#: FP32 on both sides: only kernels and summation order differ.
ATOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ov")
    return {
        "onnx": build_onnx(d / "model.onnx"),
        "onnx_static": build_onnx(d / "static" / "model.onnx", dynamic_batch=False),
        "ir": build_ir(d / "ir"),
        "other_ir": build_ir(d / "other", tiny_module(seed=3, channels=6)),
    }


def load(path: Path, **config: Any) -> OpenVinoSession:
    cfg = RuntimeConfig("openvino", **config)
    BACKEND.prepare(path, cfg)
    return BACKEND.load(path, cfg)


def copy_ir(xml: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(xml, folder / "model.xml")
    shutil.copy(xml.with_suffix(".bin"), folder / "model.bin")
    return folder / "model.xml"


def test_probe_lists_version_formats_and_devices() -> None:
    info = BACKEND.probe()
    assert info.available, info.unavailable_reason
    assert info.version and info.version.split(".")[0].isdigit()
    assert info.model_formats == (ModelFormat.OPENVINO_IR, ModelFormat.ONNX)
    assert "CPU" in info.execution_providers
    assert set(info.execution_providers) == set(ov.Core().available_devices)


@pytest.mark.parametrize("fmt", ["onnx", "ir"])
def test_outputs_match_torch_and_are_copies(models: dict[str, Path], fmt: str) -> None:
    session = load(models[fmt], intra_op_threads=1)
    module = tiny_module()
    assert [(i.name, i.shape, i.dtype) for i in session.inputs] == [("input", (-1, 3, 8, 8), "float32")]
    assert [(o.name, o.shape, o.dtype) for o in session.outputs] == [("logits", (-1, 5), "float32")]
    x1, x2 = sample_input(seed=1), sample_input(seed=2)
    first = session.run({"input": x1})
    kept = first[0].copy()
    second = session.run({"input": x2})
    assert isinstance(first[0], np.ndarray) and first[0].dtype == np.float32
    np.testing.assert_allclose(first[0], reference(module, x1), rtol=0, atol=ATOL)
    np.testing.assert_allclose(second[0], reference(module, x2), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(first[0], kept)  # the next run did not overwrite a kept result
    assert session.execution_providers() == ("CPU",)
    session.close()


def test_details_record_what_the_compiled_model_reports(models: dict[str, Path]) -> None:
    session = load(models["ir"], intra_op_threads=1, precision_hint=PrecisionHint.FP32)
    d = session.details()
    assert d["performance_hint"] == "LATENCY"
    assert d["inference_precision"] == "f32"
    assert d["inference_precision_requested"] == "f32 (precision_hint fp32)"
    assert d["num_streams"] == "1" and d["inference_num_threads"] == "1"
    assert d["device"] == "CPU"
    assert d["device_full_name"] == f"CPU: {ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}"
    assert d["model_format"] == "openvino_ir" and d["openvino_build"] == ov.get_version()
    assert d["batch"].startswith("dynamic in the model: compiled for the job's batch 1 at load")


def test_unspecified_precision_means_f32() -> None:
    # The CPU plugin's own default is bf16 on CPUs that have it; edgebench asks for f32 unless told otherwise.
    from agent.runtimes.openvino import PRECISIONS

    assert PRECISIONS[PrecisionHint.UNSPECIFIED] == PRECISIONS[PrecisionHint.FP32] == "f32"
    assert PRECISIONS[PrecisionHint.FP16] == "f16" and PRECISIONS[PrecisionHint.BF16] == "bf16"


@pytest.mark.parametrize(("hint", "asked"), [(PrecisionHint.UNSPECIFIED, "f32"), (PrecisionHint.FP16, "f16")])
def test_precision_is_asked_for_and_the_result_recorded(
    models: dict[str, Path], hint: PrecisionHint, asked: str
) -> None:
    session = load(models["onnx"], precision_hint=hint)
    # What OpenVINO itself reports for the same request (a CPU without f16 support runs f32 instead).
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(models["onnx"])), "CPU", {"INFERENCE_PRECISION_HINT": asked})
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert session.details()["inference_precision"] == actual
    assert session.details()["inference_precision_requested"] == f"{asked} (precision_hint {hint.value})"


def test_throughput_hint_and_thread_count(models: dict[str, Path]) -> None:
    session = load(models["onnx"], intra_op_threads=2, options=(("performance_hint", "THROUGHPUT"),))
    d = session.details()
    assert d["performance_hint"] == "THROUGHPUT"
    assert d["inference_num_threads"] == "2" and d["inference_num_threads_requested"] == "2"
    assert int(d["num_streams"]) >= 1
    np.testing.assert_allclose(
        session.run({"input": sample_input()})[0], reference(tiny_module(), sample_input()), atol=ATOL
    )


def test_unknown_performance_hint_is_unsupported(models: dict[str, Path]) -> None:
    with pytest.raises(RuntimeUnsupported, match="performance_hint 'fastest' is not one of latency, throughput"):
        load(models["onnx"], options=(("performance_hint", "fastest"),))


def test_device_the_agent_lacks_lists_the_available_ones(models: dict[str, Path]) -> None:
    available = list(ov.Core().available_devices)
    missing = next(d for d in ("NPU", "GPU", "GPU.3", "FPGA") if d not in available)
    with pytest.raises(RuntimeUnsupported) as err:
        load(models["onnx"], device=missing)
    message = str(err.value)
    assert f"device {missing} is not available" in message
    assert all(d in message for d in available)
    with pytest.raises(RuntimeUnsupported, match=f"device {missing} is not"):
        load(models["onnx"], device=f"AUTO:{missing},CPU")


def test_device_name_rules() -> None:
    check_device("GPU", ["CPU", "GPU.0", "GPU.1"])  # any GPU
    check_device("GPU.0", ["CPU", "GPU"])  # the only GPU is listed without index
    check_device("AUTO", ["CPU"])
    check_device("MULTI:CPU(2)", ["CPU"])
    with pytest.raises(RuntimeUnsupported):
        check_device("GPU.2", ["CPU", "GPU.0", "GPU.1"])


def test_auto_device_runs_and_reports_where(models: dict[str, Path]) -> None:
    session = load(models["onnx"], device="auto")
    assert session.details()["device"] == "AUTO"
    assert session.execution_providers() == ("CPU",)
    np.testing.assert_allclose(
        session.run({"input": sample_input()})[0], reference(tiny_module(), sample_input()), atol=ATOL
    )


def test_dynamic_batch_is_compiled_for_the_batch_that_runs(models: dict[str, Path]) -> None:
    session = load(models["onnx"], intra_op_threads=1)
    module = tiny_module()
    for batch in (3, 3, 1, 2):
        x = sample_input(batch=batch, seed=batch)
        out = session.run({"input": x})[0]
        assert out.shape == (batch, 5)
        np.testing.assert_allclose(out, reference(module, x), rtol=0, atol=ATOL)


def test_static_model_keeps_its_batch_and_refuses_another(models: dict[str, Path]) -> None:
    session = load(models["onnx_static"])
    assert session.inputs[0].shape == (1, 3, 8, 8)
    assert session.details()["batch"] == "static (as in the model)"
    with pytest.raises(InputMismatch, match=r"takes input\[1, 3, 8, 8\]; the feeds are input\[2, 3, 8, 8\]"):
        session.run({"input": sample_input(batch=2)})


def test_truncated_weights_say_the_bin_is_wrong(models: dict[str, Path], tmp_path: Path) -> None:
    xml = copy_ir(models["ir"], tmp_path / "ir")
    weights = xml.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as err:
        load(xml)
    message = str(err.value)
    assert "model.bin" in message and "do not match, or one of them is truncated" in message
    assert "Incorrect weights in bin file" in message  # OpenVINO's own reason is kept


def test_swapped_weights_say_xml_and_bin_do_not_match(models: dict[str, Path], tmp_path: Path) -> None:
    xml = copy_ir(models["ir"], tmp_path / "ir")
    shutil.copy(models["other_ir"].with_suffix(".bin"), xml.with_suffix(".bin"))  # another model's weights
    with pytest.raises(ModelLoadError, match=r"\.xml and its \.bin \(weights\) do not match"):
        load(xml)


def test_missing_weights_name_the_companion_to_send(models: dict[str, Path], tmp_path: Path) -> None:
    xml = copy_ir(models["ir"], tmp_path / "ir")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelLoadError, match=r"arrived without model\.bin.*companion file named 'model\.bin'"):
        BACKEND.prepare(xml, RuntimeConfig("openvino"))


def test_corrupt_onnx_is_a_load_error(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(models["onnx"].read_bytes()[:300])
    with pytest.raises(ModelLoadError, match=r"OpenVINO could not read the ONNX model model\.onnx"):
        load(bad)


def test_onnx_external_data_is_checked_before_openvino_opens_it(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert onnx.load(str(path), load_external_data=False).graph.initializer[0].name == "w"
    with pytest.raises(ModelLoadError, match="refused before any runtime opened it"):
        BACKEND.prepare(path, RuntimeConfig("openvino"))


def test_loading_openvino_on_an_agent_sends_no_telemetry() -> None:
    """`import openvino` forks a process that sends a usage event; the backend switches that off first."""
    code = (
        "import os\n"
        "forks = []\n"
        "real = os.fork\n"
        "os.fork = lambda: (forks.append(1), real())[1]\n"
        "from agent.runtimes.openvino import BACKEND\n"
        "assert BACKEND.probe().available\n"
        "print('forks', len(forks))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "forks 0" in done.stdout


def test_the_jobs_batch_is_compiled_at_load(tmp_path: Path) -> None:
    """The harness passes the job's batch as option `batch`: a free batch axis is compiled for it at load, so
    the first inference does not pay a recompile."""
    xml = build_ir(tmp_path)
    session = BACKEND.load(xml, RuntimeConfig(name="openvino", options=(("batch", "4"),)))
    assert "compiled for the job's batch 4 at load" in session.details()["batch"]
    x = sample_input(batch=4)
    (out,) = session.run({session.inputs[0].name: x})
    assert out.shape[0] == 4
    with pytest.raises(RuntimeUnsupported, match="option batch='0'"):
        BACKEND.load(xml, RuntimeConfig(name="openvino", options=(("batch", "0"),)))
