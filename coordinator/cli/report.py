"""`edgebench runs` and `edgebench report`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.common import ListFormat, fail, open_store

FORMATS = ("table", "md", "csv", "json", "html")


def runs(output: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table) -> None:
    """List runs, newest first, with job counts per status."""
    with open_store() as store:
        rows = store.runs()
    if output is ListFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no runs yet; start one with `edgebench run MODEL`")
        return
    from rich.console import Console
    from rich.table import Table

    from coordinator.safe_text import text

    table = Table()
    table.add_column("run id", no_wrap=True)
    for column in ("name", "started", "finished", "jobs"):
        table.add_column(column)
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at_ns"] / 1e9))
        finished = "yes" if r["finished_at_ns"] else "no (--resume)"
        jobs = ", ".join(f"{n} {status}" for status, n in sorted(r["jobs"].items()))
        table.add_row(*(text(cell) for cell in (r["run_id"], r["name"], started, finished, jobs)))
    Console().print(table, markup=False, highlight=False, emoji=False)


def report(
    run_id: Annotated[str, typer.Argument(help="Run ID, or 'latest'.")] = "latest",
    output: Annotated[str, typer.Option("--format", help="table, md, csv, json or html.")] = "table",
    out: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Largest top-1 drop (fraction) a recommended variant may have.")
    ] = 0.01,
) -> None:
    """Cross-device report of one run: per device x variant x runtime, comparisons and recommendations."""
    from coordinator.report import build_report, render

    if output not in FORMATS:
        fail(f"unknown format {output!r}; choose one of {', '.join(FORMATS)}")
    with open_store() as store:
        chosen = store.latest_run_id() if run_id == "latest" else run_id
        if chosen is None:
            fail("no runs yet; start one with `edgebench run MODEL`")
            return
        data = store.load_run(chosen)
    text = render(build_report(data, max_accuracy_drop=max_accuracy_drop), output)
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output} report of run {chosen} to {out}")
