"""The agent's domain types: frozen dataclasses and enums mirroring the wire schema.

Only `agent/wire.py` converts between these and the generated protobuf classes; everything else in the
agent works with these. They are also what the job child process exchanges with the server (as JSON,
see `agent/jobspec.py`), so they hold plain values only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ModelFormat(enum.Enum):
    ONNX = "onnx"
    OPENVINO_IR = "openvino_ir"
    TFLITE = "tflite"
    COREML = "coreml"
    TORCH_EXPORT = "torch_export"
    NULL = "null"


class PrecisionHint(enum.Enum):
    UNSPECIFIED = "unspecified"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class JobPhase(enum.Enum):
    QUEUED = "queued"
    STARTING = "starting"
    LOADING = "loading"
    FIRST_INFERENCE = "first_inference"
    WARMUP = "warmup"
    MEASURING = "measuring"
    ACCURACY = "accuracy"
    FINISHED = "finished"


class BenchmarkStatus(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    UNSUPPORTED = "unsupported"
    CANCELLED = "cancelled"


class StopReason(enum.Enum):
    UNSPECIFIED = "unspecified"
    MINIMUMS_MET = "minimums_met"
    CI_CONVERGED = "ci_converged"
    MAX_DURATION = "max_duration"
    MAX_ITERATIONS = "max_iterations"


class JobState(enum.Enum):
    UNKNOWN = "unknown"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


# ------------------------------------------------------------------ device


@dataclass(frozen=True)
class GpuInfo:
    name: str
    vendor: str = ""
    memory_total_bytes: int = 0
    driver_version: str = ""
    uuid: str = ""


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    available: bool
    version: str = ""
    unavailable_reason: str = ""
    execution_providers: tuple[str, ...] = ()
    model_formats: tuple[ModelFormat, ...] = ()


@dataclass(frozen=True)
class SandboxControl:
    """One protection of the job sandbox: whether it is in force, and how (or why it is not)."""

    name: str
    enforced: bool
    detail: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    protocol_major: int
    protocol_minor: int
    agent_version: str
    device_id: str
    hostname: str
    os_name: str
    os_release: str
    os_version: str
    architecture: str
    python_version: str
    cpu_model: str
    cpu_physical_cores: int
    cpu_logical_cores: int
    cpu_frequency_max_hz: int
    cpu_frequency_current_hz: int
    cpu_features: tuple[str, ...]
    memory_total_bytes: int
    board_model: str
    board_model_source: str
    gpus: tuple[GpuInfo, ...]
    runtimes: tuple[RuntimeInfo, ...]
    collected_at_ns: int
    sandbox: tuple[SandboxControl, ...] = ()
    sandbox_mode: str = ""


# ------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class CompanionFile:
    name: str
    sha256: str


@dataclass(frozen=True)
class ModelRef:
    sha256: str
    format: ModelFormat
    companions: tuple[CompanionFile, ...] = ()


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    execution_provider: str = ""
    device: str = ""
    precision_hint: PrecisionHint = PrecisionHint.UNSPECIFIED
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str = "") -> str:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class InputSpec:
    """Exactly one of `dataset_sha256` (an .npz artifact) or generated inputs (`seed`, `num_batches`)."""

    batch_size: int = 1
    dataset_sha256: str = ""
    seed: int = 0
    num_batches: int = 1


@dataclass(frozen=True)
class MeasurementPlan:
    warmup_iterations: int = 10
    warmup_duration_ns: int = 0
    min_iterations: int = 100
    min_duration_ns: int = 1_000_000_000
    max_duration_ns: int = 30_000_000_000
    max_iterations: int = 1_000_000
    target_relative_ci: float = 0.0


@dataclass(frozen=True)
class JobLimits:
    wall_time_ns: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class BenchmarkJob:
    job_id: str
    model: ModelRef
    runtime: RuntimeConfig
    inputs: InputSpec = field(default_factory=InputSpec)
    plan: MeasurementPlan = field(default_factory=MeasurementPlan)
    accuracy_pass: bool = False
    memory_pass: bool = True
    limits: JobLimits = field(default_factory=JobLimits)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class TimingReport:
    load_ns: int = 0
    first_inference_ns: int = 0
    warmup_iterations: int = 0
    warmup_ns: int = 0
    latencies_ns: tuple[int, ...] = ()
    steady_wall_ns: int = 0
    stop_reason: StopReason = StopReason.UNSPECIFIED


@dataclass(frozen=True)
class MemoryReport:
    rss_before_load_bytes: int = 0
    rss_after_load_bytes: int = 0
    peak_rss_bytes: int = 0


@dataclass(frozen=True)
class AccuracyReport:
    samples: int = 0
    has_labels: bool = False
    top1: float = 0.0
    top5: float = 0.0
    has_reference: bool = False
    top1_agreement: float = 0.0
    cosine_similarity: float = 0.0
    max_abs_error: float = 0.0
    snr_db: float = 0.0


@dataclass(frozen=True)
class EnvironmentSample:
    cpu_frequency_hz: int = 0
    temperature_millicelsius: int = 0
    load_average_1m: float = 0.0
    at_ns: int = 0


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Provenance:
    device_id: str = ""
    agent_version: str = ""
    os: str = ""
    kernel: str = ""
    architecture: str = ""
    python_version: str = ""
    runtime_name: str = ""
    runtime_version: str = ""
    execution_providers: tuple[str, ...] = ()
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    precision_hint: PrecisionHint = PrecisionHint.UNSPECIFIED
    model_sha256: str = ""
    dataset_sha256: str = ""
    batch_size: int = 0
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    before: EnvironmentSample = field(default_factory=EnvironmentSample)
    after: EnvironmentSample = field(default_factory=EnvironmentSample)
    runtime_details: tuple[tuple[str, str], ...] = ()
    sandbox: tuple[SandboxControl, ...] = ()

    @classmethod
    def for_job(cls, job: BenchmarkJob, **measured: Any) -> Provenance:
        """What a job asked for (runtime, threads, hint, model, dataset, batch), plus what was measured."""
        return cls(
            runtime_name=job.runtime.name,
            intra_op_threads=job.runtime.intra_op_threads,
            inter_op_threads=job.runtime.inter_op_threads,
            precision_hint=job.runtime.precision_hint,
            model_sha256=job.model.sha256,
            dataset_sha256=job.inputs.dataset_sha256,
            batch_size=job.inputs.batch_size,
            **measured,
        )


@dataclass(frozen=True)
class BenchmarkResult:
    job_id: str
    status: BenchmarkStatus
    message: str = ""
    timing: TimingReport | None = None
    memory: MemoryReport | None = None
    accuracy: AccuracyReport | None = None
    provenance: Provenance = field(default_factory=Provenance)
    started_at_ns: int = 0
    finished_at_ns: int = 0
    diagnostics: str = ""


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: exactly one of accepted / progress / result is set."""

    job_id: str
    accepted_queue_position: int | None = None
    reattached: bool = False
    phase: JobPhase | None = None
    queue_position: int = 0
    iterations_done: int = 0
    message: str = ""
    result: BenchmarkResult | None = None
