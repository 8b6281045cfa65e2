"""The only coordinator module that converts wire messages: agent messages <-> coordinator types.

Results are untrusted input: `result_from_pb` validates every field an agent sends (counts, ranges,
sizes, finiteness) and raises ResultRejected with what was wrong, so a faulty or hostile agent can put
neither garbage into the store nor markup into a report (reports escape too).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from google.protobuf import json_format

from coordinator.types import (
    Artifact,
    DeviceProbe,
    JobStatus,
    MeasurementSettings,
    ResultData,
    RuntimeStatus,
    SandboxStatus,
    Variant,
)
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.version import CURRENT, Version, check_compatibility

MAX_SAMPLES = 1_000_000
MAX_SAMPLE_NS = 3_600 * 10**9  # one inference longer than an hour is not a measurement
MAX_PHASE_NS = 24 * 3_600 * 10**9
MAX_BYTES = 2**50
MAX_MESSAGE_CHARS = 16_384
MAX_DIAGNOSTICS_CHARS = 8_192
MAX_PROVENANCE_CHARS = 65_536

STATUS = {
    pb.BENCHMARK_STATUS_SUCCEEDED: JobStatus.SUCCEEDED,
    pb.BENCHMARK_STATUS_FAILED: JobStatus.FAILED,
    pb.BENCHMARK_STATUS_TIMEOUT: JobStatus.TIMEOUT,
    pb.BENCHMARK_STATUS_OUT_OF_MEMORY: JobStatus.OUT_OF_MEMORY,
    pb.BENCHMARK_STATUS_UNSUPPORTED: JobStatus.UNSUPPORTED,
    pb.BENCHMARK_STATUS_CANCELLED: JobStatus.CANCELLED,
}
FORMATS = {
    "onnx": pb.MODEL_FORMAT_ONNX,
    "openvino_ir": pb.MODEL_FORMAT_OPENVINO_IR,
    "tflite": pb.MODEL_FORMAT_TFLITE,
    "coreml": pb.MODEL_FORMAT_COREML,
    "torch_export": pb.MODEL_FORMAT_TORCH_EXPORT,
    "null": pb.MODEL_FORMAT_NULL,
}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}


class ResultRejected(ValueError):
    """An agent's result broke the contract; the message says which field and why."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ResultRejected(message)


def _fraction(value: float, name: str, low: float = 0.0) -> float:
    _check(math.isfinite(value) and low - 1e-9 <= value <= 1.0 + 1e-9, f"{name} = {value!r} is outside [{low}, 1]")
    return value


def _timestamp(msg: pb.BenchmarkResult, name: Literal["started_at", "finished_at"]) -> int:
    if not msg.HasField(name):
        return 0
    try:
        ns: int = getattr(msg, name).ToNanoseconds()
    except ValueError as exc:
        raise ResultRejected(f"{name} is not a valid timestamp: {exc}") from None
    return ns


def result_from_pb(msg: pb.BenchmarkResult, expected_job_id: str) -> ResultData:
    """Validate and convert one result. Raises ResultRejected on anything out of contract."""
    _check(msg.job_id == expected_job_id, f"result is for job {msg.job_id[:80]!r}, not {expected_job_id!r}")
    _check(msg.status in STATUS, f"unknown status {msg.status}")
    status = STATUS[msg.status]
    _check(len(msg.message) <= MAX_MESSAGE_CHARS, f"message of {len(msg.message)} characters is over the limit")
    t = msg.timing
    samples = tuple(t.latencies_ns)
    _check(len(samples) <= MAX_SAMPLES, f"{len(samples)} samples exceed the limit of {MAX_SAMPLES}")
    if samples:
        arr = np.asarray(samples, dtype=np.uint64)
        _check(
            int(arr.min()) > 0 and int(arr.max()) <= MAX_SAMPLE_NS, "a latency sample is zero or longer than an hour"
        )
    if status is JobStatus.SUCCEEDED:
        _check(len(samples) > 0, "a succeeded result carries no latency samples")
    for name in ("load_ns", "first_inference_ns", "warmup_ns", "steady_wall_ns"):
        _check(getattr(t, name) <= MAX_PHASE_NS, f"timing.{name} = {getattr(t, name)} is out of range")
    if samples:
        _check(t.steady_wall_ns >= sum(samples) * 0.999, "steady-state wall time is shorter than its samples")
    m = msg.memory
    for name in ("rss_before_load_bytes", "rss_after_load_bytes", "peak_rss_bytes"):
        _check(getattr(m, name) <= MAX_BYTES, f"memory.{name} is out of range")
    has_memory = msg.HasField("memory") and m.peak_rss_bytes > 0
    if has_memory:
        _check(m.peak_rss_bytes >= m.rss_before_load_bytes, "peak RSS is below the RSS before load")
    a = msg.accuracy
    accuracy: dict[str, Any] = {}
    if msg.HasField("accuracy"):
        _check(a.samples <= 10**9, "accuracy.samples is out of range")
        accuracy["accuracy_samples"] = a.samples
        if a.has_labels:
            accuracy["top1"] = _fraction(a.top1, "accuracy.top1")
            accuracy["top5"] = _fraction(a.top5, "accuracy.top5")
        if a.has_reference:
            accuracy["top1_agreement"] = _fraction(a.top1_agreement, "accuracy.top1_agreement")
            accuracy["cosine_similarity"] = _fraction(a.cosine_similarity, "accuracy.cosine_similarity", -1.0)
            _check(math.isfinite(a.max_abs_error) and a.max_abs_error >= 0, "accuracy.max_abs_error is not >= 0")
            _check(not math.isnan(a.snr_db), "accuracy.snr_db is NaN")
            accuracy["max_abs_error"] = a.max_abs_error
            accuracy["snr_db"] = max(-1000.0, min(1000.0, a.snr_db))
    try:
        provenance = json_format.MessageToDict(msg.provenance, preserving_proto_field_name=True)
    except (ValueError, json_format.Error) as exc:  # e.g. a Timestamp outside the valid range
        raise ResultRejected(f"provenance is not valid: {exc}") from None
    started, finished = _timestamp(msg, "started_at"), _timestamp(msg, "finished_at")
    _check(len(json.dumps(provenance)) <= MAX_PROVENANCE_CHARS, "provenance is over the size limit")
    return ResultData(
        status=status,
        message=msg.message,
        latencies_ns=samples,
        load_ns=t.load_ns,
        first_inference_ns=t.first_inference_ns,
        warmup_iterations=t.warmup_iterations,
        warmup_ns=t.warmup_ns,
        steady_wall_ns=t.steady_wall_ns,
        stop_reason=pb.StopReason.Name(t.stop_reason).removeprefix("STOP_REASON_").lower()
        if t.stop_reason in pb.StopReason.values()
        else "unknown",
        rss_before_load_bytes=m.rss_before_load_bytes,
        rss_after_load_bytes=m.rss_after_load_bytes,
        peak_rss_bytes=m.peak_rss_bytes,
        has_memory=has_memory,
        provenance=provenance,
        started_at_ns=started,
        finished_at_ns=finished,
        diagnostics=msg.diagnostics[:MAX_DIAGNOSTICS_CHARS],
        **accuracy,
    )


def probe_from_pb(name: str, address: str, info: pb.DeviceInfo) -> DeviceProbe:
    agent_version = Version(info.protocol.major, info.protocol.minor)
    compat = check_compatibility(CURRENT, agent_version)
    return DeviceProbe(
        name=name,
        address=address,
        online=True,
        device_id=info.device_id[:200],
        agent_version=info.agent_version[:50],
        protocol=str(agent_version),
        compatible=compat.compatible,
        compatibility=compat.reason,
        hostname=info.hostname[:200],
        os=f"{info.os_name} {info.os_release}"[:200],
        architecture=info.architecture[:50],
        cpu_model=info.cpu_model[:200],
        cpu_cores=info.cpu_logical_cores,
        memory_bytes=info.memory_total_bytes,
        board=info.board_model[:200],
        gpus=tuple(g.name[:200] for g in info.gpus[:16]),
        runtimes=tuple(
            RuntimeStatus(
                name=r.name[:50],
                available=r.available,
                version=r.version[:50],
                reason=r.unavailable_reason[:1000],
                providers=tuple(p[:100] for p in r.execution_providers[:32]),
                formats=tuple(FORMAT_NAMES[f] for f in r.model_formats if f in FORMAT_NAMES),
            )
            for r in info.runtimes[:64]
        ),
        probed_at_ns=time.time_ns(),
        sandbox=tuple(SandboxStatus(c.name[:50], c.enforced, c.detail[:1000]) for c in info.sandbox[:32]),
        sandbox_mode=info.sandbox_mode[:20],
    )


def offline_probe(name: str, address: str, error: str) -> DeviceProbe:
    return DeviceProbe(name=name, address=address, online=False, error=error[:2000], probed_at_ns=time.time_ns())


#: Variant.precision -> the hint runtimes with a precision knob get (OpenVINO, TensorRT). FP32 is sent
#: explicitly: OpenVINO would otherwise run bf16 on CPUs that have it, and the number would not mean FP32.
PRECISION_HINTS = {"fp32": pb.PRECISION_HINT_FP32, "fp16": pb.PRECISION_HINT_FP16, "int8": pb.PRECISION_HINT_INT8}


def runtime_options(pairs: Sequence[tuple[str, str]], runtime: str) -> dict[str, str]:
    """The options one runtime gets: plain `key` pairs apply to every runtime, `runtime.key` to that one (and
    win over a plain key). `device` and `execution_provider` become RuntimeConfig fields."""
    plain = {k: v for k, v in pairs if "." not in k}
    mine = {k.split(".", 1)[1]: v for k, v in pairs if k.startswith(runtime + ".")}
    return {**plain, **mine}


def build_job(
    job_id: str,
    variant: Variant,
    runtime: str,
    settings: MeasurementSettings,
    dataset_sha256: str,
    artifact: Artifact | None = None,
) -> pb.BenchmarkJob:
    """The job for one cell; `artifact` is the variant's file in the format the runtime takes (default: the
    primary one)."""
    art = artifact or variant.artifacts()[0]
    options = runtime_options(settings.runtime_options, runtime)
    device = options.pop("device", "")
    provider = options.pop("execution_provider", "")
    if runtime == "tensorrt":
        # TensorRT builds its engine for an optimisation profile; the job's batch is its optimum.
        options.setdefault("batch", str(settings.batch))
    job = pb.BenchmarkJob(
        job_id=job_id,
        model=pb.ModelRef(
            sha256=art.sha256,
            format=FORMATS[art.format],
            companions=[pb.CompanionFile(name=n, sha256=s) for n, _p, s in art.companions],
        ),
        runtime=pb.RuntimeConfig(
            name=runtime,
            intra_op_threads=settings.threads,
            options=options,
            device=device,
            execution_provider=provider,
            precision_hint=PRECISION_HINTS.get(variant.precision, pb.PRECISION_HINT_FP32),
        ),
        accuracy_pass=settings.accuracy and bool(dataset_sha256),
        memory_pass=True,
    )
    if dataset_sha256:
        job.inputs.dataset_sha256 = dataset_sha256
    else:
        job.inputs.generated.seed = 0
        job.inputs.generated.num_batches = 4
    job.inputs.batch_size = settings.batch
    job.plan.warmup_iterations = settings.warmup_iterations
    job.plan.min_iterations = settings.min_iterations
    job.plan.min_duration.FromNanoseconds(int(settings.min_duration_s * 1e9))
    job.plan.max_duration.FromNanoseconds(int(settings.max_duration_s * 1e9))
    job.plan.target_relative_ci = settings.target_relative_ci
    job.limits.wall_time.FromNanoseconds(int(settings.wall_time_s * 1e9))
    job.limits.memory_bytes = settings.memory_mb * 2**20
    return job


def phase_name(progress: pb.JobProgress) -> str:
    if progress.phase not in pb.JobPhase.values():
        return "unknown"
    return pb.JobPhase.Name(progress.phase).removeprefix("JOB_PHASE_").lower()


def job_state_name(state: int) -> str:
    if state not in pb.JobState.values():
        return "unknown"
    return pb.JobState.Name(pb.JobState.ValueType(state)).removeprefix("JOB_STATE_").lower()
