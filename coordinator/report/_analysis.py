"""Comparisons against the baseline, the per-device Pareto fronts and the recommendations.

Speedup interval: each median's distribution-free CI is taken at confidence c = sqrt(0.95) (protos.stats
median_ci), and the speedup interval is [base_low / cell_high, base_high / cell_low]. The two cells are
independent samples, so both median intervals hold at once with probability >= c * c = 0.95, and whenever
they do the true ratio lies in that interval: a conservative 95% interval, without resampling (fast and
deterministic). Using the plain 95% CIs of each median instead would only give >= 90.25%.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from coordinator.report._cells import CellWork
from coordinator.report._fmt import ms_unit, pp
from coordinator.report.schema import (
    VALID,
    Cell,
    CellRef,
    Comparison,
    CrossDeviceRow,
    DeviceInfo,
    DeviceSummary,
    Recommendation,
    Thresholds,
)

SUCCEEDED = "succeeded"
LABELS_TOP1 = "labels_top1"
REFERENCE_AGREEMENT = "reference_top1_agreement"


def _positive_median(c: Cell) -> float | None:
    m = c.latency.median_ns
    return m if m is not None and m > 0 else None


def _accuracy_drop(cell: Cell, base: Cell) -> tuple[float | None, str | None, str]:
    """(drop, basis, note): labels' top-1 when both have it, else top-1 agreement with the reference."""
    a, b = cell.accuracy, base.accuracy
    if a.top1 is not None and b.top1 is not None:
        return b.top1 - a.top1, LABELS_TOP1, ""
    if a.top1_agreement is not None:
        # The reference outputs are the baseline model's own, so a baseline without a figure agrees fully.
        base_agreement = b.top1_agreement if b.top1_agreement is not None else 1.0
        return base_agreement - a.top1_agreement, REFERENCE_AGREEMENT, ""
    return None, None, "no accuracy figure to compare"


def _compare(work: CellWork, base: CellWork | None, baseline: str, confidence: float) -> Comparison:
    cell = work.cell
    empty = Comparison(
        baseline,
        base.cell.job_id if base else None,
        cell.variant == baseline,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        "",
    )
    if cell.status != SUCCEEDED:
        return dataclasses.replace(empty, note=f"no comparison: this cell did not succeed ({cell.status})")
    if base is None:
        return dataclasses.replace(empty, note=f"no comparison: no {baseline} cell on this device and runtime")
    b = base.cell
    if b.status != SUCCEEDED:
        why = f"{b.status}: {b.message}" if b.message else b.status
        return dataclasses.replace(empty, note=f"no comparison: baseline {baseline} did not succeed ({why})")
    notes: list[str] = []
    if b.verdict != VALID and not empty.is_baseline:
        notes.append(f"baseline is INVALID ({'; '.join(b.invalid_reasons)})")
    speedup = low = high = None
    m, mb = _positive_median(cell), _positive_median(b)
    if empty.is_baseline:
        speedup, low, high = (1.0, 1.0, 1.0) if m is not None else (None, None, None)
    elif m is not None and mb is not None and work.joint_ci is not None and base.joint_ci is not None:
        speedup = mb / m
        (cl, ch), (bl, bh) = work.joint_ci, base.joint_ci
        # A zero lower bound (coarse clock) leaves the interval unbounded above: report no upper bound.
        low, high = (bl / ch if ch > 0 else None), (bh / cl if cl > 0 else None)
    else:
        notes.append("no speedup: a median is missing or zero")
    peak, base_peak = cell.memory.peak_rss_bytes, b.memory.peak_rss_bytes
    memory_ratio = peak / base_peak if peak is not None and base_peak else None
    if memory_ratio is None:
        notes.append("no memory ratio: memory not measured")
    drop, basis, acc_note = _accuracy_drop(cell, b)
    if acc_note:
        notes.append(acc_note)
    return dataclasses.replace(
        empty,
        speedup=speedup,
        speedup_ci_low=low,
        speedup_ci_high=high,
        speedup_ci_confidence=(1.0 if empty.is_baseline else confidence) if speedup is not None else None,
        memory_ratio=memory_ratio,
        accuracy_drop=drop,
        accuracy_basis=basis,
        note="; ".join(notes),
    )


def with_comparisons(works: Sequence[CellWork], baseline: str, thresholds: Thresholds) -> list[Cell]:
    """Every cell with its Comparison against the baseline variant on the same device and runtime."""
    index = {(w.cell.device, w.cell.runtime): w for w in works if w.cell.variant == baseline}
    return [
        dataclasses.replace(
            w.cell,
            comparison=_compare(
                w, index.get((w.cell.device, w.cell.runtime)), baseline, thresholds.speedup_ci_confidence
            ),
        )
        for w in works
    ]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (latency, accuracy) points are Pareto-optimal: lower latency and higher accuracy are better.

    A point is on the front unless another is at least as good on both axes and strictly better on one;
    identical points are therefore all on it. O(n^2), fine for the dozens of cells a device has.
    """
    return [
        not any((lq <= lp and aq >= ap) and (lq < lp or aq > ap) for j, (lq, aq) in enumerate(points) if j != i)
        for i, (lp, ap) in enumerate(points)
    ]


def pareto_metric(cells: Sequence[Cell]) -> str | None:
    """The accuracy axis of a device's front: labels' top-1 if any candidate has it, else agreement."""
    if any(c.accuracy.top1 is not None for c in cells):
        return "top1"
    if any(c.accuracy.top1_agreement is not None for c in cells):
        return "top1_agreement"
    return None


def metric_value(c: Cell, metric: str | None) -> float | None:
    if metric == "top1":
        return c.accuracy.top1
    if metric == "top1_agreement":
        return c.accuracy.top1_agreement
    return None


def _exclusion(c: Cell, budget: float) -> str:
    drop = c.comparison.accuracy_drop
    if c.verdict != VALID:
        return f"INVALID: {c.invalid_reasons[0]}" if c.invalid_reasons else "INVALID"
    if drop is None:
        return f"accuracy drop unknown ({c.comparison.note or 'not measured'})"
    return f"accuracy drop {pp(drop)} > {pp(budget)}"


def _qualifies(c: Cell, baseline: str, budget: float) -> bool:
    if c.status != SUCCEEDED or c.verdict != VALID or _positive_median(c) is None:
        return False
    if c.variant == baseline:
        return True
    drop = c.comparison.accuracy_drop
    # A hair of tolerance: drops computed from fractions like 0.91 - 0.90 carry float noise.
    return drop is not None and drop <= budget + 1e-12


def _recommend(cells: Sequence[Cell], baseline: str, budget: float) -> tuple[Cell | None, str]:
    """The fastest qualifying cell and a one-line reason naming faster cells that were passed over."""
    qualifying = [c for c in cells if _qualifies(c, baseline, budget)]
    best = min(qualifying, key=lambda c: c.latency.median_ns or 0.0, default=None)
    limit = (best.latency.median_ns or 0.0) if best else float("inf")
    passed_over = sorted(
        (
            c
            for c in cells
            if c.status == SUCCEEDED
            and (m := _positive_median(c)) is not None
            and m < limit
            and not _qualifies(c, baseline, budget)
        ),
        key=lambda c: c.latency.median_ns or 0.0,
    )
    skipped = "; ".join(f"{c.variant}/{c.runtime} ({_exclusion(c, budget)})" for c in passed_over[:3])
    if len(passed_over) > 3:
        skipped += f"; and {len(passed_over) - 3} more"
    if best is None:
        reason = (
            f"no recommendation: no succeeded, VALID cell of the baseline {baseline} or within the "
            f"{pp(budget)} accuracy budget"
        )
        return None, reason + (f"; excluded: {skipped}" if skipped else "")
    cmp = best.comparison
    if best.variant == baseline:
        why = f"the baseline {baseline} is the fastest qualifying cell"
    else:
        why = f"fastest VALID cell within the {pp(budget)} accuracy budget (drop {pp(cmp.accuracy_drop)})"
    speed = f", {cmp.speedup:.2f}× vs {baseline}" if cmp.speedup is not None and not cmp.is_baseline else ""
    reason = f"{best.variant} on {best.runtime}: {why}; median {ms_unit(best.latency.median_ns)}{speed}"
    if best.flags:
        reason += f" (flagged: {'; '.join(f.split(':', 1)[0] for f in best.flags)})"
    return best, reason + (f"; faster but not recommended: {skipped}" if skipped else "")


def summarize_devices(
    cells: list[Cell], devices: Sequence[str], infos: dict[str, DeviceInfo], baseline: str, budget: float
) -> tuple[list[Cell], list[DeviceSummary], list[CrossDeviceRow]]:
    """Mark Pareto and recommended cells, and build the per-device and cross-device summaries."""
    out = list(cells)
    summaries: list[DeviceSummary] = []
    rows: list[CrossDeviceRow] = []
    for device in devices:
        idx = [i for i, c in enumerate(out) if c.device == device]
        candidates = [
            i
            for i in idx
            if out[i].status == SUCCEEDED and out[i].verdict == VALID and _positive_median(out[i]) is not None
        ]
        metric = pareto_metric([out[i] for i in candidates])
        on_axes = [i for i in candidates if metric_value(out[i], metric) is not None]
        points = [(out[i].latency.median_ns or 0.0, metric_value(out[i], metric) or 0.0) for i in on_axes]
        front = [i for i, keep in zip(on_axes, pareto_front(points), strict=True) if keep]
        for i in front:
            out[i] = dataclasses.replace(out[i], on_pareto_front=True)
        best, reason = _recommend([out[i] for i in idx], baseline, budget)
        rec = None
        if best is not None:
            j = next(i for i in idx if out[i].job_id == best.job_id)
            out[j] = dataclasses.replace(out[j], recommended=True)
            rec = Recommendation(
                best.variant,
                best.runtime,
                best.job_id,
                best.latency.median_ns or 0.0,
                best.latency.throughput_per_s,
                best.comparison.speedup,
                best.comparison.accuracy_drop,
                best.memory.peak_rss_bytes,
            )
        refs = tuple(
            CellRef(out[i].variant, out[i].runtime, out[i].job_id)
            for i in sorted(front, key=lambda i: out[i].latency.median_ns or 0.0)
        )
        summaries.append(DeviceSummary(device, infos[device], metric, refs, rec, reason))
        rows.append(
            CrossDeviceRow(
                device=device,
                variant=rec.variant if rec else None,
                runtime=rec.runtime if rec else None,
                median_ns=rec.median_ns if rec else None,
                throughput_per_s=rec.throughput_per_s if rec else None,
                speedup=rec.speedup if rec else None,
                accuracy_drop=rec.accuracy_drop if rec else None,
                peak_rss_bytes=rec.peak_rss_bytes if rec else None,
                reason=reason,
            )
        )
    return out, summaries, rows
