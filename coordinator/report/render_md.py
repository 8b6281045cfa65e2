"""The report as GitHub-flavoured Markdown: recommendations, one table per device, flags, failures, provenance.

Every string from a result, device, variant or message goes through `_fmt.md` (pipes, backticks and other
Markdown punctuation escaped, <, >, & as entities, newlines flattened), so it can neither split a table row
nor inject HTML or links.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.report._fmt import (
    CROSS_DEVICE_COLUMNS,
    DASH,
    DETAIL_COLUMNS,
    FORMAT_COLUMNS,
    LEGEND,
    SEED_COLUMNS,
    TABLE_COLUMNS,
    cross_device_row,
    detail_row,
    format_rows,
    header_lines,
    md,
    notes_text,
    seed_row,
    table_row,
)
from coordinator.report._runtimes import runtime_matrices
from coordinator.report.schema import Cell, DeviceSummary, Report


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in rows]
    return lines


def _where(c: Cell) -> str:
    return f"{c.device} / {c.variant} / {c.runtime}"


def _device_section(report: Report, summary: DeviceSummary) -> list[str]:
    info = summary.info
    facts = [x for x in (info.device_id, info.cpu_model, info.architecture, info.os) if x]
    if info.cpu_cores:
        facts.append(f"{info.cpu_cores} cores")
    if info.memory_bytes:
        facts.append(f"{info.memory_bytes / 2**30:.1f} GiB")
    lines = [f"## Device {md(summary.device)}", ""]
    if facts:
        lines += [md(", ".join(facts)), ""]
    rows = [[*table_row(c), notes_text(c)] for c in report.cells_of(summary.device)]
    lines += _table((*TABLE_COLUMNS, "flags / reason"), rows)
    front = ", ".join(f"{r.variant}/{r.runtime}" for r in summary.pareto_front) or DASH
    metric = summary.pareto_metric or "no accuracy"
    lines += [
        "",
        f"- **Recommendation:** {md(summary.recommendation_reason)}",
        f"- **Pareto front** (median latency vs {md(metric)}): {md(front)}",
        "",
    ]
    matrix = next((m for m in runtime_matrices(report) if m.device == summary.device), None)
    if matrix is not None:
        lines += [f"### Runtimes side by side on {md(summary.device)}", ""]
        rows = [
            [variant, *(DASH if e is None else f"{e.text} {e.detail}".strip() for e in entries)]
            for variant, entries in matrix.rows
        ]
        lines += _table(("variant", *matrix.runtimes), rows)
        lines.append("")
    return lines


def render_md(report: Report) -> str:
    """The whole report as one Markdown document (ends with a newline)."""
    run = report.run
    lines = [f"# edgebench report: {md(run.name)}", ""]
    lines += [f"- {md(line)}" for line in header_lines(report)]
    lines += [f"- {md(LEGEND)}", "", "## Recommendations across devices", ""]
    lines += _table(CROSS_DEVICE_COLUMNS, [cross_device_row(r) for r in report.cross_device])
    lines.append("")
    if report.seed_table:
        lines += ["## The seed document's claims, measured", ""]
        lines += _table(SEED_COLUMNS, [seed_row(r) for r in report.seed_table])
        lines.append("")
    if any(v.converted or v.unconverted for v in report.variants):
        lines += ["## Variants and their formats", ""]
        lines += _table(FORMAT_COLUMNS, [row for _ok, row in format_rows(report)])
        lines.append("")
    for summary in report.devices:
        lines += _device_section(report, summary)
    flagged = [c for c in report.cells if c.flags]
    lines += ["## Validity flags", ""]
    lines += [f"- {md(_where(c))} ({md(c.verdict)}): {md('; '.join(c.flags))}" for c in flagged] or ["- none"]
    failed = [c for c in report.cells if c.status != "succeeded"]
    lines += ["", "## Cells that did not succeed", ""]
    lines += [f"- {md(_where(c))}: {md(c.status)}: {md(c.message or 'no message')}" for c in failed] or ["- none"]
    lines += ["", "## Phases, memory and fidelity", ""]
    lines += _table(DETAIL_COLUMNS, [detail_row(c) for c in report.cells])
    lines += ["", "## Provenance", ""]
    lines += _table(
        (
            "device",
            "variant",
            "runtime",
            "device id",
            "agent",
            "runtime version",
            "providers",
            "threads",
            "model sha256",
        ),
        [
            (
                c.device,
                c.variant,
                c.runtime,
                c.provenance.device_id or DASH,
                c.provenance.agent_version or DASH,
                c.provenance.runtime_version or DASH,
                ", ".join(c.provenance.execution_providers) or DASH,
                str(c.provenance.intra_op_threads or DASH),
                c.provenance.model_sha256[:16] or DASH,
            )
            for c in report.cells
        ],
    )
    lines += ["", f"schema_version {report.schema_version}", ""]
    return "\n".join(lines)
