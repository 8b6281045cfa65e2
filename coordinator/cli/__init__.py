"""`edgebench`: the coordinator's command line. Only wiring: every command imports its work lazily so that
`--help` is instant; expected errors print a message and exit with the codes in `cli/common.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli import analyze, compress, demo, fleet, report, run
from coordinator.cli.common import STATE

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Compress models and benchmark them across a fleet of edge devices.",
)
app.add_typer(fleet.app, name="fleet")
app.command("run")(run.run)
app.command("runs")(report.runs)
app.command("report")(report.report)
app.command("demo")(demo.demo)
app.command("compress")(compress.compress)
app.command("analyze")(analyze.analyze)


@app.callback()
def main_options(
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite store (default: $EDGEBENCH_HOME/edgebench.db or the user data directory)."),
    ] = None,
) -> None:
    STATE.db = db


def main() -> None:
    app(prog_name="edgebench")
