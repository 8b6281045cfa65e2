"""One cell of the report from one JobRecord: statistics, memory, provenance and validity flags.

Results come from agents and are untrusted: everything read from `ResultData.provenance` (the JSON form of
the agent's Provenance message, 64-bit integers as strings, defaults left out) is type-checked here and a
value of the wrong type counts as absent instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.report.schema import (
    INVALID,
    VALID,
    Accuracy,
    Cell,
    Comparison,
    Environment,
    LatencyStats,
    Memory,
    ModelInfo,
    Phases,
    Provenance,
    SandboxEntry,
    Thresholds,
)
from coordinator.types import Artifact, JobRecord, JobStatus, MeasurementSettings, Variant
from protos import stats

#: The flag prefixes (text before the first ':') that make a succeeded cell INVALID; see schema.md.
HARD_FLAGS = frozenset({"too few samples", "zero latency", "wrong model", "batch mismatch", "no latency samples"})
#: Longest diagnostics text kept per cell (stderr tails can be long; the report is for reading).
MAX_DIAGNOSTICS_CHARS = 4000


@dataclass(frozen=True)
class CellWork:
    """A cell before comparisons, plus what the comparisons need and the report does not show."""

    cell: Cell
    #: Median CI at the joint confidence used for speedup intervals (None without samples).
    joint_ci: tuple[float, float] | None


def as_int(value: object) -> int | None:
    """An integer from JSON (int, integral float or decimal string, as json_format writes int64); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def as_float(value: object) -> float | None:
    """A finite float from JSON (number or numeric string); None for anything else, NaN and infinities."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _environment(raw: object) -> Environment:
    env = _mapping(raw)
    freq = as_int(env.get("cpu_frequency_hz"))
    temp = as_int(env.get("temperature_millicelsius"))
    # 0 is the proto default and the agent's "unknown" for both; a negative frequency is garbage.
    return Environment(
        cpu_frequency_hz=freq if freq and freq > 0 else None,
        temperature_millicelsius=temp if temp else None,
        load_average_1m=as_float(env.get("load_average_1m")),
    )


def parse_provenance(raw: object) -> Provenance:
    p = _mapping(raw)
    providers = p.get("execution_providers")
    details = _mapping(p.get("runtime_details"))
    batch = as_int(p.get("batch_size"))
    return Provenance(
        device_id=_as_str(p.get("device_id")),
        agent_version=_as_str(p.get("agent_version")),
        os=_as_str(p.get("os")),
        kernel=_as_str(p.get("kernel")),
        architecture=_as_str(p.get("architecture")),
        python_version=_as_str(p.get("python_version")),
        runtime_name=_as_str(p.get("runtime_name")),
        runtime_version=_as_str(p.get("runtime_version")),
        execution_providers=tuple(x for x in providers if isinstance(x, str)) if isinstance(providers, list) else (),
        intra_op_threads=as_int(p.get("intra_op_threads")),
        inter_op_threads=as_int(p.get("inter_op_threads")),
        precision_hint=_as_str(p.get("precision_hint")),
        model_sha256=_as_str(p.get("model_sha256")),
        dataset_sha256=_as_str(p.get("dataset_sha256")),
        batch_size=batch if batch and batch > 0 else None,
        before=_environment(p.get("before")),
        after=_environment(p.get("after")),
        runtime_details=tuple(sorted((str(k), str(v)) for k, v in details.items())),
        sandbox=_sandbox(p.get("sandbox")),
    )


def _sandbox(raw: object) -> tuple[SandboxEntry, ...]:
    """The job's sandbox controls from stored provenance (agent data: anything malformed is left out)."""
    if not isinstance(raw, list):
        return ()
    entries = []
    for item in raw[:32]:
        entry = _mapping(item)
        name = _as_str(entry.get("name"))
        if name:
            entries.append(SandboxEntry(name[:50], entry.get("enforced") is True, _as_str(entry.get("detail"))[:1000]))
    return tuple(entries)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def summarize_latency(
    samples: tuple[int, ...], batch: int, joint_confidence: float
) -> tuple[LatencyStats, tuple[float, float] | None]:
    """protos.stats.summarize() of the samples, and the median CI at `joint_confidence` for speedups."""
    if not samples:
        empty = LatencyStats(
            n=0,
            median_ns=None,
            p50_ns=None,
            p90_ns=None,
            p95_ns=None,
            p99_ns=None,
            mean_ns=None,
            stdev_ns=None,
            min_ns=None,
            max_ns=None,
            cv=None,
            median_ci_low_ns=None,
            median_ci_high_ns=None,
            median_ci_reached=None,
            batch_size=batch,
            throughput_per_s=None,
        )
        return empty, None
    s = stats.summarize(samples)
    joint = stats.median_ci(sorted(samples), joint_confidence)
    throughput = stats.throughput_per_s(s.median, batch) if s.median > 0 else None
    out = LatencyStats(
        n=s.n,
        median_ns=s.median,
        p50_ns=s.p50,
        p90_ns=s.p90,
        p95_ns=s.p95,
        p99_ns=s.p99,
        mean_ns=s.mean,
        stdev_ns=s.stdev,
        min_ns=s.min,
        max_ns=s.max,
        cv=_finite(s.cv),
        median_ci_low_ns=s.median_ci_low,
        median_ci_high_ns=s.median_ci_high,
        median_ci_reached=s.median_ci_reached,
        batch_size=batch,
        throughput_per_s=throughput,
    )
    return out, (joint.low, joint.high)


def _stop_reason(raw: str) -> str | None:
    # The store may hold the enum name ("STOP_REASON_MAX_DURATION") or a short form ("max_duration").
    reason = raw.strip().lower().removeprefix("stop_reason_")
    return reason if reason and reason != "unspecified" else None


def _ghz(hz: int) -> str:
    return f"{hz / 1e9:.1f}"


def _celsius(mc: int) -> str:
    return f"{mc / 1000:.0f}"


def _throttling(prov: Provenance, thresholds: Thresholds) -> str | None:
    """'throttling suspected: ...' when the CPU clock fell or the device ran hot; None otherwise."""
    f0, f1 = prov.before.cpu_frequency_hz, prov.after.cpu_frequency_hz
    t0, t1 = prov.before.temperature_millicelsius, prov.after.temperature_millicelsius
    slowed = f0 is not None and f1 is not None and f1 < f0 * (1 - thresholds.throttle_frequency_drop)
    hot = t1 is not None and t1 >= thresholds.hot_temperature_millicelsius
    if not (slowed or hot):
        return None
    parts = []
    if slowed and f0 is not None and f1 is not None:
        parts.append(f"CPU {_ghz(f0)}→{_ghz(f1)} GHz")
    if t1 is not None:
        parts.append(f"{_celsius(t0)}→{_celsius(t1)} °C" if t0 is not None else f"{_celsius(t1)} °C after run")
    return "throttling suspected: " + ", ".join(parts)


def _flags(
    lat: LatencyStats,
    phases: Phases,
    memory: Memory,
    accuracy: Accuracy,
    prov: Provenance,
    variant: Variant | None,
    settings: MeasurementSettings,
    thresholds: Thresholds,
    expect_accuracy: bool,
) -> list[str]:
    """Validity flags of a succeeded cell, each 'kind: reason'; kinds in HARD_FLAGS invalidate it."""
    flags: list[str] = []
    n = lat.n
    if n == 0:
        flags.append("no latency samples: the result carries none")
    elif n < thresholds.min_valid_samples:
        flags.append(f"too few samples: n={n} < {thresholds.min_valid_samples} (no p90)")
    elif n < stats.min_samples_for_percentile(99):
        flags.append(f"few samples: n={n} < {stats.min_samples_for_percentile(99)} (no p99)")
    if lat.median_ns is not None and lat.median_ns <= 0:
        flags.append("zero latency: median 0 ns (clock too coarse to time one inference)")
    if lat.cv is not None and lat.cv > thresholds.cv_threshold:
        flags.append(f"unstable: CV {lat.cv:.0%} > {thresholds.cv_threshold:.0%}")
    if phases.stop_reason in ("max_duration", "max_iterations") and lat.median_ns and lat.median_ns > 0:
        where = phases.stop_reason.replace("_", " ")
        low, high = lat.median_ci_low_ns, lat.median_ci_high_ns
        rel = (high - low) / 2 / lat.median_ns if low is not None and high is not None else math.inf
        target = settings.target_relative_ci
        if target > 0 and (rel > target or not lat.median_ci_reached):
            flags.append(f"did not converge: stopped at {where} with CI ±{rel:.1%} > ±{target:.1%} target")
        elif target <= 0 and n < settings.min_iterations:
            flags.append(f"minimums not met: stopped at {where} with n={n} < {settings.min_iterations}")
    throttling = _throttling(prov, thresholds)
    if throttling:
        flags.append(throttling)
    shas = {a.sha256.lower() for a in variant.artifacts()} if variant is not None else set()
    if prov.model_sha256 and shas and prov.model_sha256.lower() not in shas:
        flags.append(
            f"wrong model: ran sha256 {prov.model_sha256[:12]}…, none of variant {variant.name if variant else ''}'s "
            f"files ({', '.join(sorted(s[:12] + '…' for s in shas))})"
        )
    if prov.batch_size is not None and prov.batch_size != settings.batch:
        flags.append(f"batch mismatch: ran batch {prov.batch_size}, requested {settings.batch}")
    if memory.peak_rss_bytes is not None and memory.model_memory_bytes is None:
        flags.append("memory inconsistent: peak RSS below RSS before load")
    if expect_accuracy and accuracy.top1 is None and accuracy.top1_agreement is None:
        flags.append("no accuracy: none reported although the run has a dataset")
    return flags


def _artifact_that_ran(variant: Variant | None, model_sha256: str) -> Artifact | None:
    """The variant's file the agent ran (by the sha256 it reported), else its primary file."""
    if variant is None:
        return None
    files = variant.artifacts()
    ran = next((a for a in files if model_sha256 and a.sha256.lower() == model_sha256.lower()), None)
    return ran or (files[0] if files else None)


def build_cell(
    job: JobRecord,
    variant: Variant | None,
    settings: MeasurementSettings,
    thresholds: Thresholds,
    baseline: str,
    expect_accuracy: bool,
) -> CellWork:
    """The cell of `job` with a placeholder comparison (filled in by the analysis step)."""
    r = job.result
    prov = parse_provenance(r.provenance if r is not None else {})
    batch = prov.batch_size or max(1, settings.batch)
    # Each median at sqrt(confidence) so that a speedup's two intervals hold jointly at `confidence`.
    per_median = math.sqrt(thresholds.speedup_ci_confidence)
    lat, joint = summarize_latency(r.latencies_ns if r is not None else (), batch, per_median)
    if r is None:
        phases = Phases(None, None, None, None, None, None)
        memory = Memory(None, None, None, None)
        accuracy = Accuracy(None, None, None, None, None, None, None)
    else:
        # A zero duration is the proto default, i.e. not measured (a job that failed early); a zero warm-up
        # count is a real setting only when the job got that far.
        reached = job.status is JobStatus.SUCCEEDED or r.warmup_iterations > 0 or r.warmup_ns > 0
        phases = Phases(
            r.load_ns or None,
            r.first_inference_ns or None,
            r.warmup_iterations if reached else None,
            r.warmup_ns or None,
            r.steady_wall_ns or None,
            _stop_reason(r.stop_reason),
        )
        if r.has_memory:
            attributable = r.peak_rss_bytes - r.rss_before_load_bytes
            memory = Memory(
                r.rss_before_load_bytes,
                r.rss_after_load_bytes,
                r.peak_rss_bytes,
                attributable if attributable >= 0 else None,
            )
        else:
            memory = Memory(None, None, None, None)
        accuracy = Accuracy(
            r.accuracy_samples,
            _finite(r.top1),
            _finite(r.top5),
            _finite(r.top1_agreement),
            _finite(r.cosine_similarity),
            _finite(r.max_abs_error),
            _finite(r.snr_db),
        )
    ran = _artifact_that_ran(variant, prov.model_sha256)
    model = ModelInfo(
        format=ran.format if ran else None,
        sha256=ran.sha256 if ran else None,
        size_bytes=ran.total_bytes if ran else None,
        compressed_bytes=(variant.compressed_bytes or None)
        if variant and ran and ran.format == variant.format
        else None,
        recipe=variant.recipe if variant else None,
        artifact=ran.notes if ran and ran.notes else None,
    )
    status = job.status.value
    message = job.message or (r.message if r is not None else "")
    if job.status is JobStatus.SUCCEEDED and r is not None:
        flags = _flags(lat, phases, memory, accuracy, prov, variant, settings, thresholds, expect_accuracy)
        invalid = [f for f in flags if f.split(":", 1)[0] in HARD_FLAGS]
    else:
        flags = []
        invalid = [f"{status}: {message}" if message else f"{status}: no result"]
    cell = Cell(
        run_id=job.run_id,
        job_id=job.job_id,
        device=job.device,
        variant=job.variant,
        runtime=job.runtime,
        status=status,
        message=message,
        attempt=job.attempt,
        verdict=INVALID if invalid else VALID,
        invalid_reasons=tuple(invalid),
        flags=tuple(flags),
        latency=lat,
        phases=phases,
        memory=memory,
        model=model,
        accuracy=accuracy,
        comparison=Comparison(baseline, None, job.variant == baseline, None, None, None, None, None, None, None, ""),
        provenance=prov,
        on_pareto_front=False,
        recommended=False,
        diagnostics=(r.diagnostics[-MAX_DIAGNOSTICS_CHARS:] if r is not None else ""),
        started_at_ns=(r.started_at_ns or None) if r is not None else None,
        finished_at_ns=(r.finished_at_ns or None) if r is not None else None,
    )
    return CellWork(cell, joint)
