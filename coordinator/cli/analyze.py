"""`edgebench analyze MODEL`: parameters, MACs per layer, weight bytes, peak activations and per-runtime
support notes of an ONNX model, without running it (see `coordinator.analyze` for the method)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coordinator.cli.common import ListFormat, fail

if TYPE_CHECKING:
    from coordinator.analyze import Analysis

#: Model kinds the coordinator knows but cannot analyse yet: they must be exported to ONNX first.
NOT_YET_ANALYSABLE = frozenset({".pt2", ".pt", ".pth", ".py"})
_LEVEL_STYLE = {"unsupported": "red", "limited": "yellow", "unknown": "magenta", "info": "dim"}


def analyze(
    model: Annotated[Path, typer.Argument(help="An ONNX model file (.onnx).")],
    batch: Annotated[int, typer.Option(min=1, help="Batch size for symbolic batch dims.")] = 1,
    output: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
) -> None:
    """Parameters, MACs/FLOPs per layer, weight bytes, peak activation estimate and runtime support notes.

    Exit 2 with a message (no traceback) for a missing file, a file that is not an ONNX model, or a
    PyTorch / Python factory model (export it to ONNX first).
    """
    from coordinator.analyze import AnalyzeError, analyze_onnx

    if model.suffix.lower() in NOT_YET_ANALYSABLE:
        fail(f"{model}: analyze reads ONNX only; export to ONNX first (edgebench compress ...)")
    if not model.is_file():
        fail(f"{model} does not exist")
    try:
        result = analyze_onnx(model, batch=batch)
    except AnalyzeError as exc:
        fail(str(exc))
        return
    if output is ListFormat.json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_table(result)


def _count(n: int | None) -> str:
    """Human-readable count: 1234567 -> '1.23 M'; None -> 'n/a'."""
    if n is None:
        return "n/a"
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for size, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _print_table(a: Analysis) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, highlight=False, emoji=False)
    opset = a.opset_imports.get("", a.opset_imports.get("ai.onnx", 0))
    table = Table(title=f"{Path(a.path).name}: batch {a.batch}, opset {opset}, IR {a.ir_version}")
    for column in ("layer", "op", "output shape"):
        table.add_column(column, overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for layer in a.layers:
        op = layer.op_type if not layer.domain else f"{layer.domain}:{layer.op_type}"
        shape = "?" if layer.output_shape is None else "x".join(str(d) for d in layer.output_shape)
        macs = _count(layer.macs) if layer.macs is not None else f"n/a ({layer.note})"
        table.add_row(layer.name, op, shape, _count(layer.params), macs)
    table.add_section()
    table.add_row("total", "", "", _count(a.total_params), _count(a.total_macs))
    console.print(table, markup=False)

    lines = [
        f"total params: {a.total_params}",
        f"total MACs: {a.total_macs if a.total_macs is not None else 'n/a'}"
        f"  FLOPs: {a.total_flops if a.total_flops is not None else 'n/a'}  ({a.macs_note})",
        "weight bytes: " + (", ".join(f"{k} {_bytes(v)}" for k, v in a.weight_bytes.items()) or "none"),
        f"peak activations: {_bytes(a.peak_activation_bytes)} ({a.peak_note})",
        "ops: " + ", ".join(f"{op} x{n}" for op, n in a.op_histogram.items()),
    ]
    for line in lines:
        console.print(line, markup=False)
    for note in a.notes:
        console.print(f"note: {note}", markup=False)
    from coordinator.analyze import TARGETS

    console.print("support:", markup=False)
    for target, notes in a.support.items():
        console.print(f"  {TARGETS.get(target, target)}", markup=False)
        for n in notes:
            count = f" (x{n.count})" if n.count else ""
            style = _LEVEL_STYLE.get(n.level, "")
            console.print(f"    {n.level}: {n.subject}{count}: {n.reason}", style=style, markup=False)
