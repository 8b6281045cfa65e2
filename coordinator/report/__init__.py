"""Reports of a benchmark run: `build_report(run)` makes the model, `render(report, fmt)` the output.

Every format renders the same `Report` (coordinator.report.schema; JSON schema in schema.md), so the
figures agree across them. Renderers are imported on use: matplotlib (HTML only) stays out of CLI start-up.
"""

from __future__ import annotations

import importlib

from coordinator.report.model import build_report
from coordinator.report.schema import SCHEMA_VERSION, Report

__all__ = ["FORMATS", "SCHEMA_VERSION", "Report", "build_report", "render"]

#: Format name -> (module, function); each function takes the Report and returns the whole output as text.
_RENDERERS = {
    "table": ("coordinator.report.render_text", "render_table"),
    "md": ("coordinator.report.render_md", "render_md"),
    "csv": ("coordinator.report.render_csv", "render_csv"),
    "json": ("coordinator.report.render_json", "render_json"),
    "html": ("coordinator.report.render_html", "render_html"),
}
FORMATS = tuple(_RENDERERS)


def render(report: Report, fmt: str) -> str:
    """`report` in format `fmt` (one of FORMATS: table, md, csv, json, html); ValueError for any other."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown report format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    module, func = _RENDERERS[fmt]
    out = getattr(importlib.import_module(module), func)(report)
    assert isinstance(out, str)
    return out
