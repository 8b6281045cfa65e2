"""Bad inputs for the runtimes, sent as a user's coordinator would: a real agent, real uploads, real job processes.

What happens to each case (the job's final status and the reason in its message; the agent keeps serving):
- an OpenVINO IR whose .xml and .bin do not match (another model's weights): FAILED, "do not match";
- an IR sent without its .bin: FAILED, names the companion to send;
- a TFLite file using an operator the interpreter lacks: FAILED, names the operator;
- a model converted for one runtime sent to another (ONNX bytes declared as TFLite): FAILED, "not a TFLite
  flatbuffer";
- an OpenVINO device name the agent does not have: UNSUPPORTED, lists the devices it has;
- TensorRT asked for on a device without it: UNSUPPORTED with the probe's reason (and so is Core ML off macOS).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests import runtime_models
from tests.helpers import make_job

pytest.importorskip("openvino")
pytest.importorskip("ai_edge_litert")

Send = Callable[..., pb.BenchmarkResult]


@pytest.fixture(scope="module")
def send(agent: LocalAgent) -> Send:
    def run(
        model: Path, fmt: int, runtime: str, companions: dict[str, Path] | None = None, device: str = ""
    ) -> pb.BenchmarkResult:
        with agent.client() as client:
            request = make_job(client.upload(model).sha256, fmt=fmt, runtime=runtime, min_iterations=5)
            request.runtime.device = device
            for name, path in (companions or {}).items():
                request.model.companions.add(name=name, sha256=client.upload(path).sha256)
            return client.run_to_result(request)

    return run


@pytest.fixture(scope="module")
def irs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = runtime_models.build_ir(tmp_path_factory.mktemp("ir-a"), runtime_models.tiny_module(0, channels=4))
    b = runtime_models.build_ir(tmp_path_factory.mktemp("ir-b"), runtime_models.tiny_module(1, channels=8))
    return a, b


def test_ir_with_another_models_weights_fails_saying_they_do_not_match(send: Send, irs: tuple[Path, Path]) -> None:
    xml, other = irs
    result = send(xml, pb.MODEL_FORMAT_OPENVINO_IR, "openvino", {"model.bin": other.with_suffix(".bin")})
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "do not match" in result.message and "model.bin" in result.message


def test_ir_without_its_weights_names_the_companion_to_send(send: Send, irs: tuple[Path, Path]) -> None:
    result = send(irs[0], pb.MODEL_FORMAT_OPENVINO_IR, "openvino")
    assert result.status == pb.BENCHMARK_STATUS_FAILED and "model.bin" in result.message


def test_tflite_with_an_operator_the_interpreter_lacks_names_it(send: Send, tmp_path: Path) -> None:
    model = runtime_models.build_tflite(tmp_path / "m.tflite")
    broken = runtime_models.patch_tflite_operator(
        model, tmp_path / "custom.tflite", "FULLY_CONNECTED", custom_code="EdgebenchMissingOp"
    )
    result = send(broken, pb.MODEL_FORMAT_TFLITE, "litert")
    assert result.status == pb.BENCHMARK_STATUS_FAILED and "EdgebenchMissingOp" in result.message


def test_a_model_for_one_runtime_sent_to_another_is_refused(send: Send, tmp_path: Path) -> None:
    onnx_file = runtime_models.build_onnx(tmp_path / "m.onnx")
    result = send(onnx_file, pb.MODEL_FORMAT_TFLITE, "litert")
    assert result.status == pb.BENCHMARK_STATUS_FAILED and "not a TFLite flatbuffer" in result.message


def test_an_openvino_device_the_agent_lacks_is_unsupported_and_lists_what_it_has(
    send: Send, irs: tuple[Path, Path]
) -> None:
    xml = irs[0]
    result = send(xml, pb.MODEL_FORMAT_OPENVINO_IR, "openvino", {"model.bin": xml.with_suffix(".bin")}, device="NPU.7")
    assert result.status == pb.BENCHMARK_STATUS_UNSUPPORTED
    assert "NPU.7" in result.message and "CPU" in result.message


@pytest.mark.parametrize(("runtime", "fmt"), [("tensorrt", pb.MODEL_FORMAT_ONNX), ("coreml", pb.MODEL_FORMAT_COREML)])
def test_a_runtime_the_device_lacks_is_unsupported_with_the_reason(
    send: Send, agent: LocalAgent, tmp_path: Path, runtime: str, fmt: int
) -> None:
    with agent.client() as client:
        info = next(r for r in client.device_info().runtimes if r.name == runtime)
    if info.available:
        pytest.skip(f"{runtime} is available on this machine")
    model = runtime_models.build_onnx(tmp_path / "m.onnx")
    result = send(model, fmt, runtime)
    assert result.status == pb.BENCHMARK_STATUS_UNSUPPORTED
    assert info.unavailable_reason and info.unavailable_reason[:40] in result.message
