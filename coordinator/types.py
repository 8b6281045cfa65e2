"""The coordinator's domain types: what the store keeps, the dispatcher produces and the reports read.

Plain frozen dataclasses; only `coordinator/dispatch/wire.py` converts wire messages into them (and
validates them: results from agents are untrusted input).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JobStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    UNSUPPORTED = "unsupported"
    CANCELLED = "cancelled"
    #: The agent could not be reached (at start or mid-job). `run --resume` redoes these.
    UNREACHABLE = "unreachable"
    #: The agent speaks an incompatible protocol version. `run --resume` redoes these (after an upgrade).
    INCOMPATIBLE = "incompatible"
    #: The agent sent a result that failed validation (malformed, oversized, out of range).
    REJECTED = "rejected"
    #: Not dispatched: the device cannot run this combination (the message says why).
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        """A final status is kept by `run --resume`; the others are redone."""
        return self not in (
            JobStatus.PENDING,
            JobStatus.RUNNING,
            JobStatus.CANCELLED,
            JobStatus.UNREACHABLE,
            JobStatus.INCOMPATIBLE,
        )


@dataclass(frozen=True)
class Device:
    """A registered agent. Credentials are paths (the store never holds secrets)."""

    name: str
    address: str
    token_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    added_at_ns: int = 0


@dataclass(frozen=True)
class RuntimeStatus:
    name: str
    available: bool
    version: str = ""
    reason: str = ""
    providers: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxStatus:
    """One protection of an agent's job sandbox, as the agent reports it."""

    name: str
    enforced: bool
    detail: str = ""


@dataclass(frozen=True)
class DeviceProbe:
    """What `fleet list` and a run learn about a device at one moment."""

    name: str
    address: str
    online: bool
    error: str = ""
    device_id: str = ""
    agent_version: str = ""
    protocol: str = ""
    compatible: bool = False
    compatibility: str = ""
    hostname: str = ""
    os: str = ""
    architecture: str = ""
    cpu_model: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0
    board: str = ""
    gpus: tuple[str, ...] = ()
    runtimes: tuple[RuntimeStatus, ...] = ()
    probed_at_ns: int = 0
    #: What contains a job on this agent (empty for agents that predate the sandbox), and the mode asked for.
    sandbox: tuple[SandboxStatus, ...] = ()
    sandbox_mode: str = ""

    def runtime(self, name: str) -> RuntimeStatus | None:
        return next((r for r in self.runtimes if r.name == name), None)


@dataclass(frozen=True)
class Artifact:
    """One file (plus companions) in one format: what an agent receives for one job."""

    format: str  # "onnx", "openvino_ir", "tflite", "coreml", "torch_export", "null"
    path: str
    sha256: str
    size_bytes: int
    #: (name on the agent, local path, sha256) of files that go next to the main one (an IR's model.bin).
    companions: tuple[tuple[str, str, str], ...] = ()
    #: How it was made (converter, precision), shown in reports.
    notes: str = ""

    @property
    def total_bytes(self) -> int:
        return self.size_bytes + sum(Path(p).stat().st_size for _n, p, _s in self.companions if Path(p).exists())


@dataclass(frozen=True)
class Variant:
    """One model variant (the model itself, `fp32`, or a compressed form of it). Its primary artifact is the
    one in `path`/`sha256`/`format` (ONNX for built variants); `others` hold the same variant converted for
    other runtimes (OpenVINO IR, TFLite, ...), and `unconverted` says, per wanted format, why it is missing."""

    name: str
    path: str
    sha256: str
    format: str  # "onnx", "openvino_ir", "tflite", "coreml", "torch_export", "null"
    size_bytes: int
    recipe: str = ""
    parent_sha256: str = ""
    #: Size when zip-compressed (shows what sparsity buys in storage); 0 if not measured.
    compressed_bytes: int = 0
    notes: str = ""
    others: tuple[Artifact, ...] = ()
    unconverted: tuple[tuple[str, str], ...] = ()
    #: What the runtime is asked to compute in: "fp32" (also the hint for INT8 models' float parts) or "fp16".
    precision: str = "fp32"

    def artifacts(self) -> tuple[Artifact, ...]:
        primary = (Artifact(self.format, self.path, self.sha256, self.size_bytes),) if self.sha256 else ()
        return primary + self.others

    def artifact_for(self, formats: Sequence[str]) -> Artifact | None:
        """The artifact for a runtime that accepts `formats` (in its order of preference), if there is one."""
        by_format = {a.format: a for a in self.artifacts()}
        return next((by_format[f] for f in formats if f in by_format), None)

    def why_not(self, formats: Sequence[str]) -> str:
        """Why no artifact in `formats` exists (conversion reasons), or "" if none was recorded."""
        return "; ".join(f"{fmt}: {why}" for fmt, why in self.unconverted if fmt in formats)


def variant_from_json(data: dict[str, Any]) -> Variant:
    """Inverse of `dataclasses.asdict` for a Variant (JSON turned its tuples into lists)."""
    fields = dict(data)
    fields["others"] = tuple(
        Artifact(**{**a, "companions": tuple(tuple(c) for c in a.get("companions", ()))})
        for a in fields.get("others", ())
    )
    fields["unconverted"] = tuple(tuple(u) for u in fields.get("unconverted", ()))
    return Variant(**fields)


@dataclass(frozen=True)
class MeasurementSettings:
    batch: int = 1
    threads: int = 0
    warmup_iterations: int = 10
    min_iterations: int = 100
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    target_relative_ci: float = 0.0
    wall_time_s: float = 600.0
    memory_mb: int = 0
    accuracy: bool = True
    #: Runtime options sent with every job (RuntimeConfig.options), as (key, value) pairs.
    runtime_options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    name: str
    model_path: str
    dataset_path: str
    dataset_sha256: str
    devices: tuple[str, ...]
    runtimes: tuple[str, ...]
    variants: tuple[str, ...]
    settings: MeasurementSettings
    created_at_ns: int
    baseline: str = "fp32"


@dataclass(frozen=True)
class ResultData:
    """A validated benchmark result as the coordinator stores it (raw samples included)."""

    status: JobStatus
    message: str = ""
    latencies_ns: tuple[int, ...] = ()
    load_ns: int = 0
    first_inference_ns: int = 0
    warmup_iterations: int = 0
    warmup_ns: int = 0
    steady_wall_ns: int = 0
    stop_reason: str = ""
    rss_before_load_bytes: int = 0
    rss_after_load_bytes: int = 0
    peak_rss_bytes: int = 0
    has_memory: bool = False
    accuracy_samples: int = 0
    top1: float | None = None
    top5: float | None = None
    top1_agreement: float | None = None
    cosine_similarity: float | None = None
    max_abs_error: float | None = None
    snr_db: float | None = None
    #: Provenance as plain JSON (device, runtime, providers, threads, environment before/after...).
    provenance: dict[str, Any] = field(default_factory=dict)
    started_at_ns: int = 0
    finished_at_ns: int = 0
    diagnostics: str = ""


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    run_id: str
    device: str
    variant: str
    runtime: str
    status: JobStatus
    message: str = ""
    attempt: int = 1
    updated_at_ns: int = 0
    result: ResultData | None = None


@dataclass(frozen=True)
class RunData:
    """Everything a report needs about one run."""

    spec: RunSpec
    variants: tuple[Variant, ...]
    devices: tuple[DeviceProbe, ...]
    jobs: tuple[JobRecord, ...]
    finished_at_ns: int = 0
