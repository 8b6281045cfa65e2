"""build_report(): a run's stored data -> the one report model every renderer reads.

Statistics come from protos.stats (the definitions agents use too); nothing here redefines a percentile.
Validity, comparison and recommendation rules are documented in schema.md and, briefly, below.

Verdict: a cell is VALID when its job succeeded and none of its flags is hard. Hard flags (INVALID):
"no latency samples", "too few samples" (n < 10: no p90, no useful median CI), "zero latency" (clock too
coarse), "wrong model" (provenance sha256 differs from the variant's), "batch mismatch" (ran another
batch size than requested). Soft flags are shown but keep the cell VALID: "few samples" (n < 100, no
p99), "unstable" (CV above the threshold), "did not converge" / "minimums not met" (stopped at the
maximum duration or iteration count), "throttling suspected" (CPU clock fell >= 10% or >= 80 °C after the
run), "memory inconsistent", "no accuracy".
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.report._analysis import summarize_devices, with_comparisons
from coordinator.report._cells import build_cell
from coordinator.report.schema import (
    SCHEMA_VERSION,
    Cell,
    CellRef,
    Comparison,
    CrossDeviceRow,
    DeviceInfo,
    DeviceSummary,
    LatencyStats,
    Recommendation,
    Report,
    RunInfo,
    Settings,
    Thresholds,
    VariantInfo,
)
from coordinator.report.seed import seed_rows
from coordinator.types import DeviceProbe, JobRecord, RunData

__all__ = [
    "SCHEMA_VERSION",
    "Cell",
    "CellRef",
    "Comparison",
    "CrossDeviceRow",
    "DeviceInfo",
    "DeviceSummary",
    "LatencyStats",
    "Recommendation",
    "Report",
    "build_report",
]

MIN_VALID_SAMPLES = 10
THROTTLE_FREQUENCY_DROP = 0.10
HOT_TEMPERATURE_MILLICELSIUS = 80_000
SPEEDUP_CI_CONFIDENCE = 0.95


def _ordered(declared: Iterable[str], seen: Iterable[str]) -> tuple[str, ...]:
    """The spec's order, then any name only the jobs mention (in first-seen order), without duplicates."""
    return tuple(dict.fromkeys([*declared, *seen]))


def _latest(jobs: Iterable[JobRecord]) -> list[JobRecord]:
    # The store keeps one record per cell, but a duplicate (a retried job) must not become two cells.
    best: dict[tuple[str, str, str], JobRecord] = {}
    for job in jobs:
        key = (job.device, job.variant, job.runtime)
        cur = best.get(key)
        if cur is None or (job.attempt, job.updated_at_ns) > (cur.attempt, cur.updated_at_ns):
            best[key] = job
    return list(best.values())


def _device_info(probe: DeviceProbe | None) -> DeviceInfo:
    if probe is None:
        return DeviceInfo(None, "", "", "", "", "", "", None, None, "", ())
    return DeviceInfo(
        online=probe.online,
        device_id=probe.device_id,
        agent_version=probe.agent_version,
        hostname=probe.hostname,
        os=probe.os,
        architecture=probe.architecture,
        cpu_model=probe.cpu_model,
        cpu_cores=probe.cpu_cores or None,
        memory_bytes=probe.memory_bytes or None,
        board=probe.board,
        gpus=probe.gpus,
    )


def build_report(run: RunData, *, max_accuracy_drop: float = 0.01, cv_threshold: float = 0.10) -> Report:
    """The report of `run`: one Cell per (device, variant, runtime) job, whatever its status.

    `max_accuracy_drop` is the largest accuracy loss against the baseline (a fraction: 0.01 is one
    percentage point of top-1) a recommended variant may have; the baseline always qualifies.
    `cv_threshold` is the coefficient of variation above which a cell is flagged unstable. Cells are
    ordered by device, variant and runtime as the run spec lists them. Deterministic: the same RunData
    gives an equal Report. ValueError for a negative budget or a non-positive CV threshold.
    """
    if not max_accuracy_drop >= 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
    if not cv_threshold > 0:
        raise ValueError(f"cv_threshold must be > 0, got {cv_threshold}")
    spec = run.spec
    thresholds = Thresholds(
        max_accuracy_drop=max_accuracy_drop,
        cv_threshold=cv_threshold,
        min_valid_samples=MIN_VALID_SAMPLES,
        throttle_frequency_drop=THROTTLE_FREQUENCY_DROP,
        hot_temperature_millicelsius=HOT_TEMPERATURE_MILLICELSIUS,
        speedup_ci_confidence=SPEEDUP_CI_CONFIDENCE,
    )
    jobs = _latest(run.jobs)
    devices = _ordered(spec.devices, (j.device for j in jobs))
    variant_names = _ordered(spec.variants, (j.variant for j in jobs))
    runtimes = _ordered(spec.runtimes, (j.runtime for j in jobs))
    rank = {
        "device": {d: i for i, d in enumerate(devices)},
        "variant": {v: i for i, v in enumerate(variant_names)},
        "runtime": {r: i for i, r in enumerate(runtimes)},
    }
    jobs.sort(key=lambda j: (rank["device"][j.device], rank["variant"][j.variant], rank["runtime"][j.runtime]))
    variants = {v.name: v for v in run.variants}
    expect_accuracy = bool(spec.dataset_path) and spec.settings.accuracy
    works = [
        build_cell(j, variants.get(j.variant), spec.settings, thresholds, spec.baseline, expect_accuracy) for j in jobs
    ]
    cells = with_comparisons(works, spec.baseline, thresholds)
    probes = {p.name: p for p in run.devices}
    infos = {d: _device_info(probes.get(d)) for d in devices}
    cells, summaries, rows = summarize_devices(cells, devices, infos, spec.baseline, max_accuracy_drop)
    run_variants = tuple(
        VariantInfo(
            v.name,
            v.format,
            v.sha256,
            v.size_bytes,
            v.compressed_bytes or None,
            v.recipe,
            v.parent_sha256,
            v.notes,
            tuple((a.format, a.sha256, a.total_bytes, a.notes) for a in v.others),
            v.unconverted,
        )
        for v in sorted(run.variants, key=lambda v: rank["variant"].get(v.name, len(rank["variant"])))
    )
    s = spec.settings
    return Report(
        schema_version=SCHEMA_VERSION,
        run=RunInfo(
            run_id=spec.run_id,
            name=spec.name,
            model_path=spec.model_path,
            dataset_path=spec.dataset_path,
            dataset_sha256=spec.dataset_sha256,
            baseline=spec.baseline,
            devices=devices,
            variants=variant_names,
            runtimes=runtimes,
            settings=Settings(
                s.batch,
                s.threads,
                s.warmup_iterations,
                s.min_iterations,
                s.min_duration_s,
                s.max_duration_s,
                s.target_relative_ci,
                s.accuracy,
            ),
            created_at_ns=spec.created_at_ns or None,
            finished_at_ns=run.finished_at_ns or None,
        ),
        thresholds=thresholds,
        variants=run_variants,
        devices=tuple(summaries),
        cells=tuple(cells),
        cross_device=tuple(rows),
        seed_table=seed_rows(cells, run_variants, spec.baseline),
    )
