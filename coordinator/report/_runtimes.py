"""Runtimes side by side on one device: a variant x runtime matrix derived from the report's cells.

Each entry is the cell's median latency and its speed relative to the same variant on the reference runtime
(the first runtime of the run with a succeeded cell of that variant on the device; ratio > 1 = faster), or the
status with its reason for cells that did not run, so a reader sees at a glance which runtime to ship per
variant and why a combination is missing. A view only: the JSON report keeps the cells it is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.report._fmt import ms_unit
from coordinator.report.schema import Cell, Report


@dataclass(frozen=True)
class Entry:
    text: str  # "0.231 ms" or the status ("skipped", "failed", ...)
    detail: str  # "1.84× vs onnxruntime", "INVALID: ...", or the reason it did not run
    ok: bool  # a VALID measurement
    artifact: str  # how the file that ran was made, if it was converted


@dataclass(frozen=True)
class Matrix:
    device: str
    runtimes: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Entry | None, ...]], ...]  # (variant, one entry per runtime; None = not planned)


def _entry(cell: Cell, reference: Cell | None) -> Entry:
    artifact = cell.model.artifact or (cell.model.format or "")
    if cell.status != "succeeded":
        return Entry(cell.status, cell.message or "no reason given", False, artifact)
    if cell.verdict != "VALID":
        return Entry(ms_unit(cell.latency.median_ns), "INVALID: " + "; ".join(cell.invalid_reasons), False, artifact)
    detail = ""
    mine, ref = cell.latency.median_ns, reference.latency.median_ns if reference else None
    if reference is not None and reference is not cell and mine and ref:
        detail = f"{ref / mine:.2f}× vs {reference.runtime}"
    return Entry(ms_unit(mine), detail, True, artifact)


def runtime_matrices(report: Report) -> list[Matrix]:
    """One matrix per device that ran more than one runtime (with one runtime there is nothing to compare)."""
    out = []
    for summary in report.devices:
        cells = report.cells_of(summary.device)
        runtimes = tuple(r for r in report.run.runtimes if any(c.runtime == r for c in cells))
        if len(runtimes) < 2:
            continue
        by_key = {(c.variant, c.runtime): c for c in cells}
        rows = []
        for variant in report.run.variants:
            if not any(c.variant == variant for c in cells):
                continue
            reference = next(
                (
                    by_key[(variant, r)]
                    for r in runtimes
                    if (variant, r) in by_key and by_key[(variant, r)].verdict == "VALID"
                ),
                None,
            )
            entries = tuple(
                _entry(by_key[(variant, r)], reference) if (variant, r) in by_key else None for r in runtimes
            )
            rows.append((variant, entries))
        out.append(Matrix(summary.device, runtimes, tuple(rows)))
    return out
