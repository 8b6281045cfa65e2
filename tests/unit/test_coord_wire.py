"""Tests of coordinator/dispatch/wire.py: agent results are untrusted input (validated, converted or
rejected with a reason), device probes are truncated and checked for compatibility, jobs are mapped."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
from google.protobuf import json_format

from coordinator.dispatch.wire import (
    MAX_DIAGNOSTICS_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_SAMPLES,
    ResultRejected,
    build_job,
    probe_from_pb,
    result_from_pb,
)
from coordinator.types import Artifact, JobStatus, MeasurementSettings, Variant
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.version import CURRENT

JOB = "run-1.0123456789ab.1"
MS = 1_000_000
HOUR_NS = 3_600 * 10**9
SAMPLES = [5 * MS, 5 * MS + 1_234, 4 * MS + 999_999, 6 * MS, 5 * MS + 7]
STARTED_NS = 1_717_000_000_123_456_789
FINISHED_NS = 1_717_000_003_987_654_321


def make_result(**top: object) -> pb.BenchmarkResult:
    """A complete, valid SUCCEEDED result (every section present)."""
    msg = pb.BenchmarkResult(
        job_id=JOB,
        status=pb.BENCHMARK_STATUS_SUCCEEDED,
        message="",
        timing=pb.TimingReport(
            load_ns=150 * MS,
            first_inference_ns=12 * MS,
            warmup_iterations=10,
            warmup_ns=51 * MS,
            latencies_ns=SAMPLES,
            steady_wall_ns=sum(SAMPLES) + 50_000,
            stop_reason=pb.STOP_REASON_CI_CONVERGED,
        ),
        memory=pb.MemoryReport(
            rss_before_load_bytes=40 * 2**20, rss_after_load_bytes=70 * 2**20, peak_rss_bytes=90 * 2**20
        ),
        accuracy=pb.AccuracyReport(
            samples=64,
            has_labels=True,
            top1=0.75,
            top5=0.953125,
            has_reference=True,
            top1_agreement=0.984375,
            cosine_similarity=0.99951171875,
            max_abs_error=0.03125,
            snr_db=38.25,
        ),
        provenance=pb.Provenance(
            device_id="dev-1234",
            agent_version="0.1.0",
            os="Linux 6.6.31",
            architecture="aarch64",
            runtime_name="onnxruntime",
            runtime_version="1.18.0",
            execution_providers=["CPUExecutionProvider"],
            intra_op_threads=4,
            precision_hint=pb.PRECISION_HINT_FP32,
            model_sha256="a" * 64,
            batch_size=1,
            inputs=[pb.TensorInfo(name="input", shape=[1, 3, 224, 224], dtype="float32")],
            before=pb.EnvironmentSample(cpu_frequency_hz=2_400_000_000, temperature_millicelsius=51_000),
            runtime_details={"graph_optimization_level": "ORT_ENABLE_ALL"},
        ),
        diagnostics="",
    )
    msg.started_at.FromNanoseconds(STARTED_NS)
    msg.finished_at.FromNanoseconds(FINISHED_NS)
    for key, value in top.items():
        setattr(msg, key, value)
    return msg


def rejected(msg: pb.BenchmarkResult, expected_job_id: str = JOB) -> str:
    with pytest.raises(ResultRejected) as info:
        result_from_pb(msg, expected_job_id)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- conversion


def test_every_field_of_a_full_result_is_converted() -> None:
    msg = make_result()
    r = result_from_pb(msg, JOB)
    assert r.status is JobStatus.SUCCEEDED
    assert r.message == ""
    assert r.latencies_ns == tuple(SAMPLES)
    assert (r.load_ns, r.first_inference_ns, r.warmup_iterations, r.warmup_ns) == (150 * MS, 12 * MS, 10, 51 * MS)
    assert r.steady_wall_ns == sum(SAMPLES) + 50_000
    assert r.stop_reason == "ci_converged"
    assert (r.rss_before_load_bytes, r.rss_after_load_bytes, r.peak_rss_bytes) == (
        40 * 2**20,
        70 * 2**20,
        90 * 2**20,
    )
    assert r.has_memory is True
    assert r.accuracy_samples == 64
    assert (r.top1, r.top5) == (0.75, 0.953125)
    assert (r.top1_agreement, r.cosine_similarity, r.max_abs_error, r.snr_db) == (
        0.984375,
        0.99951171875,
        0.03125,
        38.25,
    )
    assert r.provenance == json_format.MessageToDict(msg.provenance, preserving_proto_field_name=True)
    assert r.provenance["device_id"] == "dev-1234"
    assert r.provenance["execution_providers"] == ["CPUExecutionProvider"]
    assert r.provenance["intra_op_threads"] == 4
    assert r.provenance["runtime_details"] == {"graph_optimization_level": "ORT_ENABLE_ALL"}
    assert r.provenance["inputs"][0]["name"] == "input"
    assert r.started_at_ns == STARTED_NS
    assert r.finished_at_ns == FINISHED_NS
    assert r.diagnostics == ""


def test_accuracy_is_absent_when_not_sent() -> None:
    msg = make_result()
    msg.ClearField("accuracy")
    r = result_from_pb(msg, JOB)
    assert r.accuracy_samples == 0
    assert (r.top1, r.top5, r.top1_agreement, r.cosine_similarity, r.max_abs_error, r.snr_db) == (None,) * 6


def test_accuracy_fields_follow_the_has_flags() -> None:
    msg = make_result()
    msg.accuracy.has_labels = False
    msg.accuracy.top1 = 7.0  # ignored: no labels, so not validated nor kept
    r = result_from_pb(msg, JOB)
    assert (r.top1, r.top5) == (None, None)
    assert r.top1_agreement == 0.984375
    assert r.accuracy_samples == 64

    msg = make_result()
    msg.accuracy.has_reference = False
    msg.accuracy.snr_db = math.nan  # ignored: no reference
    r = result_from_pb(msg, JOB)
    assert r.top1 == 0.75
    assert (r.top1_agreement, r.cosine_similarity, r.max_abs_error, r.snr_db) == (None,) * 4


@pytest.mark.parametrize(("snr", "kept"), [(math.inf, 1000.0), (-math.inf, -1000.0), (5e6, 1000.0), (-3.5, -3.5)])
def test_snr_is_clamped_not_rejected(snr: float, kept: float) -> None:
    msg = make_result()
    msg.accuracy.snr_db = snr  # identical outputs give an infinite SNR
    assert result_from_pb(msg, JOB).snr_db == kept


def test_fractions_at_the_bounds_are_accepted() -> None:
    msg = make_result()
    msg.accuracy.top1 = 0.0
    msg.accuracy.top5 = 1.0
    msg.accuracy.cosine_similarity = -1.0
    msg.accuracy.max_abs_error = 0.0
    r = result_from_pb(msg, JOB)
    assert (r.top1, r.top5, r.cosine_similarity, r.max_abs_error) == (0.0, 1.0, -1.0, 0.0)


def test_memory_absent_or_zero_peak_means_no_memory() -> None:
    msg = make_result()
    msg.ClearField("memory")
    assert result_from_pb(msg, JOB).has_memory is False
    msg = make_result()
    msg.memory.peak_rss_bytes = 0
    msg.memory.rss_before_load_bytes = 10  # not compared when there is no peak
    assert result_from_pb(msg, JOB).has_memory is False


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (pb.BENCHMARK_STATUS_FAILED, JobStatus.FAILED),
        (pb.BENCHMARK_STATUS_TIMEOUT, JobStatus.TIMEOUT),
        (pb.BENCHMARK_STATUS_OUT_OF_MEMORY, JobStatus.OUT_OF_MEMORY),
        (pb.BENCHMARK_STATUS_UNSUPPORTED, JobStatus.UNSUPPORTED),
        (pb.BENCHMARK_STATUS_CANCELLED, JobStatus.CANCELLED),
    ],
)
def test_failure_statuses_without_samples(status: int, expected: JobStatus) -> None:
    msg = pb.BenchmarkResult(job_id=JOB, status=status, message="model load failed: bad node", diagnostics="trace")  # type: ignore[arg-type]
    r = result_from_pb(msg, JOB)
    assert r.status is expected
    assert r.message == "model load failed: bad node"
    assert r.diagnostics == "trace"
    assert r.latencies_ns == ()
    assert r.provenance == {}
    assert (r.started_at_ns, r.finished_at_ns) == (0, 0)
    assert r.stop_reason == "unspecified"
    assert r.has_memory is False


def test_stop_reason_names() -> None:
    for value, name in [
        (pb.STOP_REASON_MINIMUMS_MET, "minimums_met"),
        (pb.STOP_REASON_CI_CONVERGED, "ci_converged"),
        (pb.STOP_REASON_MAX_DURATION, "max_duration"),
        (pb.STOP_REASON_MAX_ITERATIONS, "max_iterations"),
        (77, "unknown"),  # a newer agent's reason is kept as unknown, not rejected
    ]:
        msg = make_result()
        msg.timing.stop_reason = value  # type: ignore[assignment]
        assert result_from_pb(msg, JOB).stop_reason == name


def test_long_diagnostics_are_truncated_not_rejected() -> None:
    msg = make_result(diagnostics="x" * (MAX_DIAGNOSTICS_CHARS * 3))
    r = result_from_pb(msg, JOB)
    assert r.diagnostics == "x" * MAX_DIAGNOSTICS_CHARS


def test_limits_themselves_are_accepted() -> None:
    msg = make_result(message="m" * MAX_MESSAGE_CHARS)
    msg.timing.latencies_ns[0] = HOUR_NS
    msg.timing.steady_wall_ns = sum(msg.timing.latencies_ns)
    r = result_from_pb(msg, JOB)
    assert r.latencies_ns[0] == HOUR_NS
    assert len(r.message) == MAX_MESSAGE_CHARS


# ---------------------------------------------------------------------------------------------- rejection


def _set_accuracy(field: str, value: float) -> Callable[[pb.BenchmarkResult], None]:
    def change(msg: pb.BenchmarkResult) -> None:
        setattr(msg.accuracy, field, value)

    return change


def _set_timing(**fields: object) -> Callable[[pb.BenchmarkResult], None]:
    def change(msg: pb.BenchmarkResult) -> None:
        for key, value in fields.items():
            if key == "latencies_ns":
                del msg.timing.latencies_ns[:]
                msg.timing.latencies_ns.extend(value)  # type: ignore[arg-type]
            else:
                setattr(msg.timing, key, value)

    return change


def _peak_below_before(msg: pb.BenchmarkResult) -> None:
    msg.memory.rss_before_load_bytes = 100 * 2**20
    msg.memory.peak_rss_bytes = 99 * 2**20


def _huge_provenance(msg: pb.BenchmarkResult) -> None:
    for i in range(10_000):
        msg.provenance.runtime_details[f"option_{i:05d}"] = f"value {i}"


def _no_samples(msg: pb.BenchmarkResult) -> None:
    del msg.timing.latencies_ns[:]


def _long_message(msg: pb.BenchmarkResult) -> None:
    msg.message = "m" * (MAX_MESSAGE_CHARS + 1)


def _unknown_status(msg: pb.BenchmarkResult) -> None:
    msg.status = 42  # type: ignore[assignment]


def _unspecified_status(msg: pb.BenchmarkResult) -> None:
    msg.status = pb.BENCHMARK_STATUS_UNSPECIFIED


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param(_unknown_status, "unknown status 42", id="unknown-status"),
        pytest.param(_unspecified_status, "unknown status 0", id="unspecified-status"),
        pytest.param(_no_samples, "no latency samples", id="succeeded-without-samples"),
        pytest.param(_set_timing(latencies_ns=[5 * MS, 0, 5 * MS]), "zero or longer than an hour", id="zero-sample"),
        pytest.param(
            _set_timing(latencies_ns=[5 * MS, HOUR_NS + 1], steady_wall_ns=2 * HOUR_NS),
            "zero or longer than an hour",
            id="sample-over-an-hour",
        ),
        pytest.param(_set_timing(steady_wall_ns=sum(SAMPLES) // 2), "shorter than its samples", id="wall-too-short"),
        pytest.param(_set_timing(load_ns=25 * HOUR_NS), "timing.load_ns", id="load-over-a-day"),
        pytest.param(_set_accuracy("top1", 1.5), "accuracy.top1 = 1.5", id="top1-over-1"),
        pytest.param(_set_accuracy("top1", math.nan), "accuracy.top1 = nan", id="top1-nan"),
        pytest.param(_set_accuracy("top5", -0.1), "accuracy.top5", id="top5-negative"),
        pytest.param(_set_accuracy("top1_agreement", math.inf), "accuracy.top1_agreement", id="agreement-inf"),
        pytest.param(_set_accuracy("cosine_similarity", -2.0), "accuracy.cosine_similarity", id="cosine-minus-2"),
        pytest.param(_set_accuracy("max_abs_error", -0.5), "accuracy.max_abs_error", id="negative-max-abs-error"),
        pytest.param(_set_accuracy("max_abs_error", math.nan), "accuracy.max_abs_error", id="nan-max-abs-error"),
        pytest.param(_set_accuracy("snr_db", math.nan), "accuracy.snr_db is NaN", id="nan-snr"),
        pytest.param(_set_accuracy("samples", 10**9 + 1), "accuracy.samples", id="accuracy-samples"),
        pytest.param(_peak_below_before, "peak RSS is below the RSS before load", id="peak-below-before"),
        pytest.param(_long_message, f"message of {MAX_MESSAGE_CHARS + 1} characters", id="long-message"),
        pytest.param(_huge_provenance, "provenance is over the size limit", id="huge-provenance"),
    ],
)
def test_out_of_contract_results_are_rejected_naming_the_problem(
    change: Callable[[pb.BenchmarkResult], None], words: str
) -> None:
    msg = make_result()
    change(msg)
    assert words in rejected(msg)


def test_result_for_another_job_is_rejected() -> None:
    message = rejected(make_result(job_id="run-1.ffffffffffff.1"))
    assert "run-1.ffffffffffff.1" in message and JOB in message
    # A hostile id is cut short in the message.
    message = rejected(make_result(job_id="<script>" * 1_000))
    assert len(message) < 300


def test_too_many_samples_are_rejected() -> None:
    msg = make_result()
    del msg.timing.latencies_ns[:]
    msg.timing.latencies_ns.extend([1_000] * (MAX_SAMPLES + 1))
    msg.timing.steady_wall_ns = 1_000 * (MAX_SAMPLES + 1)
    assert f"{MAX_SAMPLES + 1} samples exceed the limit of {MAX_SAMPLES}" in rejected(msg)


def test_exactly_max_samples_are_accepted() -> None:
    msg = make_result()
    del msg.timing.latencies_ns[:]
    msg.timing.latencies_ns.extend([1_000] * MAX_SAMPLES)
    msg.timing.steady_wall_ns = 1_000 * MAX_SAMPLES
    assert len(result_from_pb(msg, JOB).latencies_ns) == MAX_SAMPLES


def test_rejection_is_a_value_error() -> None:
    assert issubclass(ResultRejected, ValueError)


# ---------------------------------------------------------------------------------------------- probes


def device_info(major: int = CURRENT.major, minor: int = CURRENT.minor) -> pb.DeviceInfo:
    return pb.DeviceInfo(
        protocol=pb.ProtocolVersion(major=major, minor=minor),
        agent_version="0.1.0",
        device_id="dev-1234",
        hostname="pi5",
        os_name="Linux",
        os_release="6.6.31",
        architecture="aarch64",
        cpu_model="Cortex-A76",
        cpu_logical_cores=4,
        memory_total_bytes=8 * 2**30,
        board_model="Raspberry Pi 5 Model B Rev 1.0",
        gpus=[pb.GpuInfo(name="VideoCore VII")],
        runtimes=[
            pb.RuntimeInfo(
                name="onnxruntime",
                available=True,
                version="1.18.0",
                execution_providers=["CPUExecutionProvider"],
                model_formats=[pb.MODEL_FORMAT_ONNX],
            ),
            pb.RuntimeInfo(name="openvino", available=False, unavailable_reason="not installed"),
        ],
    )


def test_probe_of_a_current_agent_is_compatible() -> None:
    p = probe_from_pb("pi5", "pi5.local:50051", device_info())
    assert p.online is True and p.compatible is True
    assert p.protocol == str(CURRENT)
    assert (p.name, p.address, p.device_id, p.agent_version) == ("pi5", "pi5.local:50051", "dev-1234", "0.1.0")
    assert (p.hostname, p.os, p.architecture, p.cpu_model) == ("pi5", "Linux 6.6.31", "aarch64", "Cortex-A76")
    assert (p.cpu_cores, p.memory_bytes, p.board, p.gpus) == (
        4,
        8 * 2**30,
        "Raspberry Pi 5 Model B Rev 1.0",
        ("VideoCore VII",),
    )
    ort = p.runtime("onnxruntime")
    assert ort is not None and ort.available and ort.version == "1.18.0"
    assert ort.providers == ("CPUExecutionProvider",) and ort.formats == ("onnx",)
    ov = p.runtime("openvino")
    assert ov is not None and not ov.available and ov.reason == "not installed"
    assert p.probed_at_ns > 0


def test_probe_of_a_newer_major_is_incompatible_with_a_reason() -> None:
    p = probe_from_pb("pi5", "a:1", device_info(major=CURRENT.major + 1))
    assert p.online is True
    assert p.compatible is False
    assert p.protocol == f"{CURRENT.major + 1}.{CURRENT.minor}"
    assert "incompatible" in p.compatibility and "upgrade the coordinator" in p.compatibility


def test_probe_without_a_version_is_incompatible() -> None:
    info = device_info()
    info.ClearField("protocol")
    p = probe_from_pb("pi5", "a:1", info)
    assert p.compatible is False
    assert "no protocol version" in p.compatibility


def test_probe_drops_unknown_model_formats() -> None:
    info = device_info()
    del info.runtimes[0].model_formats[:]
    info.runtimes[0].model_formats.extend(
        [pb.MODEL_FORMAT_UNSPECIFIED, pb.MODEL_FORMAT_ONNX, 99, pb.MODEL_FORMAT_NULL]  # type: ignore[list-item]
    )
    p = probe_from_pb("pi5", "a:1", info)
    rt = p.runtime("onnxruntime")
    assert rt is not None and rt.formats == ("onnx", "null")


def test_probe_truncates_strings_and_lists() -> None:
    info = device_info()
    info.hostname = "h" * 10_000
    info.device_id = "d" * 10_000
    info.agent_version = "v" * 10_000
    info.cpu_model = "c" * 10_000
    info.board_model = "b" * 10_000
    info.architecture = "a" * 10_000
    info.os_name = "o" * 10_000
    del info.gpus[:]
    info.gpus.extend([pb.GpuInfo(name="g" * 1_000) for _ in range(100)])
    rt = info.runtimes[1]
    rt.name = "n" * 1_000
    rt.version = "9" * 1_000
    rt.unavailable_reason = "r" * 100_000
    rt.execution_providers.extend(["P" * 1_000] * 100)
    info.runtimes.extend([pb.RuntimeInfo(name=f"rt{i}") for i in range(200)])

    p = probe_from_pb("pi5", "a:1", info)
    assert (len(p.hostname), len(p.device_id), len(p.agent_version)) == (200, 200, 50)
    assert (len(p.cpu_model), len(p.board), len(p.architecture), len(p.os)) == (200, 200, 50, 200)
    assert len(p.gpus) == 16 and all(len(g) == 200 for g in p.gpus)
    assert len(p.runtimes) == 64
    long = p.runtimes[1]
    assert (len(long.name), len(long.version), len(long.reason)) == (50, 50, 1_000)
    assert len(long.providers) == 32 and all(len(x) == 100 for x in long.providers)


# ---------------------------------------------------------------------------------------------- build_job

VARIANT = Variant(name="fp32", path="models/m.xml", sha256="e" * 64, format="openvino_ir", size_bytes=10)
SETTINGS = MeasurementSettings(
    batch=8,
    threads=3,
    warmup_iterations=12,
    min_iterations=150,
    min_duration_s=1.5,
    max_duration_s=45.0,
    target_relative_ci=0.025,
    wall_time_s=300.0,
    memory_mb=768,
    accuracy=True,
)


def test_build_job_sends_the_chosen_artifact_with_its_companions_and_the_precision_hint() -> None:
    ir = Artifact("openvino_ir", "v/model.xml", "1" * 64, 10, (("model.bin", "v/model.bin", "2" * 64),))
    int8 = dataclasses.replace(VARIANT, format="onnx", others=(ir,), precision="int8")
    job = build_job("job-2", int8, "openvino", SETTINGS, "", ir)
    assert job.model.sha256 == "1" * 64 and job.model.format == pb.MODEL_FORMAT_OPENVINO_IR
    assert [(c.name, c.sha256) for c in job.model.companions] == [("model.bin", "2" * 64)]
    assert job.runtime.precision_hint == pb.PRECISION_HINT_INT8
    # Without an explicit artifact the primary file goes; FP32 is asked for explicitly (OpenVINO would
    # otherwise compute in bf16 where the CPU has it).
    plain = build_job("job-3", VARIANT, "openvino", SETTINGS, "")
    assert plain.model.sha256 == "e" * 64 and not plain.model.companions
    assert plain.runtime.precision_hint == pb.PRECISION_HINT_FP32
    assert "batch" not in plain.runtime.options
    # TensorRT builds its engine's optimisation profile around the job's batch.
    assert build_job("job-4", VARIANT, "tensorrt", SETTINGS, "").runtime.options["batch"] == "8"


def test_runtime_options_go_to_their_runtime_and_device_and_provider_become_fields() -> None:
    settings = dataclasses.replace(
        SETTINGS,
        runtime_options=(
            ("sleep_ns", "5"),
            ("openvino.device", "GPU"),
            ("openvino.performance_hint", "throughput"),
            ("onnxruntime.execution_provider", "CoreMLExecutionProvider"),
            ("openvino.sleep_ns", "7"),
        ),
    )
    ov = build_job("j1", VARIANT, "openvino", settings, "").runtime
    assert ov.device == "GPU" and dict(ov.options) == {"sleep_ns": "7", "performance_hint": "throughput"}
    ort = build_job("j2", VARIANT, "onnxruntime", settings, "").runtime
    assert ort.execution_provider == "CoreMLExecutionProvider" and not ort.device
    assert dict(ort.options) == {"sleep_ns": "5"}


def test_build_job_maps_every_setting() -> None:
    job = build_job("job-1", VARIANT, "openvino", SETTINGS, "f" * 64)
    assert job.job_id == "job-1"
    assert job.model.sha256 == "e" * 64
    assert job.model.format == pb.MODEL_FORMAT_OPENVINO_IR
    assert job.runtime.name == "openvino"
    assert job.runtime.intra_op_threads == 3
    assert job.inputs.WhichOneof("source") == "dataset_sha256"
    assert job.inputs.dataset_sha256 == "f" * 64
    assert job.inputs.batch_size == 8
    assert job.plan.warmup_iterations == 12
    assert job.plan.min_iterations == 150
    assert job.plan.min_duration.ToNanoseconds() == 1_500_000_000
    assert job.plan.max_duration.ToNanoseconds() == 45 * 10**9
    assert job.plan.target_relative_ci == 0.025
    assert job.limits.wall_time.ToNanoseconds() == 300 * 10**9
    assert job.limits.memory_bytes == 768 * 2**20
    assert job.accuracy_pass is True
    assert job.memory_pass is True
    # What goes over the wire is what was built.
    assert pb.BenchmarkJob.FromString(job.SerializeToString()) == job


def test_build_job_without_dataset_generates_inputs_and_skips_accuracy() -> None:
    job = build_job("job-2", VARIANT, "openvino", SETTINGS, "")
    assert job.inputs.WhichOneof("source") == "generated"
    assert job.inputs.generated.num_batches > 0
    assert job.inputs.batch_size == 8
    assert job.accuracy_pass is False


def test_build_job_accuracy_off_keeps_the_dataset() -> None:
    settings = MeasurementSettings(accuracy=False, memory_mb=0)
    job = build_job("job-3", VARIANT, "openvino", settings, "f" * 64)
    assert job.accuracy_pass is False
    assert job.inputs.dataset_sha256 == "f" * 64
    assert job.limits.memory_bytes == 0  # no limit


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("onnx", pb.MODEL_FORMAT_ONNX),
        ("openvino_ir", pb.MODEL_FORMAT_OPENVINO_IR),
        ("tflite", pb.MODEL_FORMAT_TFLITE),
        ("coreml", pb.MODEL_FORMAT_COREML),
        ("torch_export", pb.MODEL_FORMAT_TORCH_EXPORT),
        ("null", pb.MODEL_FORMAT_NULL),
    ],
)
def test_build_job_formats(fmt: str, value: int) -> None:
    v = Variant(name="x", path="m", sha256="1" * 64, format=fmt, size_bytes=1)
    assert build_job("j", v, "rt", MeasurementSettings(), "").model.format == value


# ---------------------------------------------------------------------------------------------- display


def test_safe_text_escapes_every_terminal_and_bidi_control_visibly() -> None:
    from coordinator.safe_text import clean

    controls = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))]
    controls += ["\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
    for ch in controls:
        shown = clean(f"a{ch}b")
        assert ch not in shown and shown.startswith("a\\") and shown.endswith("b"), repr(ch)
    assert clean("\x1b[31mred") == "\\x1b[31mred"
    assert clean("\u202eevil") == "\\u202eevil"
    assert clean("line 1\r\nline 2\tcol") == "line 1\nline 2\tcol"  # CR LF is a line break; tab and LF stay
    assert clean("[/x] [link=http://e]x[/link] :skull:") == "[/x] [link=http://e]x[/link] :skull:"  # not markup here
    assert clean("héllo, 世界 ✓") == "héllo, 世界 ✓"


def test_safe_text_one_line_and_limits() -> None:
    from coordinator.safe_text import clean, one_line, text

    assert one_line("a\r\nb\nc\td\u2028e") == "a b c d e"
    assert one_line("AAAA\rBBBB") == "AAAA\\x0dBBBB"  # a lone CR would overwrite the line: shown instead
    assert one_line("abcdef", 5) == "abcd…" and one_line("abcde", 5) == "abcde"
    assert clean("\x1b" * 10, 8) == "\\x1b\\x1…"  # the limit holds after escaping too
    assert len(clean("x" * 10_000_000, 200)) == 200
    rich_text = text("[bold]x[/bold]\x07", "red", limit=50)
    assert rich_text.plain == "[bold]x[/bold]\\x07" and str(rich_text.style) == "red"
