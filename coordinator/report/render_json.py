"""The report as JSON: the model's own fields (schema.md), in declaration order, UTF-8, strictly valid JSON."""

from __future__ import annotations

import json

from coordinator.report.schema import Report


def render_json(report: Report) -> str:
    """`report.to_dict()` as indented JSON with a trailing newline.

    Key order is the schema's field order, so the same report always gives the same bytes. No NaN or
    Infinity (the model holds none; allow_nan=False makes that a ValueError rather than invalid JSON).
    """
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
