"""Tests of agent.jobspec: the JSON encoding of jobs and results between server, job process and disk."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from agent.jobspec import decode, to_jsonable
from agent.types import (
    AccuracyReport,
    BenchmarkJob,
    BenchmarkResult,
    BenchmarkStatus,
    CompanionFile,
    DeviceInfo,
    EnvironmentSample,
    GpuInfo,
    InputSpec,
    JobLimits,
    MeasurementPlan,
    MemoryReport,
    ModelFormat,
    ModelRef,
    PrecisionHint,
    Provenance,
    RuntimeConfig,
    RuntimeInfo,
    SandboxControl,
    StopReason,
    TensorInfo,
    TimingReport,
)

SHA = "ab" * 32

JOB = BenchmarkJob(
    job_id="sweep/resnet:int8@pi-4",
    model=ModelRef(SHA, ModelFormat.OPENVINO_IR, companions=(CompanionFile("model.bin", "cd" * 32),)),
    runtime=RuntimeConfig(
        "openvino",
        intra_op_threads=4,
        inter_op_threads=1,
        execution_provider="CPU",
        device="CPU",
        precision_hint=PrecisionHint.INT8,
        options=(("PERFORMANCE_HINT", "LATENCY"), ("NUM_STREAMS", "1")),
    ),
    inputs=InputSpec(batch_size=4, dataset_sha256="ef" * 32, seed=7, num_batches=3),
    plan=MeasurementPlan(11, 12, 13, 14, 15, 16, 0.02),
    accuracy_pass=True,
    memory_pass=False,
    limits=JobLimits(wall_time_ns=60 * 10**9, memory_bytes=2**30),
)

FULL_RESULT = BenchmarkResult(
    job_id="job-42",
    status=BenchmarkStatus.OUT_OF_MEMORY,
    message="killed",
    timing=TimingReport(
        load_ns=1,
        first_inference_ns=2,
        warmup_iterations=3,
        warmup_ns=4,
        latencies_ns=(5, 6, 7),
        steady_wall_ns=8,
        stop_reason=StopReason.CI_CONVERGED,
    ),
    memory=MemoryReport(rss_before_load_bytes=9, rss_after_load_bytes=10, peak_rss_bytes=11),
    accuracy=AccuracyReport(
        samples=12,
        has_labels=True,
        top1=0.75,
        top5=0.5,
        has_reference=True,
        top1_agreement=0.25,
        cosine_similarity=0.125,
        max_abs_error=1e-3,
        snr_db=42.5,
    ),
    provenance=Provenance(
        device_id="dev",
        agent_version="0.1.0",
        os="Linux",
        kernel="6.1",
        architecture="aarch64",
        python_version="3.11.2",
        runtime_name="onnxruntime",
        runtime_version="1.18",
        execution_providers=("CPUExecutionProvider", "XnnpackExecutionProvider"),
        intra_op_threads=2,
        inter_op_threads=3,
        precision_hint=PrecisionHint.FP16,
        model_sha256=SHA,
        dataset_sha256="ef" * 32,
        batch_size=4,
        inputs=(TensorInfo("x", (-1, 3, 224, 224), "float32"),),
        outputs=(TensorInfo("logits", (-1, 1000), "float32"), TensorInfo("aux", (), "int64")),
        before=EnvironmentSample(cpu_frequency_hz=1, temperature_millicelsius=2, load_average_1m=0.5, at_ns=3),
        after=EnvironmentSample(cpu_frequency_hz=4, temperature_millicelsius=5, load_average_1m=1.5, at_ns=6),
        runtime_details=(("graph_optimization_level", "all"),),
        sandbox=(SandboxControl("network", True, "own network namespace"), SandboxControl("memory", False, "")),
    ),
    started_at_ns=100,
    finished_at_ns=200,
    diagnostics="stderr tail",
)


def assert_fully_populated(obj: Any, where: str = "result") -> None:
    """Every field differs from its default, so a round trip really exercises each one."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            assert value != f.default, f"{where}.{f.name} is left at its default"
        elif f.default_factory is not dataclasses.MISSING:
            assert value != f.default_factory(), f"{where}.{f.name} is left at its default"
        if dataclasses.is_dataclass(value):
            assert_fully_populated(value, f"{where}.{f.name}")


def through_json(obj: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(obj)))


def test_fixtures_set_every_field() -> None:
    assert_fully_populated(FULL_RESULT)
    assert_fully_populated(JOB, "job")


def test_job_round_trip() -> None:
    assert decode(BenchmarkJob, through_json(JOB)) == JOB


def test_default_job_round_trip() -> None:
    job = BenchmarkJob("j", ModelRef(SHA, ModelFormat.NULL), RuntimeConfig("null"))
    assert decode(BenchmarkJob, through_json(job)) == job


def test_full_result_round_trip() -> None:
    decoded = decode(BenchmarkResult, through_json(FULL_RESULT))
    assert decoded == FULL_RESULT
    # Tuples come back as tuples (the dataclasses are hashable and compare equal to the originals).
    assert decoded.timing is not None
    assert isinstance(decoded.timing.latencies_ns, tuple)
    assert isinstance(decoded.provenance.inputs[0].shape, tuple)
    assert isinstance(decoded.provenance.runtime_details[0], tuple)
    assert hash(decoded) == hash(FULL_RESULT)


def test_result_with_none_optionals_round_trip() -> None:
    result = BenchmarkResult(job_id="j", status=BenchmarkStatus.UNSUPPORTED, message="no runtime")
    data = through_json(result)
    assert data["timing"] is None
    assert data["memory"] is None
    assert data["accuracy"] is None
    assert decode(BenchmarkResult, data) == result


def test_encoding_is_plain_json_values() -> None:
    data = to_jsonable(FULL_RESULT)
    assert data["status"] == "out_of_memory"
    assert data["timing"]["stop_reason"] == "ci_converged"
    assert data["timing"]["latencies_ns"] == [5, 6, 7]
    assert data["provenance"]["runtime_details"] == [["graph_optimization_level", "all"]]
    assert json.loads(json.dumps(data)) == data


def test_device_info_round_trip() -> None:
    info = DeviceInfo(
        1,
        2,
        "0.1.0",
        "dev",
        "host",
        "Linux",
        "6.1",
        "#1",
        "aarch64",
        "3.11",
        "Cortex-A72",
        4,
        4,
        1,
        2,
        ("neon",),
        4 * 2**30,
        "Raspberry Pi 4",
        "devicetree",
        (GpuInfo("Mali", "ARM", 1, "r1", "u"),),
        (RuntimeInfo("onnxruntime", True, "1.18", "", ("CPUExecutionProvider",), (ModelFormat.ONNX,)),),
        123,
    )
    assert decode(DeviceInfo, through_json(info)) == info


def test_integer_valued_floats_decode_as_floats() -> None:
    data = through_json(FULL_RESULT)
    data["accuracy"]["top1"] = 1
    decoded = decode(BenchmarkResult, data)
    assert decoded.accuracy is not None
    assert decoded.accuracy.top1 == 1.0
    assert type(decoded.accuracy.top1) is float


def mutated(path: tuple[str, ...], value: Any) -> Any:
    data = through_json(FULL_RESULT)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("bogus",), 1, r"unknown fields for BenchmarkResult: \['bogus'\]"),
        (("timing", "extra"), 1, "unknown fields for TimingReport"),
        (("job_id",), 5, "expected str, got int"),
        (("started_at_ns",), "100", "expected int, got str"),
        (("started_at_ns",), 1.5, "expected int, got float"),
        (("started_at_ns",), True, "expected int, got bool"),
        (("timing", "load_ns"), None, "expected int, got NoneType"),
        (("accuracy", "has_labels"), 1, "expected bool, got int"),
        (("status",), "exploded", "not a valid BenchmarkStatus"),
        (("status",), {}, "not a valid BenchmarkStatus"),
        (("timing", "stop_reason"), 3, "not a valid StopReason"),
        (("timing", "latencies_ns"), 5, "expected a list"),
        (("timing", "latencies_ns"), [1, "2"], "expected int, got str"),
        (("provenance", "runtime_details"), [["a", "b", "c"]], "expected 2 items"),
        (("provenance", "runtime_details"), [["a"]], "expected 2 items"),
        (("provenance",), "dev", "expected an object for Provenance"),
        (("memory",), [1, 2, 3], "expected an object for MemoryReport"),
    ],
)
def test_decode_rejects_unknown_fields_and_wrong_types(path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(BenchmarkResult, mutated(path, value))


def test_decode_rejects_a_non_object_top_level() -> None:
    with pytest.raises(ValueError, match="expected an object for BenchmarkJob"):
        decode(BenchmarkJob, [1, 2])


@pytest.mark.parametrize("value", ["0.5", None, True, [0.5]])
def test_decode_rejects_wrong_types_for_float_fields(value: Any) -> None:
    with pytest.raises(ValueError):
        decode(BenchmarkResult, mutated(("accuracy", "top1"), value))
