"""`edgebench demo`: the main job on an embedded default."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.common import open_store


def demo(
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Where the reports and model go.")] = Path(
        "edgebench-demo"
    ),
    min_duration: Annotated[float, typer.Option(min=0.1, help="Minimum steady-state seconds per job.")] = 1.0,
) -> None:
    """Start two local agents (1 CPU and all CPUs), build the built-in digits CNN's variants with every
    compression technique, benchmark them on both agents, write the HTML and Markdown reports, print where
    they are, and stop the agents."""
    from rich.console import Console

    from coordinator.cli.progress import LiveProgress
    from coordinator.cli.run import summary_table
    from coordinator.demo import DEMO_AGENTS, DEMO_VARIANTS, run_demo

    console = Console()
    started = time.monotonic()
    with (
        open_store() as store,
        LiveProgress(dict.fromkeys((n for n, _ in DEMO_AGENTS), len(DEMO_VARIANTS.split(","))), console) as progress,
    ):
        result = run_demo(
            store,
            output_dir,
            min_duration_s=min_duration,
            on_event=progress,
            log=lambda m: console.print(m, markup=False, highlight=False),
        )
    summary_table(console, result.run)
    console.print(f"HTML report:     {result.html.resolve()}", markup=False, highlight=False)
    console.print(f"Markdown report: {result.markdown.resolve()}", markup=False, highlight=False)
    console.print(f"demo finished in {time.monotonic() - started:.0f} s", markup=False)
