"""The report as JSON: the model's own fields (schema.md), in declaration order, UTF-8, strictly valid JSON."""

from __future__ import annotations

import json

from coordinator.report.schema import Report
from coordinator.safe_text import UNSAFE


def render_json(report: Report) -> str:
    """`report.to_dict()` as indented JSON with a trailing newline.

    Key order is the schema's field order, so the same report always gives the same bytes. No NaN or
    Infinity (the model holds none; allow_nan=False makes that a ValueError rather than invalid JSON).
    Strings are kept verbatim, and no raw control or bidi character reaches the output: json escapes C0
    itself, and DEL, C1 and the bidi controls (which can only occur inside strings) become \\uXXXX escapes,
    which decode to the same string.
    """
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"
