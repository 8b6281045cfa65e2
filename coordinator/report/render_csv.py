"""The report as CSV: one row per cell, flat columns named by their JSON path (`latency.median_ns`).

RFC 4180 through the csv module (CRLF line ends, quoting where needed). Values are raw (nanoseconds,
bytes, fractions), floats in Python's shortest round-trip form, None as an empty field, booleans as
true/false, lists joined with "; " and runtime_details as "key=value; ...". Text that a spreadsheet would
run as a formula (starting with = + - @, tab or CR) is prefixed with a single quote (OWASP "CSV
injection"); numbers are never touched, so negative values stay numeric. Terminal and bidi control
characters in text are written as visible escapes (`coordinator.safe_text.clean`): a CSV is often `cat`
to a terminal, where an agent's escape sequence would otherwise act.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from coordinator.report.schema import Cell, Report, to_jsonable
from coordinator.safe_text import clean

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif prefix.endswith("runtime_details"):
        out[prefix] = "; ".join(f"{k}={v}" for k, v in value)
    elif prefix.endswith("provenance.sandbox"):
        out[prefix] = "; ".join(f"{e['name']}={'yes' if e['enforced'] else 'no'}" for e in value)
    elif isinstance(value, list):
        out[prefix] = "; ".join(str(v) for v in value)
    else:
        out[prefix] = value


def _field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = clean(value)
        return "'" + text if text.startswith(_FORMULA_START) else text
    return str(value)


def cell_row(cell: Cell) -> dict[str, Any]:
    """The flat column -> value mapping of one cell (values not yet CSV-encoded)."""
    out: dict[str, Any] = {}
    _flatten("", to_jsonable(cell), out)
    return out


def render_csv(report: Report) -> str:
    """A header row, then one row per cell in report order (the header alone when there are none)."""
    buf = io.StringIO(newline="")
    rows = [cell_row(c) for c in report.cells]
    columns = list(rows[0]) if rows else list(_empty_columns())
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_field(row[c]) for c in columns])
    return buf.getvalue()


def _empty_columns() -> dict[str, Any]:
    # Every Cell has the same shape, so any cell's columns are the columns; build one from a dummy to
    # keep the header stable for reports without cells.
    from coordinator.report._cells import build_cell
    from coordinator.report.model import HOT_TEMPERATURE_MILLICELSIUS, SPEEDUP_CI_CONFIDENCE
    from coordinator.report.schema import Thresholds
    from coordinator.types import JobRecord, JobStatus, MeasurementSettings

    thresholds = Thresholds(0.01, 0.1, 10, 0.1, HOT_TEMPERATURE_MILLICELSIUS, SPEEDUP_CI_CONFIDENCE)
    job = JobRecord("", "", "", "", "", JobStatus.SKIPPED)
    return cell_row(build_cell(job, None, MeasurementSettings(), thresholds, "", False).cell)
