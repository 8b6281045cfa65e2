"""`edgebench run`: benchmark a model on the fleet (or `--resume` an interrupted run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coordinator.cli.common import EXIT_JOBS_FAILED, EXIT_NO_DEVICE, expected_errors, fail, open_store

if TYPE_CHECKING:
    from rich.console import Console

    from coordinator.types import JobRecord, RunData


def run(
    model: Annotated[
        str | None,
        typer.Argument(help="A .onnx file, a .pt2 program, package.module:factory (with --weights), or 'builtin'."),
    ] = None,
    dataset: Annotated[Path | None, typer.Option(help=".npz with 'inputs' [, 'labels', 'reference_outputs'].")] = None,
    devices: Annotated[str, typer.Option(help="'all' or a comma-separated list of device names.")] = "all",
    runtimes: Annotated[str, typer.Option(help="Comma-separated runtimes (default: every one a device offers).")] = "",
    variants: Annotated[
        str, typer.Option(help="Comma-separated recipes, e.g. fp32,prune:0.5,channels:0.5+int8,int8,fp16 (README).")
    ] = "fp32",
    weights: Annotated[Path | None, typer.Option(help="State dict for a package.module:factory model.")] = None,
    input_shape: Annotated[str, typer.Option(help="Input shape of a PyTorch model, e.g. 1,3,224,224.")] = "",
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads (0 = the runtime's default).")] = 0,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up iterations.")] = 10,
    min_duration: Annotated[float, typer.Option(min=0.0, help="Minimum steady-state seconds.")] = 1.0,
    min_iterations: Annotated[int, typer.Option(min=1, help="Minimum steady-state iterations.")] = 100,
    max_duration: Annotated[float, typer.Option(min=0.001, help="Maximum steady-state seconds.")] = 30.0,
    tolerance: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Stop once the median's 95% CI is within this fraction (0 = off).")
    ] = 0.0,
    timeout: Annotated[float, typer.Option(min=1.0, help="Wall-time limit per job on the agent (s).")] = 600.0,
    memory_mb: Annotated[int, typer.Option(min=0, help="Memory limit per job (MiB, 0 = agent default).")] = 0,
    name: Annotated[str, typer.Option(help="A name for the run.")] = "",
    device_concurrency: Annotated[
        int, typer.Option(min=0, help="Devices measured at once (0 = all; 1 when agents share a host).")
    ] = 0,
    resume: Annotated[str, typer.Option(help="Run ID: run only its jobs without a final result.")] = "",
    option: Annotated[
        list[str] | None,
        typer.Option(
            help="Runtime setting, repeatable: RUNTIME.KEY=VALUE for one runtime or KEY=VALUE for all, e.g. "
            "openvino.device=GPU, onnxruntime.execution_provider=CoreMLExecutionProvider, litert.xnnpack=0, "
            "openvino.performance_hint=throughput, tensorrt.workspace_mb=2048 (README, 'Runtimes')."
        ),
    ] = None,
    formats: Annotated[
        str,
        typer.Option(
            help="Formats to convert variants to: 'auto' (what the devices' runtimes take), or a list of "
            "openvino_ir,tflite,coreml,torch_export (ONNX is always built)."
        ),
    ] = "auto",
) -> None:
    """Plan jobs (variant x device x runtime each device can run), upload what agents lack, run devices
    concurrently (one job at a time per device), store each result on arrival, then summarise."""
    from rich.console import Console

    from coordinator.cli.progress import LiveProgress
    from coordinator.dispatch.dispatcher import Dispatcher
    from coordinator.runs import resume_run, start_run
    from coordinator.safe_text import clean
    from coordinator.types import MeasurementSettings

    if not resume and model is None:
        fail("give a MODEL to benchmark, or --resume RUN_ID")
    if max_duration < min_duration:
        fail(f"--max-duration ({max_duration}) must be at least --min-duration ({min_duration})")
    console = Console(stderr=False)
    pairs = []
    for raw in option or []:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            fail(f"--option {raw!r}: expected RUNTIME.KEY=VALUE or KEY=VALUE, e.g. openvino.device=GPU")
        pairs.append((key.strip(), value.strip()))
    settings = MeasurementSettings(
        batch=batch,
        threads=threads,
        warmup_iterations=warmup,
        min_iterations=min_iterations,
        min_duration_s=min_duration,
        max_duration_s=max_duration,
        target_relative_ci=tolerance,
        wall_time_s=timeout,
        memory_mb=memory_mb,
        runtime_options=tuple(pairs),
    )
    with open_store() as store:
        try:
            if resume:
                pending = [j for j in store.load_run(resume).jobs if not j.status.final]
                totals = _totals(pending)
                with LiveProgress(totals, console) as progress:
                    result = resume_run(
                        store,
                        resume,
                        dispatcher=Dispatcher(store, on_event=progress, device_concurrency=device_concurrency),
                    )
            else:
                assert model is not None
                names = [d.name for d in store.devices()] if devices == "all" else devices.split(",")
                with LiveProgress(dict.fromkeys(names, 0), console) as progress:
                    result = start_run(
                        store,
                        model=model,
                        dataset=dataset,
                        devices=devices,
                        runtimes=[r for r in runtimes.split(",") if r],
                        variants=[variants],
                        formats=None if formats == "auto" else [f for f in formats.split(",") if f],
                        weights=weights,
                        input_shape=input_shape,
                        log=lambda m: console.print(clean(m), markup=False, highlight=False, emoji=False),
                        settings=settings,
                        name=name,
                        dispatcher=Dispatcher(store, on_event=progress, device_concurrency=device_concurrency),
                    )
        except expected_errors() as exc:
            fail(str(exc))
            return
    summary_table(console, result)
    not_ok = [j for j in result.jobs if j.status.value not in ("succeeded", "skipped")]
    if result.jobs and all(j.status.value in ("unreachable", "incompatible") for j in result.jobs):
        raise typer.Exit(EXIT_NO_DEVICE)
    if not_ok:
        raise typer.Exit(EXIT_JOBS_FAILED)


def _totals(jobs: list[JobRecord]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for j in jobs:
        totals[j.device] = totals.get(j.device, 0) + 1
    return totals


def summary_table(console: Console, run: RunData) -> None:
    """The run's jobs as a table. Agent strings (messages, runtime names) are rich `Text`, never markup, and
    pass through `safe_text` first: a message holding "[/x]", a link or an escape sequence shows literally."""
    from rich.table import Table

    from coordinator.safe_text import text
    from protos.stats import summarize

    table = Table(title=text(f"run {run.spec.run_id} ({run.spec.name})"))
    for column in ("device", "variant", "runtime", "status", "median", "n", "message"):
        table.add_column(column, overflow="fold")
    for j in run.jobs:
        median, n = "", ""
        if j.result is not None and j.result.latencies_ns:
            s = summarize(j.result.latencies_ns)
            median, n = f"{s.median / 1e6:.3f} ms", str(s.n)
        colour = {"succeeded": "green", "skipped": "dim"}.get(j.status.value, "red")
        table.add_row(
            text(j.device),
            text(j.variant),
            text(j.runtime),
            text(j.status.value, colour),
            text(median),
            text(n),
            text(j.message, limit=160),
        )
    console.print(table)
    unfinished = sum(not j.status.final for j in run.jobs)
    console.print(
        text(f"run id: {run.spec.run_id}   report: edgebench report {run.spec.run_id} --format html -o report.html")
    )
    if unfinished:
        console.print(text(f"{unfinished} job(s) without a final result: edgebench run --resume {run.spec.run_id}"))
