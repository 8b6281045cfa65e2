"""Tests of the report renderers: table, Markdown, CSV, JSON and the self-contained HTML page."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.report import FORMATS, build_report, render
from coordinator.report._fmt import md as md_escape
from coordinator.report.schema import Report
from coordinator.types import RunData
from tests.unit.test_report_data import FAIL_MESSAGE, SKIP_MESSAGE, make_run

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
MATH = "$\\alpha$ | `tick`"
# A message with Markdown/HTML/rich markup and a newline: it must stay one literal table cell everywhere.
NASTY_MESSAGE = "bad | input <b>bold</b> [red]markup[/red] `code` $\\frac{1}{0}$\nsecond line"


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(make_run())


@pytest.fixture(scope="module")
def outputs(report: Report) -> dict[str, str]:
    return {fmt: render(report, fmt) for fmt in FORMATS}


@pytest.fixture(scope="module")
def nasty_run() -> RunData:
    return make_run(dev_a=SCRIPT, dev_b=MATH, pruned=IMG, fail_message=NASTY_MESSAGE)


@pytest.fixture(scope="module")
def nasty(nasty_run: RunData) -> dict[str, str]:
    report = build_report(nasty_run)
    return {fmt: render(report, fmt) for fmt in FORMATS}


def test_unknown_format_lists_the_valid_ones(report: Report) -> None:
    with pytest.raises(ValueError, match="table, md, csv, json, html"):
        render(report, "pdf")


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_and_skipped_cells_appear_with_their_reason(outputs: dict[str, str], fmt: str) -> None:
    out = outputs[fmt]
    escape = md_escape if fmt == "md" else str  # Markdown escapes the underscores of SPARSE_TO_DENSE
    assert escape(FAIL_MESSAGE) in out and escape(SKIP_MESSAGE) in out
    if fmt != "json":  # JSON holds the status as a value; the others show the word
        assert "failed" in out and "skipped" in out


def test_table_has_one_table_per_device_and_the_recommendations(outputs: dict[str, str]) -> None:
    text = outputs["table"]
    assert "device rpi5" in text and "device jetson" in text
    assert "recommendation: int8 on onnxruntime" in text
    assert "\x1b[" not in text  # plain text, no ANSI escapes


def test_markdown_has_the_tables_and_recommendations(outputs: dict[str, str]) -> None:
    md = outputs["md"]
    assert "## Device rpi5" in md and "## Device jetson" in md
    assert "| rpi5 | int8/onnxruntime |" in md
    assert "few samples: n=40 &lt; 100 (no p99)" in md


def test_csv_parses_back_with_one_row_per_cell(report: Report, outputs: dict[str, str]) -> None:
    rows = list(csv.DictReader(io.StringIO(outputs["csv"], newline="")))
    assert len(rows) == len(report.cells) == 12
    assert [r["job_id"] for r in rows] == [c.job_id for c in report.cells]
    by_cell = {(r["device"], r["variant"], r["runtime"]): r for r in rows}
    few = by_cell[("jetson", "int8", "onnxruntime")]
    assert few["latency.n"] == "40" and few["latency.p99_ns"] == "" and few["latency.p90_ns"] != ""
    c = next(c for c in report.cells if c.job_id == few["job_id"])
    assert float(few["latency.median_ns"]) == c.latency.median_ns
    assert by_cell[("rpi5", "pruned", "tflite")]["message"] == FAIL_MESSAGE
    assert by_cell[("rpi5", "int8", "onnxruntime")]["recommended"] == "true"
    assert outputs["csv"].endswith("\r\n")


def test_csv_defuses_spreadsheet_formulas() -> None:
    report = build_report(make_run(dev_a="=HYPERLINK(1)", fail_message="@SUM(A1)"))
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"), newline="")))
    assert {r["device"] for r in rows} == {"'=HYPERLINK(1)", "jetson"}
    assert any(r["message"] == "'@SUM(A1)" for r in rows)
    # Numbers are left alone: a negative accuracy drop stays a number.
    assert all(not r["comparison.accuracy_drop"].startswith("'") for r in rows)


def test_json_round_trips_with_schema_version(report: Report, outputs: dict[str, str]) -> None:
    data = json.loads(outputs["json"])
    assert data["schema_version"] == 3
    assert data == json.loads(json.dumps(report.to_dict()))
    assert len(data["cells"]) == 12 and data["cells"][0]["latency"]["median_ns"] is not None
    assert render(report, "json") == outputs["json"]  # stable output
    expected = ["schema_version", "run", "thresholds", "variants", "devices", "cells", "cross_device", "seed_table"]
    assert list(data) == expected


def test_html_is_self_contained(outputs: dict[str, str]) -> None:
    html = outputs["html"]
    assert html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(?:src|href|action|xlink:href)\s*=\s*["']?\s*(?!#)[a-z]*:?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(?!#)", html)
    assert not re.search(r"<(?:script|link|iframe|img|object|embed)\b", html, re.I)
    assert html.count("<svg") >= 3
    assert "<details>" in html and "<style>" in html


def test_html_has_the_plots_tables_flags_and_recommendations(outputs: dict[str, str]) -> None:
    html = outputs["html"]
    for label in ("latency versus accuracy", "Speedup over the baseline", "model-attributable memory"):
        assert label in html
    assert "throttling suspected: CPU 2.4→1.8 GHz" in html
    assert "Recommendations across devices" in html and "int8/onnxruntime" in html
    assert html.count('<section id="device-') == 2


def test_injection_is_escaped_in_html(nasty: dict[str, str]) -> None:
    html = nasty["html"]
    assert "<script>alert" not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    # In the SVG text too (matplotlib escapes), and mathtext stays off: the dollar signs are literal.
    svgs = "".join(re.findall(r"<svg.*?</svg>", html, re.S))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svgs
    assert "$\\alpha$" in svgs


def test_injection_does_not_break_markdown_tables(nasty: dict[str, str]) -> None:
    md = nasty["md"]
    assert "<script>" not in md and "<img" not in md and "<b>" not in md
    unescaped_pipe = re.compile(r"(?<!\\)\|")
    blocks: list[list[str]] = []
    previous = False
    for line in md.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous:
            blocks.append([])
        if is_row:
            blocks[-1].append(line)
        previous = is_row
    assert len(blocks) >= 4
    for block in blocks:
        counts = {len(unescaped_pipe.findall(line)) for line in block}
        assert len(counts) == 1, block  # every row has as many cells as the header
    assert "bad \\| input" in md and "\\$\\\\alpha\\$" in md and "second line" in md


def test_injection_is_literal_in_table_csv_and_json(nasty_run: RunData, nasty: dict[str, str]) -> None:
    assert "[red]markup[/red]" in nasty["table"]  # rich markup is not interpreted
    rows = list(csv.DictReader(io.StringIO(nasty["csv"], newline="")))
    assert len(rows) == 12 and {r["device"] for r in rows} == {SCRIPT, MATH}
    assert any(r["message"] == NASTY_MESSAGE for r in rows)
    assert {c["variant"] for c in json.loads(nasty["json"])["cells"]} == {"fp32", "int8", IMG}


def test_a_run_without_jobs_renders_in_every_format() -> None:
    from dataclasses import replace

    empty = build_report(replace(make_run(), jobs=()))
    for fmt in FORMATS:
        assert render(empty, fmt)
    assert len(list(csv.reader(io.StringIO(render(empty, "csv"))))) == 1  # the header


def test_importing_the_report_package_does_not_import_matplotlib() -> None:
    code = (
        "import sys, coordinator.report as r; from tests.unit.test_report_data import make_run;"
        "r.render(r.build_report(make_run()), 'table'); assert 'matplotlib' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


def test_html_opens_offline_in_a_real_browser(outputs: dict[str, str], tmp_path: Path) -> None:
    browser = pytest.importorskip("tests.browser")
    reason = browser.browser_available()
    if reason is not None:
        pytest.skip(reason)
    page_file = tmp_path / "report.html"
    page_file.write_text(outputs["html"], encoding="utf-8")
    page = browser.open_in_browser(page_file)
    assert not page.network_requests and not page.console_errors
    assert page.svg_count >= 3 and "Recommendations across devices" in page.text
