"""Number formatting and escaping shared by the renderers (so every format shows the same figures)."""

from __future__ import annotations

import html
import re
from typing import Any

from coordinator.report.schema import Cell, Report
from coordinator.safe_text import clean, one_line

DASH = "—"


def ms(ns: float | None) -> str:
    """Nanoseconds as milliseconds with precision that suits the size (3 significant digits or more)."""
    if ns is None:
        return DASH
    v = ns / 1e6
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ms_unit(ns: float | None) -> str:
    return DASH if ns is None else f"{ms(ns)} ms"


def mib(n: int | None) -> str:
    return DASH if n is None else f"{n / 2**20:.1f}"


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x * 100:.{digits}f}%"


def pp(x: float | None) -> str:
    """A difference of fractions as percentage points (an accuracy drop: negative means it improved)."""
    if x is None:
        return DASH
    text = f"{x * 100:.1f}"
    return ("0.0" if text == "-0.0" else text.replace("-", "−")) + " pp"


def ratio(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}×"


def num(x: float | None, fmt: str = ".3g") -> str:
    return DASH if x is None else format(x, fmt)


def speedup_text(c: Cell) -> str:
    s = c.comparison
    if s.speedup is None:
        return DASH
    if s.speedup_ci_low is None or s.speedup_ci_high is None or s.is_baseline:
        return ratio(s.speedup)
    return f"{s.speedup:.2f}× [{s.speedup_ci_low:.2f}, {s.speedup_ci_high:.2f}]"


def median_text(c: Cell) -> str:
    lat = c.latency
    if lat.median_ns is None:
        return DASH
    return f"{ms(lat.median_ns)} [{ms(lat.median_ci_low_ns)}, {ms(lat.median_ci_high_ns)}]"


def accuracy_text(c: Cell) -> str:
    a = c.accuracy
    if a.top1 is not None:
        return pct(a.top1) + (f" / {pct(a.top5)}" if a.top5 is not None else "")
    if a.top1_agreement is not None:
        return f"agree {pct(a.top1_agreement)}"
    return DASH


def single_line(text: str) -> str:
    """One table cell, one line: line breaks as spaces; terminal and bidi controls as visible escapes
    (`coordinator.safe_text`), so no renderer passes an agent's escape sequence or override through."""
    return one_line(text)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~$])")


def md(text: str) -> str:
    """Untrusted text for Markdown (a table cell or a line): one line, Markdown punctuation (pipes, so a cell
    cannot split its row; backticks; emphasis, link, heading and math characters) backslash-escaped, and
    <, >, & as entities so no raw HTML gets through."""
    out = html.escape(single_line(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", out)


def esc(text: object) -> str:
    """Untrusted text for HTML text or a quoted attribute value: entities for markup characters, visible
    escapes for control and bidi characters (a bidi override would reorder what the reader sees)."""
    return html.escape(clean(text), quote=True)


def cell_label(c: Cell) -> str:
    return f"{c.variant}/{c.runtime}"


def header_lines(report: Report) -> list[str]:
    """Plain-text facts about the run, shared by the text and Markdown headers (caller escapes)."""
    r, s, t = report.run, report.run.settings, report.thresholds
    return [
        f"run {r.run_id} ({r.name}), baseline {r.baseline}",
        f"devices {len(r.devices)}, variants {len(r.variants)}, runtimes {len(r.runtimes)}, cells {len(report.cells)}",
        f"batch {s.batch}, threads {s.threads or 'default'}, warm-up {s.warmup_iterations}, "
        f"min {s.min_iterations} iterations / {s.min_duration_s:g} s, max {s.max_duration_s:g} s"
        + (f", target CI ±{s.target_relative_ci:.1%}" if s.target_relative_ci > 0 else ""),
        f"accuracy budget {t.max_accuracy_drop * 100:.1f} pp, CV threshold {t.cv_threshold:.0%}, "
        f"speedup intervals at {t.speedup_ci_confidence:.0%} joint confidence",
    ]


TABLE_COLUMNS = (
    "variant",
    "runtime",
    "verdict",
    "n",
    "median ms [95% CI]",
    "p90 ms",
    "p99 ms",
    "CV",
    "throughput /s",
    "speedup [CI]",
    "load ms",
    "peak MiB",
    "model MiB",
    "size MiB",
    "top-1 / top-5",
    "acc. drop",
)


def verdict_text(c: Cell) -> str:
    """VALID or INVALID for a cell that ran to the end; otherwise its status (failed, skipped, ...)."""
    return c.verdict if c.status == "succeeded" else c.status


def notes_text(c: Cell) -> str:
    """The flags of a succeeded cell, or why the cell did not succeed."""
    if c.status != "succeeded":
        return c.message or f"{c.status}: no message"
    return "; ".join(c.flags)


def table_row(c: Cell) -> list[str]:
    """The per-device table row (TABLE_COLUMNS) every tabular renderer shows; plain text, caller escapes."""
    lat, mem = c.latency, c.memory
    marks = ("★ " if c.recommended else "") + ("◆ " if c.on_pareto_front else "")
    return [
        marks + c.variant,
        c.runtime,
        verdict_text(c),
        str(lat.n) if lat.n else DASH,
        median_text(c),
        ms(lat.p90_ns),
        ms(lat.p99_ns),
        pct(lat.cv),
        num(lat.throughput_per_s, ".4g"),
        speedup_text(c),
        ms(c.phases.load_ns) if c.phases.load_ns else DASH,
        mib(mem.peak_rss_bytes),
        mib(mem.model_memory_bytes),
        mib(c.model.size_bytes),
        accuracy_text(c),
        pp(c.comparison.accuracy_drop),
    ]


DETAIL_COLUMNS = (
    "device",
    "variant",
    "runtime",
    "first inference ms",
    "warm-up",
    "stop reason",
    "RSS before MiB",
    "after load MiB",
    "top-1 agreement",
    "cosine",
    "max abs error",
    "SNR dB",
    "accuracy samples",
)


def detail_row(c: Cell) -> list[str]:
    """Phases, memory and fidelity of a cell: the second table of the Markdown and HTML reports."""
    ph, mem, acc = c.phases, c.memory, c.accuracy
    warmup = DASH if ph.warmup_iterations is None else f"{ph.warmup_iterations} it, {ms_unit(ph.warmup_ns)}"
    return [
        c.device,
        c.variant,
        c.runtime,
        ms(ph.first_inference_ns) if ph.first_inference_ns else DASH,
        warmup,
        (ph.stop_reason or DASH).replace("_", " "),
        mib(mem.rss_before_load_bytes),
        mib(mem.rss_after_load_bytes),
        pct(acc.top1_agreement),
        num(acc.cosine_similarity, ".4f"),
        num(acc.max_abs_error, ".3g"),
        num(acc.snr_db, ".1f"),
        str(acc.samples) if acc.samples else DASH,
    ]


LEGEND = "★ recommended, ◆ on the latency/accuracy Pareto front; intervals are 95% (speedup: joint, see schema)."


SEED_COLUMNS = (
    "device",
    "runtime",
    "technique",
    "variant",
    "size % (zip %)",
    "speed x",
    "accuracy kept",
    "seed: size",
    "seed: speed",
    "seed: accuracy",
    "note",
)


def seed_row(r: Any) -> list[str]:
    """One row of the seed-claims table (r: report.seed.SeedRow)."""
    size = DASH if r.size_percent is None else f"{r.size_percent:.0f}%"
    if r.zip_percent is not None:
        size += f" ({r.zip_percent:.0f}%)"
    speed = DASH if r.speedup is None else f"{r.speedup:.2f}x"
    kept = DASH if r.accuracy_kept_percent is None else f"{r.accuracy_kept_percent:.1f}%"
    return [
        r.device,
        r.runtime,
        r.technique,
        r.variant or DASH,
        size,
        speed,
        kept,
        r.claimed_size,
        r.claimed_speedup,
        r.claimed_accuracy_kept,
        r.note,
    ]


FORMAT_COLUMNS = ("variant", "format", "size MiB", "sha256", "how it was made / why it is missing")


def format_rows(report: Any) -> list[tuple[bool, list[str]]]:
    """(made?, row) per variant and format: the primary file, each converted form, each format not made."""
    rows: list[tuple[bool, list[str]]] = []
    for v in report.variants:
        if v.sha256:
            rows.append((True, [v.name, v.format, mib(v.size_bytes), v.sha256[:12], v.recipe or v.notes or DASH]))
        elif v.notes:
            rows.append((False, [v.name, v.format, DASH, DASH, v.notes]))
        rows += [(True, [v.name, fmt, mib(size), sha[:12], how or DASH]) for fmt, sha, size, how in v.converted]
        rows += [(False, [v.name, fmt, DASH, DASH, why]) for fmt, why in v.unconverted]
    return rows


CROSS_DEVICE_COLUMNS = ("device", "recommended", "median", "speedup", "accuracy drop", "peak MiB", "reason")


def cross_device_row(r: Any, none: str = DASH) -> tuple[str, ...]:
    """One row of the recommendations-across-devices table (r: schema.CrossDeviceRow); `none` stands in the
    "recommended" column of a device without a recommendation."""
    return (
        r.device,
        f"{r.variant}/{r.runtime}" if r.variant else none,
        ms_unit(r.median_ns),
        ratio(r.speedup),
        pp(r.accuracy_drop),
        mib(r.peak_rss_bytes),
        r.reason,
    )
