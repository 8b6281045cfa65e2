"""The report as terminal text: one rich Table per device, then the recommendations.

Untrusted strings are passed to rich as `Text` objects, never as markup strings, so a device or message
containing "[bold]" or "[link=...]" is shown literally.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordinator.report._fmt import (
    DASH,
    LEGEND,
    header_lines,
    mib,
    ms,
    ms_unit,
    pct,
    pp,
    ratio,
    single_line,
)
from coordinator.report._runtimes import Matrix, runtime_matrices
from coordinator.report.schema import Cell, Report

DEFAULT_WIDTH = 160
#: (header, right-aligned); flags and failure reasons go below each table, where they can wrap freely.
_COLUMNS = (
    ("variant", False),
    ("runtime", False),
    ("verdict", False),
    ("n", True),
    ("median ms", True),
    ("95% CI", True),
    ("p90", True),
    ("p99", True),
    ("CV", True),
    ("speedup", True),
    ("95% CI ", True),
    ("peak MiB", True),
    ("model MiB", True),
    ("top-1", True),
    ("drop", True),
)


def _t(text: str, style: str = "") -> Text:
    return Text(single_line(text), style=style)


def _range(low: float | None, high: float | None, fmt: str) -> str:
    return DASH if low is None or high is None else f"{low:{fmt}}–{high:{fmt}}"


def _row(c: Cell) -> list[Text]:
    lat, cmp = c.latency, c.comparison
    verdict = c.verdict if c.status == "succeeded" else c.status
    style = "green" if c.verdict == "VALID" else "red"
    marks = ("★ " if c.recommended else "") + ("◆ " if c.on_pareto_front else "")
    speed_ci = DASH if cmp.is_baseline else _range(cmp.speedup_ci_low, cmp.speedup_ci_high, ".2f")
    top1 = c.accuracy.top1 if c.accuracy.top1 is not None else c.accuracy.top1_agreement
    return [
        _t(marks + c.variant, "bold" if c.recommended else ""),
        _t(c.runtime),
        _t(verdict, style),
        _t(str(lat.n) if lat.n else DASH),
        _t(ms(lat.median_ns)),
        _t(DASH if lat.median_ci_low_ns is None else f"{ms(lat.median_ci_low_ns)}–{ms(lat.median_ci_high_ns)}"),
        _t(ms(lat.p90_ns)),
        _t(ms(lat.p99_ns)),
        _t(pct(lat.cv)),
        _t(ratio(cmp.speedup)),
        _t(speed_ci),
        _t(mib(c.memory.peak_rss_bytes)),
        _t(mib(c.memory.model_memory_bytes)),
        _t(pct(top1)),
        _t(pp(cmp.accuracy_drop)),
    ]


def _matrix_table(matrix: Matrix) -> Table:
    table = Table(
        title=_t(f"runtimes side by side on {matrix.device}", "bold"), title_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("variant", overflow="fold")
    for runtime in matrix.runtimes:
        table.add_column(runtime, overflow="fold")
    for variant, entries in matrix.rows:
        row = [_t(variant)]
        for e in entries:
            if e is None:
                row.append(_t(DASH))
            else:
                row.append(_t(f"{e.text} {e.detail}".strip(), "green" if e.ok else "red"))
        table.add_row(*row)
    return table


def render_table(report: Report, width: int = DEFAULT_WIDTH) -> str:
    """Plain text (no ANSI codes) laid out for a terminal `width` columns wide; ends with a newline."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False)
    console.print(_t(f"edgebench report: {report.run.name}", "bold"))
    for line in header_lines(report):
        console.print(_t(line))
    matrices = {m.device: m for m in runtime_matrices(report)}
    for summary in report.devices:
        table = Table(title=_t(f"device {summary.device}", "bold"), title_justify="left", box=box.SIMPLE_HEAD)
        for name, right in _COLUMNS:
            table.add_column(name, justify="right" if right else "left", overflow="fold")
        cells = report.cells_of(summary.device)
        for c in cells:
            table.add_row(*_row(c))
        console.print()
        console.print(table)
        for c in cells:
            notes = "; ".join(c.flags) if c.status == "succeeded" else (c.message or "no message")
            if notes:
                console.print(_t(f"  {c.variant}/{c.runtime}: {notes}", "yellow" if c.verdict == "VALID" else "red"))
        console.print(_t(f"  recommendation: {summary.recommendation_reason}", "bold"))
        if summary.device in matrices:
            console.print(_matrix_table(matrices[summary.device]))
    console.print()
    console.print(_t("Recommendations across devices", "bold"))
    for r in report.cross_device:
        if r.variant is None:
            console.print(_t(f"  {r.device}: none ({r.reason})"))
        else:
            console.print(
                _t(
                    f"  {r.device}: {r.variant}/{r.runtime}, median {ms_unit(r.median_ns)}, "
                    f"{ratio(r.speedup)} vs {report.run.baseline}, drop {pp(r.accuracy_drop)}"
                )
            )
    console.print(_t(LEGEND + " top-1 is labels' top-1, else agreement with the reference."))
    return console.export_text(styles=False)
