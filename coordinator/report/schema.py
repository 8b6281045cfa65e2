"""The report model: frozen dataclasses that every renderer reads, documented field by field in schema.md.

Contract: every field is always present (a group that does not apply holds None values rather than being
left out), so the JSON form has one shape and the CSV one set of columns. None means "not measured or not
applicable"; the reason is in the cell's `message`, `invalid_reasons` or `comparison.note`. Values carry
their unit in the name (`_ns`, `_bytes`, `_hz`, `_millicelsius`, `_per_s`); ratios and fractions have no
suffix. Floats are always finite: a non-finite value is stored as None (JSON has no Infinity).

`Report.to_dict()` gives the JSON-ready form (only dict, list, str, int, float, bool and None).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

#: Bumped on any change of field names, types or meanings (additions included); see schema.md.
SCHEMA_VERSION = 3

VALID = "VALID"
INVALID = "INVALID"


@dataclass(frozen=True)
class LatencyStats:
    """Steady-state latency summary from protos.stats.summarize(); all None (n = 0) without samples."""

    n: int
    median_ns: float | None
    p50_ns: float | None
    p90_ns: float | None
    p95_ns: float | None
    p99_ns: float | None
    mean_ns: float | None
    stdev_ns: float | None
    min_ns: float | None
    max_ns: float | None
    cv: float | None
    median_ci_low_ns: float | None
    median_ci_high_ns: float | None
    median_ci_reached: bool | None
    batch_size: int
    throughput_per_s: float | None


@dataclass(frozen=True)
class Phases:
    load_ns: int | None
    first_inference_ns: int | None
    warmup_iterations: int | None
    warmup_ns: int | None
    steady_wall_ns: int | None
    stop_reason: str | None


@dataclass(frozen=True)
class Memory:
    rss_before_load_bytes: int | None
    rss_after_load_bytes: int | None
    peak_rss_bytes: int | None
    #: peak_rss_bytes - rss_before_load_bytes: what loading and running the model added to the process.
    model_memory_bytes: int | None


@dataclass(frozen=True)
class ModelInfo:
    format: str | None
    sha256: str | None
    size_bytes: int | None
    compressed_bytes: int | None
    recipe: str | None
    #: How the file that ran was made, when it is a converted form (e.g. "OpenVINO IR, NNCF static INT8").
    artifact: str | None = None


@dataclass(frozen=True)
class Accuracy:
    samples: int | None
    top1: float | None
    top5: float | None
    top1_agreement: float | None
    cosine_similarity: float | None
    max_abs_error: float | None
    snr_db: float | None


@dataclass(frozen=True)
class Comparison:
    """This cell against the baseline variant on the same device and runtime."""

    baseline_variant: str
    baseline_job_id: str | None
    is_baseline: bool
    speedup: float | None
    speedup_ci_low: float | None
    speedup_ci_high: float | None
    speedup_ci_confidence: float | None
    memory_ratio: float | None
    accuracy_drop: float | None
    accuracy_basis: str | None
    note: str


@dataclass(frozen=True)
class Environment:
    cpu_frequency_hz: int | None
    temperature_millicelsius: int | None
    load_average_1m: float | None


@dataclass(frozen=True)
class SandboxEntry:
    """One protection of the agent's job sandbox, as in force for this job."""

    name: str
    enforced: bool
    detail: str


@dataclass(frozen=True)
class Provenance:
    device_id: str
    agent_version: str
    os: str
    kernel: str
    architecture: str
    python_version: str
    runtime_name: str
    runtime_version: str
    execution_providers: tuple[str, ...]
    intra_op_threads: int | None
    inter_op_threads: int | None
    precision_hint: str
    model_sha256: str
    dataset_sha256: str
    batch_size: int | None
    before: Environment
    after: Environment
    #: Sorted (key, value) pairs; a JSON array of two-element arrays.
    runtime_details: tuple[tuple[str, str], ...]
    #: What contained the job process (empty for agents without a job sandbox).
    sandbox: tuple[SandboxEntry, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One device x variant x runtime job, whatever its outcome."""

    run_id: str
    job_id: str
    device: str
    variant: str
    runtime: str
    status: str
    message: str
    attempt: int
    verdict: str
    invalid_reasons: tuple[str, ...]
    flags: tuple[str, ...]
    latency: LatencyStats
    phases: Phases
    memory: Memory
    model: ModelInfo
    accuracy: Accuracy
    comparison: Comparison
    provenance: Provenance
    on_pareto_front: bool
    recommended: bool
    diagnostics: str
    started_at_ns: int | None
    finished_at_ns: int | None


@dataclass(frozen=True)
class CellRef:
    variant: str
    runtime: str
    job_id: str


@dataclass(frozen=True)
class DeviceInfo:
    """What the coordinator's probe learned about the device (empty/None when it was never probed)."""

    online: bool | None
    device_id: str
    agent_version: str
    hostname: str
    os: str
    architecture: str
    cpu_model: str
    cpu_cores: int | None
    memory_bytes: int | None
    board: str
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Recommendation:
    variant: str
    runtime: str
    job_id: str
    median_ns: float
    throughput_per_s: float | None
    speedup: float | None
    accuracy_drop: float | None
    peak_rss_bytes: int | None


@dataclass(frozen=True)
class DeviceSummary:
    device: str
    info: DeviceInfo
    #: "top1" or "top1_agreement": the accuracy axis of this device's Pareto front; None without accuracy.
    pareto_metric: str | None
    #: Cells on the front, fastest first.
    pareto_front: tuple[CellRef, ...]
    recommendation: Recommendation | None
    recommendation_reason: str


@dataclass(frozen=True)
class CrossDeviceRow:
    device: str
    variant: str | None
    runtime: str | None
    median_ns: float | None
    throughput_per_s: float | None
    speedup: float | None
    accuracy_drop: float | None
    peak_rss_bytes: int | None
    reason: str


@dataclass(frozen=True)
class VariantInfo:
    name: str
    format: str
    sha256: str
    size_bytes: int
    compressed_bytes: int | None
    recipe: str
    parent_sha256: str
    notes: str
    #: The same variant converted for other runtimes: (format, sha256, size_bytes incl. companions, how made).
    converted: tuple[tuple[str, str, int, str], ...] = ()
    #: (format, reason) for each wanted format it could not be converted to.
    unconverted: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Settings:
    batch: int
    threads: int
    warmup_iterations: int
    min_iterations: int
    min_duration_s: float
    max_duration_s: float
    target_relative_ci: float
    accuracy: bool


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    model_path: str
    dataset_path: str
    dataset_sha256: str
    baseline: str
    devices: tuple[str, ...]
    variants: tuple[str, ...]
    runtimes: tuple[str, ...]
    settings: Settings
    created_at_ns: int | None
    finished_at_ns: int | None


@dataclass(frozen=True)
class Thresholds:
    max_accuracy_drop: float
    cv_threshold: float
    min_valid_samples: int
    throttle_frequency_drop: float
    hot_temperature_millicelsius: int
    speedup_ci_confidence: float


@dataclass(frozen=True)
class Report:
    schema_version: int
    run: RunInfo
    thresholds: Thresholds
    variants: tuple[VariantInfo, ...]
    devices: tuple[DeviceSummary, ...]
    cells: tuple[Cell, ...]
    cross_device: tuple[CrossDeviceRow, ...]
    #: The seed document's compression claims beside this run's measurements (coordinator/report/seed.py).
    seed_table: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: field order as declared, tuples as lists, non-finite floats as None."""
        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out

    def cells_of(self, device: str) -> tuple[Cell, ...]:
        """This device's cells in report order (variants, then runtimes, as the run spec lists them)."""
        return tuple(c for c in self.cells if c.device == device)


def to_jsonable(value: object) -> Any:
    """Recursively convert dataclasses to dicts and tuples to lists; non-finite floats become None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
