"""The report as ONE self-contained HTML page: inline CSS, plots as inline SVG, no script, no URL.

It opens offline and fetches nothing: the only links are in-page anchors (`#device-1`). Every string from
a result, device, variant or message is escaped with html.escape(quote=True) (`_fmt.esc`); element ids are
built from indices, never from names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

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
    esc,
    format_rows,
    header_lines,
    ms_unit,
    notes_text,
    seed_row,
    table_row,
)
from coordinator.report._runtimes import runtime_matrices
from coordinator.report.schema import Cell, DeviceSummary, Environment, Report

_CSS = """
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --ok: #067647; --bad: #b42318; --warn: #b54708;
  --accent: #175cd3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: #f8f9fb; }
main { max-width: 1560px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); } h3 { font-size: 15px; margin: 20px 0 8px; }
.meta, .muted { color: var(--muted); } .meta { margin: 0 0 12px; }
nav { margin: 12px 0 0; font-size: 13px; } nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
ul.facts { margin: 8px 0; padding-left: 18px; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 10px; }
th, td { padding: 4px 7px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; vertical-align: bottom; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.not-ok td { background: #fef3f2; } tr.rec td { background: #ecfdf3; }
td.flags { max-width: 420px; color: var(--warn); } tr.not-ok td.flags { color: var(--bad); }
td.first { white-space: nowrap; font-weight: 600; }
tr.has-note td { border-bottom: none; } tr.note td { padding-top: 0; font-size: 12px; color: var(--warn); }
tr.note.not-ok td { color: var(--bad); }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11.5px; font-weight: 600; }
.VALID { background: #dcfae6; color: var(--ok); } .INVALID { background: #fee4e2; color: var(--bad); }
.rec-line { margin: 4px 0; } .rec-line b { color: var(--ok); }
figure { margin: 16px 0 28px; } figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-weight: 600; } details dl { display: grid; grid-template-columns: 220px 1fr;
  gap: 2px 12px; margin: 8px 0; font-size: 12.5px; } dt { color: var(--muted); } dd { margin: 0;
  overflow-wrap: anywhere; }
pre { background: #f2f4f7; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
table.matrix td { max-width: 300px; } td.rt-ok b { color: var(--ok); } td.rt-bad { color: var(--bad); }
td.rt-bad span { font-size: 11.5px; } table.matrix .muted { font-size: 11px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

#: Right-aligned columns: every per-cell figure (all but the labels).
_NUMERIC = set(TABLE_COLUMNS) - {"variant", "runtime", "verdict"}

_DETAIL_NUMERIC = {
    "first inference ms",
    "RSS before MiB",
    "after load MiB",
    "top-1 agreement",
    "cosine",
    "max abs error",
    "SNR dB",
    "accuracy samples",
}


def _time(ns: int | None) -> str:
    if ns is None:
        return DASH
    try:  # integer seconds: a float of the largest valid timestamp rounds up into year 10000
        return dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return DASH


def _table(
    header: Sequence[str],
    rows: Iterable[tuple[str, Sequence[str]]],
    numeric: set[str] = _NUMERIC,
    notes: Sequence[str] | None = None,
) -> str:
    """rows: (row class, cell texts); `notes`, when given, one full-width line under each row ('' for none).

    Every text is escaped here.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, (cls, row) in enumerate(rows):
        tds = []
        for name, text in zip(header, row, strict=True):
            badge = "INVALID" if name == "verdict" and text != "VALID" else "VALID" if text == "VALID" else ""
            if name == "verdict":
                tds.append(f'<td><span class="badge {badge}">{esc(text)}</span></td>')
            else:
                kind = "num" if name in numeric else "flags" if name == "flags" else "first" if not tds else ""
                tds.append(f'<td class="{kind}">{esc(text)}</td>' if kind else f"<td>{esc(text)}</td>")
        note = notes[i] if notes else ""
        body.append(f'<tr class="{esc(cls)}{" has-note" if note else ""}">' + "".join(tds) + "</tr>")
        if note:
            body.append(f'<tr class="note {esc(cls)}"><td colspan="{len(header)}">↳ {esc(note)}</td></tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _row_class(c: Cell) -> str:
    return "rec" if c.recommended else "not-ok" if c.verdict != "VALID" else ""


def _device_section(i: int, report: Report, s: DeviceSummary) -> str:
    info = s.info
    facts = [x for x in (info.device_id, info.hostname, info.cpu_model, info.architecture, info.os, info.board) if x]
    if info.cpu_cores:
        facts.append(f"{info.cpu_cores} cores")
    if info.memory_bytes:
        facts.append(f"{info.memory_bytes / 2**30:.1f} GiB RAM")
    if info.agent_version:
        facts.append(f"agent {info.agent_version}")
    front = ", ".join(f"{r.variant}/{r.runtime}" for r in s.pareto_front) or DASH
    metric = {"top1": "top-1", "top1_agreement": "top-1 agreement"}.get(s.pareto_metric or "", "no accuracy")
    cells = report.cells_of(s.device)
    return (
        f'<section id="device-{i}"><h2>Device {esc(s.device)}</h2>'
        + (f'<p class="muted">{esc(", ".join(facts))}</p>' if facts else "")
        + _table(TABLE_COLUMNS, [(_row_class(c), table_row(c)) for c in cells], notes=[notes_text(c) for c in cells])
        + f'<p class="rec-line"><b>Recommendation:</b> {esc(s.recommendation_reason)}</p>'
        + f'<p class="rec-line muted">Pareto front (median latency vs {esc(metric)}): {esc(front)}</p>'
        + _matrix(report, s.device)
        + "</section>"
    )


def _matrix(report: Report, device: str) -> str:
    """Runtimes side by side: median and speed vs the reference runtime, or why the cell did not run."""
    matrix = next((m for m in runtime_matrices(report) if m.device == device), None)
    if matrix is None:
        return ""
    head = "<th>variant</th>" + "".join(f"<th>{esc(r)}</th>" for r in matrix.runtimes)
    body = []
    for variant, entries in matrix.rows:
        tds = [f'<td class="first">{esc(variant)}</td>']
        for e in entries:
            if e is None:
                tds.append(f"<td>{DASH}</td>")
                continue
            cls = "rt-ok" if e.ok else "rt-bad"
            made = f'<div class="muted">{esc(e.artifact)}</div>' if e.artifact else ""
            tds.append(f'<td class="{cls}"><b>{esc(e.text)}</b> <span>{esc(e.detail)}</span>{made}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (
        f"<h3>Runtimes side by side on {esc(device)}</h3>"
        f'<div class="scroll"><table class="matrix"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _env(e: Environment) -> str:
    parts = []
    if e.cpu_frequency_hz is not None:
        parts.append(f"CPU {e.cpu_frequency_hz / 1e9:.2f} GHz")
    if e.temperature_millicelsius is not None:
        parts.append(f"{e.temperature_millicelsius / 1000:.1f} °C")
    if e.load_average_1m is not None:
        parts.append(f"load {e.load_average_1m:.2f}")
    return ", ".join(parts) or DASH


def _provenance(c: Cell) -> str:
    p, ph, cmp = c.provenance, c.phases, c.comparison
    items = [
        ("job id", c.job_id),
        ("status", f"{c.status} (attempt {c.attempt})"),
        ("message", c.message or DASH),
        ("verdict", f"{c.verdict}: {'; '.join(c.invalid_reasons) or 'no hard problem'}"),
        ("device id", p.device_id or DASH),
        ("agent version", p.agent_version or DASH),
        ("os / kernel / arch", " / ".join(x for x in (p.os, p.kernel, p.architecture) if x) or DASH),
        ("python", p.python_version or DASH),
        ("runtime", f"{p.runtime_name} {p.runtime_version}".strip() or DASH),
        ("execution providers", ", ".join(p.execution_providers) or DASH),
        ("threads (intra / inter)", f"{p.intra_op_threads or DASH} / {p.inter_op_threads or DASH}"),
        ("precision hint", p.precision_hint or DASH),
        ("batch size", str(p.batch_size or DASH)),
        ("model sha256", p.model_sha256 or DASH),
        ("dataset sha256", p.dataset_sha256 or DASH),
        ("environment before", _env(p.before)),
        ("environment after", _env(p.after)),
        ("load / first inference", f"{ms_unit(ph.load_ns)} / {ms_unit(ph.first_inference_ns)}"),
        (
            "warm-up",
            f"{ph.warmup_iterations if ph.warmup_iterations is not None else DASH} iterations, {ms_unit(ph.warmup_ns)}",
        ),
        ("stop reason", (ph.stop_reason or DASH).replace("_", " ")),
        ("steady-state wall time", ms_unit(ph.steady_wall_ns)),
        ("accuracy basis", cmp.accuracy_basis or DASH),
        ("comparison note", cmp.note or DASH),
        ("started / finished", f"{_time(c.started_at_ns)} / {_time(c.finished_at_ns)}"),
        *((f"runtime detail {k}", v) for k, v in p.runtime_details),
        *((f"sandbox: {e.name}", f"{'yes' if e.enforced else 'NO'}: {e.detail}") for e in p.sandbox),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    diag = f"<pre>{esc(c.diagnostics)}</pre>" if c.diagnostics else ""
    title = f"{c.device} / {c.variant} / {c.runtime} — {c.status}, {c.verdict}"
    return f"<details><summary>{esc(title)}</summary><dl>{dl}</dl>{diag}</details>"


def _plots(report: Report) -> str:
    from coordinator.report._plots import memory_svg, speedup_svg, tradeoff_svg

    figures = [
        (
            tradeoff_svg,
            "Median latency versus accuracy per device. Ringed points joined by the dashed line are "
            "the Pareto front; hollow markers are INVALID cells; bars are the 95% CI of the median.",
        ),
        (
            speedup_svg,
            f"Speedup over {report.run.baseline} on the same device and runtime (green: faster). "
            "Hatched: no figure (the cell or its baseline did not succeed). * flagged or INVALID.",
        ),
        (memory_svg, "Peak RSS (light) and model-attributable memory, peak minus RSS before load (dark)."),
    ]
    if not report.cells:
        return '<p class="muted">No cells, no plots.</p>'
    return "".join(f"<figure>{fn(report)}<figcaption>{esc(caption)}</figcaption></figure>" for fn, caption in figures)


def _seed_section(report: Report) -> str:
    if not report.seed_table:
        return ""
    return (
        '<section id="seed"><h2>The seed document\'s claims, measured</h2>'
        '<p class="muted">Size as % of the uncompressed model (zip size in brackets), speed-up and accuracy kept, '
        "measured in this run on each device, beside the ranges the seed document claims.</p>"
        + _table(
            SEED_COLUMNS,
            [("", seed_row(r)) for r in report.seed_table],
            numeric={"size % (zip %)", "speed x", "accuracy kept"},
        )
        + "</section>"
    )


def _formats_section(report: Report) -> str:
    rows = format_rows(report)
    if not any(v.converted or v.unconverted for v in report.variants):
        return ""
    return (
        '<section id="formats"><h2>Variants and their formats</h2>'
        '<p class="muted">Each variant as built (ONNX) and as converted for other runtimes; a format that could '
        "not be made says why, and its cells are skipped.</p>"
        + _table(FORMAT_COLUMNS, [("" if ok else "not-ok", row) for ok, row in rows], numeric={"size MiB"})
        + "</section>"
    )


def render_html(report: Report) -> str:
    """The whole page as a string (UTF-8 declared in a meta tag). Deterministic for a given report."""
    run = report.run
    nav = [("recommendations", "Recommendations"), ("plots", "Plots")]
    if any(v.converted or v.unconverted for v in report.variants):
        nav.append(("formats", "Formats"))
    nav += [(f"device-{i}", f"Device {s.device}") for i, s in enumerate(report.devices)]
    nav += [("flags", "Validity flags"), ("failures", "Did not succeed"), ("details", "Phases and fidelity")]
    nav += [("provenance", "Provenance")]
    flagged = [c for c in report.cells if c.flags]
    failed = [c for c in report.cells if c.status != "succeeded"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgebench report: {esc(run.name)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>edgebench report: {esc(run.name)}</h1>",
        f'<p class="meta">created {esc(_time(run.created_at_ns))} · finished {esc(_time(run.finished_at_ns))}'
        f" · model {esc(run.model_path)} · dataset {esc(run.dataset_path or DASH)}</p>",
        '<ul class="facts">' + "".join(f"<li>{esc(line)}</li>" for line in [*header_lines(report), LEGEND]) + "</ul>",
        "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav) + "</nav></header>",
        '<section id="recommendations"><h2>Recommendations across devices</h2>',
        _table(
            CROSS_DEVICE_COLUMNS,
            [("rec" if r.variant else "not-ok", cross_device_row(r, "none")) for r in report.cross_device],
            numeric={"median", "speedup", "accuracy drop", "peak MiB"},
        ),
        "</section>",
        _seed_section(report),
        _formats_section(report),
        f'<section id="plots"><h2>Plots</h2>{_plots(report)}</section>',
        *(_device_section(i, report, s) for i, s in enumerate(report.devices)),
        '<section id="flags"><h2>Validity flags</h2>',
        _table(
            ("device", "variant", "runtime", "verdict", "flags"),
            [(_row_class(c), (c.device, c.variant, c.runtime, c.verdict, "; ".join(c.flags))) for c in flagged],
        )
        if flagged
        else '<p class="muted">No cell is flagged.</p>',
        "</section>",
        '<section id="failures"><h2>Cells that did not succeed</h2>',
        _table(
            ("device", "variant", "runtime", "status", "reason"),
            [("not-ok", (c.device, c.variant, c.runtime, c.status, c.message or "no message")) for c in failed],
        )
        if failed
        else '<p class="muted">Every cell succeeded.</p>',
        "</section>",
        '<section id="details"><h2>Phases, memory and fidelity</h2>',
        _table(DETAIL_COLUMNS, [(_row_class(c), detail_row(c)) for c in report.cells], numeric=_DETAIL_NUMERIC),
        "</section>",
        '<section id="provenance"><h2>Provenance</h2>',
        *(_provenance(c) for c in report.cells),
        "</section>",
        f"<footer>edgebench report, schema_version {report.schema_version}. Latency statistics: nearest-rank "
        "percentiles and the distribution-free CI of the median (protos/stats.py); p90/p99 withheld below 10/100 "
        "samples.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
