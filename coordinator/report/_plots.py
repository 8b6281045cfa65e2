"""The HTML report's three plots as inline SVG: latency vs accuracy, speedup heat map, memory.

matplotlib is imported here only, and only through `matplotlib.figure.Figure` (no pyplot): nothing touches
the process-wide backend or a GUI, and rendering goes through the SVG canvas, the non-interactive path the
Agg family uses. Names from results are untrusted: mathtext is off (`text.parse_math`), so a `$` is a
dollar sign and a malformed `$\\x{$` cannot raise; text is written as SVG <text> (svg.fonttype "none"),
which matplotlib XML-escapes. The SVG is stripped of its XML prolog, DOCTYPE and namespace declarations
(HTML parses inline SVG without them), so the page references no URL at all.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from coordinator.report._analysis import metric_value
from coordinator.report.schema import Cell, Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

_RC: dict[RcKeyType, Any] = {
    "text.parse_math": False,
    "text.usetex": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "edgebench-report",  # stable element ids: the same report gives the same bytes
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_MISSING = "#d9d9d9"
_SVG_HEADER = re.compile(r"\A.*?(?=<svg\b)", re.S)


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def _to_svg(fig: Figure, label: str) -> str:
    buf = io.StringIO()
    fig.savefig(
        buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    svg = _SVG_HEADER.sub("", buf.getvalue(), count=1)
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)
    # Scale to the page width, keeping the aspect ratio from viewBox; matplotlib's pt sizes are the cap.
    match = re.match(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    if match:
        width = float(match.group(1)) * 4 / 3  # pt -> CSS px
        svg = svg.replace(match.group(0), f'<svg style="width:100%;max-width:{width:.0f}px;height:auto"', 1)
    from html import escape

    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(label, quote=True)}" ', 1)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _runtime_colors(report: Report) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {rt: cmap(i % 10) for i, rt in enumerate(report.run.runtimes)}


def _short(text: str, limit: int = 28) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _subplots(n: int, width: float, row_height: float, max_cols: int = 2) -> tuple[Figure, list[Axes]]:
    """A grid of n subplots (unused cells hidden), `row_height` inches per row; a single one is narrower."""
    from matplotlib.figure import Figure

    rows, cols = _grid(n, max_cols)
    width = width if cols > 1 else width * 0.6
    fig = Figure(figsize=(width, row_height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _place_labels(
    ax: Axes, points: Sequence[tuple[float, float, str]], fontsize: float, avoid: Sequence[tuple[float, float]] = ()
) -> None:
    """Annotate points, trying a few offsets per label so that labels cover neither each other nor the
    markers at `avoid` (data coordinates). Greedy, with estimated text sizes: good enough for a dozen."""
    fig = ax.get_figure()
    scale = (fig.dpi if fig is not None else 100) / 72  # points -> display pixels
    r = 4 * scale
    taken: list[tuple[float, float, float, float]] = []
    for x, y in avoid:
        px, py = ax.transData.transform((x, y))
        taken.append((px - r, py - r, px + r, py + r))
    offsets = [
        (6, 4, "left"),
        (6, -11, "left"),
        (-6, 4, "right"),
        (-6, -11, "right"),
        (6, 14, "left"),
        (-6, 14, "right"),
        (6, -21, "left"),
        (-6, -21, "right"),
    ]
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        px, py = ax.transData.transform((x, y))
        w, h = len(text) * fontsize * 0.58 * scale, fontsize * 1.2 * scale
        choice = offsets[0]
        for dx, dy, ha in offsets:
            x0 = px + dx * scale - (w if ha == "right" else 0)
            y0 = py + dy * scale
            box = (x0, y0, x0 + w, y0 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                choice = (dx, dy, ha)
                taken.append(box)
                break
        else:
            taken.append((px, py, px + w, py + h))
        ax.annotate(
            text,
            (x, y),
            xytext=choice[:2],
            textcoords="offset points",
            ha=choice[2],
            fontsize=fontsize,
            color="#333333",
        )


#: Marker per variant (report order, cycling); INVALID cells are drawn hollow.
_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X", "h", "<")
#: Above this many points in one subplot only Pareto-front points are labelled (markers + legend do the rest).
_LABEL_ALL_MAX = 6


def tradeoff_svg(report: Report) -> str:
    """(a) Median latency vs accuracy, one subplot per device; the Pareto front joined and ringed.

    Colour is the runtime and marker shape the variant (legend); points are labelled variant/runtime
    when a subplot has few of them, else only the Pareto-front points are, to stay readable.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    colors = _runtime_colors(report)
    markers = {v: _MARKERS[i % len(_MARKERS)] for i, v in enumerate(report.run.variants)}
    with _style():
        fig, axes = _subplots(len(report.devices), 12.0, 3.8, max_cols=2 if len(report.devices) <= 6 else 3)
        for ax, summary in zip(axes, report.devices, strict=True):
            cells = report.cells_of(summary.device)
            metric = summary.pareto_metric
            shown = [c for c in cells if c.latency.median_ns and metric_value(c, metric) is not None]
            hidden = [c for c in cells if c not in shown]
            labels: list[tuple[float, float, str]] = []
            for c in shown:
                x, y = (c.latency.median_ns or 0.0) / 1e6, (metric_value(c, metric) or 0.0) * 100
                lo, hi = c.latency.median_ci_low_ns, c.latency.median_ci_high_ns
                err = [[x - lo / 1e6], [hi / 1e6 - x]] if lo is not None and hi is not None else None
                color = colors.get(c.runtime, "gray")
                valid = c.verdict == "VALID"
                ax.errorbar(
                    [x],
                    [y],
                    xerr=err,
                    fmt=markers.get(c.variant, "o"),
                    ms=7,
                    color=color,
                    mfc=color if valid else "white",
                    capsize=2,
                    zorder=3,
                )
                if len(shown) <= _LABEL_ALL_MAX or c.on_pareto_front:
                    labels.append((x, y, _short(f"{c.variant}/{c.runtime}" + ("" if valid else " (INVALID)"))))
            front = sorted(
                ((c.latency.median_ns or 0.0) / 1e6, (metric_value(c, metric) or 0.0) * 100)
                for c in shown
                if c.on_pareto_front
            )
            if front:
                fx, fy = [p[0] for p in front], [p[1] for p in front]
                ax.plot(fx, fy, "--", color="#555555", lw=1, zorder=2)
                ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="#222222", lw=1.2, zorder=4)
            if shown:
                xs = [(c.latency.median_ns or 0.0) / 1e6 for c in shown]
                if max(xs) / max(min(xs), 1e-9) > 20:
                    ax.set_xscale("log")
                    # The default log labels are mathtext ("$10^{1}$"), which parse_math=False shows raw.
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.margins(x=0.25, y=0.3)
                _place_labels(
                    ax,
                    labels,
                    7.5,
                    avoid=[((c.latency.median_ns or 0.0) / 1e6, (metric_value(c, metric) or 0.0) * 100) for c in shown],
                )
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no cell with latency and accuracy",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="#777777",
                )
            if hidden:
                why = ", ".join(_short(f"{c.variant}/{c.runtime} ({c.status})", 34) for c in hidden[:3])
                more = f" +{len(hidden) - 3}" if len(hidden) > 3 else ""
                ax.text(
                    0.01,
                    0.01,
                    f"not shown: {why}{more}",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="#777777",
                    va="bottom",
                )
            ax.set_title(_short(summary.device, 40), loc="left", fontweight="bold")
            ax.set_xlabel("median latency (ms), bars: 95% CI")
            ax.set_ylabel("top-1 (%)" if metric == "top1" else "top-1 agreement (%)" if metric else "accuracy")
            ax.grid(True, alpha=0.3)
        handles = [Line2D([], [], marker="s", ls="", ms=8, color=c, label=_short(rt)) for rt, c in colors.items()]
        if len(markers) > 1:
            handles += [
                Line2D([], [], marker=m, ls="", color="#444444", label=_short(v, 20)) for v, m in markers.items()
            ]
        handles += [
            Line2D([], [], marker="o", ls="--", color="#555555", mfc="none", ms=11, label="Pareto front"),
            Line2D([], [], marker="o", ls="", color="#444444", mfc="white", label="INVALID (hollow)"),
        ]
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 7), frameon=False)
        return _to_svg(fig, "Median latency versus accuracy per device")


def _heat_text(c: Cell | None) -> tuple[float | None, str]:
    if c is None:
        return None, "not run"
    s = c.comparison.speedup
    if s is None:
        if c.status != "succeeded":
            return None, c.status.replace("_", " ")
        return None, "no baseline" if "baseline" in c.comparison.note else "n/a"
    mark = "" if c.verdict == "VALID" and not c.flags else "*"
    return s, f"{s:.2f}×{mark}"


def speedup_svg(report: Report) -> str:
    """(b) Speedup over the baseline, device x variant, one heat map per runtime; gaps hatched and named."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import NullFormatter

    devices, variants, runtimes = report.run.devices, report.run.variants, report.run.runtimes
    index = {(c.device, c.variant, c.runtime): c for c in report.cells}
    values = [c.comparison.speedup for c in report.cells if c.comparison.speedup]
    span = max([2.0, *(max(v, 1 / v) for v in values)])  # symmetric in log space around 1x
    norm = LogNorm(vmin=1 / span, vmax=span)
    cmap = colormaps["RdYlGn"]
    with _style():
        from matplotlib.figure import Figure

        cols = min(len(runtimes), 2)
        rows = math.ceil(len(runtimes) / cols)
        width = min(14.0, max(6.0, cols * (1.1 * len(variants) + 2.5)))
        fig = Figure(figsize=(width, rows * (0.55 * len(devices) + 1.6)), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
        for ax in axes[len(runtimes) :]:
            ax.set_visible(False)
        image = None
        for ax, runtime in zip(axes[: len(runtimes)], runtimes, strict=True):
            grid = np.full((len(devices), len(variants)), np.nan)
            for i, d in enumerate(devices):
                for j, v in enumerate(variants):
                    value, text = _heat_text(index.get((d, v, runtime)))
                    ink = "#111111"
                    if value is not None:
                        grid[i, j] = value
                        r, g, b, _ = cmap(norm(value))
                        ink = "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 0.45 else "#111111"
                    else:
                        ax.add_patch(
                            Rectangle(
                                (j - 0.5, i - 0.5), 1, 1, facecolor=_MISSING, hatch="///", edgecolor="#aaaaaa", lw=0
                            )
                        )
                    ax.text(j, i, text, ha="center", va="center", fontsize=9.5, color=ink)
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
            tilt = max(map(len, variants)) > 8
            ax.set_xticks(
                range(len(variants)),
                [_short(v, 18) for v in variants],
                rotation=30 if tilt else 0,
                ha="right" if tilt else "center",
            )
            ax.set_yticks(range(len(devices)), [_short(d, 22) for d in devices])
            ax.set_title(f"runtime {_short(runtime, 30)}", loc="left", fontweight="bold")
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
        if image is not None:
            bar = fig.colorbar(image, ax=axes[: len(runtimes)], shrink=0.8, label=f"speedup vs {report.run.baseline}")
            ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if 1 / span <= t <= span]
            bar.set_ticks(ticks, labels=[f"{t:g}×" for t in ticks])
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
        return _to_svg(fig, "Speedup over the baseline per device and variant")


def memory_svg(report: Report) -> str:
    """(c) Peak RSS and model-attributable memory, grouped bars per variant (one bar pair per runtime)."""
    colors = _runtime_colors(report)
    variants, runtimes = report.run.variants, report.run.runtimes
    with _style():
        fig, axes = _subplots(len(report.devices), 12.0, 3.4 if len(variants) <= 4 else 3.8)
        width = 0.8 / (2 * len(runtimes))
        for ax, summary in zip(axes, report.devices, strict=True):
            index = {(c.variant, c.runtime): c for c in report.cells_of(summary.device)}
            top = max([c.memory.peak_rss_bytes or 0 for c in index.values()] + [1]) / 2**20
            for k, runtime in enumerate(runtimes):
                for j, variant in enumerate(variants):
                    c = index.get((variant, runtime))
                    x = j - 0.4 + width * (2 * k + 0.5)
                    if c is None or c.memory.peak_rss_bytes is None:
                        ax.text(
                            x + width / 2,
                            top * 0.02,
                            "not run" if c is None else c.status.replace("_", " "),
                            rotation=90,
                            ha="center",
                            va="bottom",
                            fontsize=8,
                            color="#555555",
                        )
                        continue
                    peak, model = c.memory.peak_rss_bytes / 2**20, (c.memory.model_memory_bytes or 0) / 2**20
                    ax.bar(x, peak, width, color=colors[runtime], alpha=0.45, edgecolor=colors[runtime])
                    ax.bar(x + width, model, width, color=colors[runtime], edgecolor=colors[runtime])
            tilt = sum(len(_short(v, 16)) for v in variants) > 48
            ax.set_xticks(
                range(len(variants)),
                [_short(v, 16) for v in variants],
                rotation=30 if tilt else 0,
                ha="right" if tilt else "center",
            )
            ax.set_ylabel("MiB")
            ax.set_title(_short(summary.device, 40), loc="left", fontweight="bold")
            ax.grid(True, axis="y", alpha=0.3)
        from matplotlib.patches import Patch

        handles = []
        for rt, color in colors.items():
            handles += [
                Patch(facecolor=color, alpha=0.45, edgecolor=color, label=f"peak RSS · {_short(rt)}"),
                Patch(facecolor=color, edgecolor=color, label=f"model-attributable · {_short(rt)}"),
            ]
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4), frameon=False)
        return _to_svg(fig, "Peak RSS and model-attributable memory per variant and device")
