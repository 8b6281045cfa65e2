"""Pure planning: which jobs a run consists of, and what each device can run. No sockets, no store.

A job is one (device, variant, runtime) cell. Cells a device cannot run are planned as SKIPPED with the
reason (runtime not installed, format not supported), so reports keep them visible; cells of devices
that are offline or speak an incompatible protocol are planned UNREACHABLE / INCOMPATIBLE, which
`run --resume` redoes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from coordinator.types import DeviceProbe, JobRecord, JobStatus, Variant

#: Used when a run names no runtimes: every runtime some device offers for a variant's format.
NULL_RUNTIME = "null"


def job_id(run_id: str, device: str, variant: str, runtime: str, attempt: int = 1) -> str:
    """Stable per cell and attempt: re-sending it re-attaches on the agent instead of running again."""
    cell = hashlib.sha256(f"{device}\x00{variant}\x00{runtime}".encode()).hexdigest()[:12]
    return f"{run_id}.{cell}.{attempt}"


def cell_verdict(probe: DeviceProbe, variant: Variant, runtime: str) -> tuple[JobStatus, str]:
    """Whether a device can run a variant on a runtime: PENDING, or a non-runnable status with the reason."""
    if not variant.sha256:
        return JobStatus.SKIPPED, f"variant {variant.name} {variant.notes}"
    if not probe.online:
        return JobStatus.UNREACHABLE, f"device {probe.name} unreachable: {probe.error}"
    if not probe.compatible:
        return JobStatus.INCOMPATIBLE, f"device {probe.name}: {probe.compatibility}"
    rt = probe.runtime(runtime)
    if rt is None:
        known = ", ".join(r.name for r in probe.runtimes)
        return JobStatus.SKIPPED, f"agent does not know runtime {runtime!r} (it knows {known})"
    if not rt.available:
        return JobStatus.SKIPPED, f"{runtime} unavailable on {probe.name}: {rt.reason}"
    if variant.artifact_for(rt.formats) is None:
        have = ", ".join(a.format for a in variant.artifacts())
        why = variant.why_not(rt.formats)
        return JobStatus.SKIPPED, (
            f"{runtime} runs {', '.join(rt.formats) or 'no known format'}; variant {variant.name} exists as {have}"
            + (f" ({why})" if why else "")
        )
    return JobStatus.PENDING, ""


def default_runtimes(probes: Iterable[DeviceProbe], variants: Sequence[Variant]) -> tuple[str, ...]:
    """Every runtime that at least one online device offers for a format some variant exists in (or was wanted
    in: a runtime whose conversion failed still gets its SKIPPED cells, with the reason)."""
    formats = {a.format for v in variants for a in v.artifacts()} | {f for v in variants for f, _ in v.unconverted}
    names: dict[str, None] = {}
    for probe in probes:
        if not (probe.online and probe.compatible):
            continue
        for rt in probe.runtimes:
            if rt.available and formats & set(rt.formats) and (rt.name != NULL_RUNTIME or "null" in formats):
                names.setdefault(rt.name, None)
    return tuple(names)


def plan_jobs(
    run_id: str,
    devices: Sequence[str],
    variants: Sequence[Variant],
    runtimes: Sequence[str],
    probes: dict[str, DeviceProbe],
) -> list[JobRecord]:
    """All cells, device-major; on each device runtimes alternate within each variant so that variants of
    the same runtime are measured close together in time."""
    jobs = []
    for device in devices:
        for variant in variants:
            for runtime in runtimes:
                status, message = cell_verdict(probes[device], variant, runtime)
                jobs.append(
                    JobRecord(
                        job_id=job_id(run_id, device, variant.name, runtime),
                        run_id=run_id,
                        device=device,
                        variant=variant.name,
                        runtime=runtime,
                        status=status,
                        message=message,
                    )
                )
    return jobs
