"""`edgebench-agent`: serve benchmark jobs, or print this device's info.

Exit codes: 0 ok; 2 bad settings or usage (message, no traceback); 3 could not bind the address.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
EXIT_SETTINGS = 2
EXIT_BIND = 3


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class SandboxMode(str, Enum):
    auto = "auto"
    required = "required"
    off = "off"


def _fail(message: str, code: int) -> None:
    typer.echo(f"edgebench-agent: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 picks a free one (default 50551).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Artifacts, results and the device id live here.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the shared token clients must send.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) to serve TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA (PEM) that client certificates must chain to (mutual TLS).")
    ] = None,
    reflection: Annotated[
        bool | None, typer.Option("--reflection/--no-reflection", help="Serve gRPC reflection.")
    ] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="Allow a non-loopback address without auth.")
    ] = None,
    job_memory_mb: Annotated[
        int | None, typer.Option(help="Memory limit of a job that sets none (default and 0: 75% of RAM).")
    ] = None,
    max_job_memory_mb: Annotated[
        int | None, typer.Option(help="Ceiling on any job's memory limit (default and 0: 90% of RAM).")
    ] = None,
    job_timeout_s: Annotated[
        float | None, typer.Option(help="Wall-time limit of a job that sets none (default 900).")
    ] = None,
    max_job_timeout_s: Annotated[
        float | None, typer.Option(help="Ceiling on any job's wall-time limit (default 3600).")
    ] = None,
    sandbox: Annotated[
        SandboxMode | None,
        typer.Option(help="Job sandbox: auto (what the OS allows), required (refuse what it cannot contain), off."),
    ] = None,
    cgroup_root: Annotated[
        Path | None, typer.Option(help="Delegated cgroup v2 folder for job cgroups (default: the agent's own).")
    ] = None,
    fault_injection: Annotated[
        bool | None,
        typer.Option("--fault-injection", help="Tests of the sandbox only: jobs may act hostile.", hidden=True),
    ] = None,
    max_artifact_bytes: Annotated[int | None, typer.Option(help="Largest artifact accepted (default 4 GiB).")] = None,
    max_cache_bytes: Annotated[
        int | None, typer.Option(help="Artifact cache cap; LRU eviction (default 20 GiB).")
    ] = None,
    cpu_affinity: Annotated[
        str | None, typer.Option(help="CPUs job processes may use, e.g. '0' or '0-1,3' (Linux; default all).")
    ] = None,
    prestart: Annotated[
        bool | None,
        typer.Option("--prestart/--no-prestart", help="Keep the next job's process started in advance (default on)."),
    ] = None,
    max_workers: Annotated[int | None, typer.Option(help="gRPC worker threads (default 32).")] = None,
    max_streams_per_client: Annotated[
        int | None,
        typer.Option(help="Open RunBenchmark/UploadArtifact streams per client host (default 8)."),
    ] = None,
    max_streams_total: Annotated[
        int | None,
        typer.Option(help="Open streams in total, below --max-workers - 4 (default: half of --max-workers)."),
    ] = None,
    max_health_watchers_per_client: Annotated[
        int | None, typer.Option(help="Open health Watch streams per client host (default 8).")
    ] = None,
    max_health_watchers: Annotated[
        int | None, typer.Option(help="Open health Watch streams in total (default 64).")
    ] = None,
    max_request_bytes: Annotated[
        int | None, typer.Option(help="Largest request message accepted (default 2 MiB).")
    ] = None,
    max_job_bytes: Annotated[int | None, typer.Option(help="Largest job spec accepted (default 64 KiB).")] = None,
    max_queued_jobs: Annotated[
        int | None, typer.Option(help="Jobs waiting behind the running one; more are refused (default 64).")
    ] = None,
    max_job_processes: Annotated[
        int | None, typer.Option(help="Processes one job may start; more kill the job (default 256).")
    ] = None,
    max_event_line_bytes: Annotated[
        int | None, typer.Option(help="Longest event line a job process may write (default 24 MiB).")
    ] = None,
    max_kept_results: Annotated[
        int | None, typer.Option(help="Finished results kept for fetching by job id (default 1000).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings (overridden by env and flags).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve benchmark jobs over gRPC until SIGTERM or SIGINT."""
    from agent.settings import SettingsError, load_settings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            workdir=workdir,
            token_file=token_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            reflection=reflection,
            insecure=insecure,
            max_artifact_bytes=max_artifact_bytes,
            max_cache_bytes=max_cache_bytes,
            cpu_affinity=cpu_affinity,
            prestart_job_process=prestart,
            job_memory_bytes=None if job_memory_mb is None else job_memory_mb * 2**20,
            max_job_memory_bytes=None if max_job_memory_mb is None else max_job_memory_mb * 2**20,
            job_wall_time_s=job_timeout_s,
            max_job_wall_time_s=max_job_timeout_s,
            sandbox=None if sandbox is None else sandbox.value,
            cgroup_root=cgroup_root,
            fault_injection=fault_injection,
            max_workers=max_workers,
            max_streams_per_client=max_streams_per_client,
            max_streams_total=max_streams_total,
            max_health_watchers_per_client=max_health_watchers_per_client,
            max_health_watchers=max_health_watchers,
            max_request_bytes=max_request_bytes,
            max_job_bytes=max_job_bytes,
            max_queued_jobs=max_queued_jobs,
            max_job_processes=max_job_processes,
            max_event_line_bytes=max_event_line_bytes,
            max_kept_results=max_kept_results,
        )
        settings.read_token()
    except (SettingsError, OSError) as exc:
        _fail(str(exc), EXIT_SETTINGS)
    if not settings.authenticated:
        where = "on loopback only" if settings.is_loopback else f"on {settings.host} WITH --insecure"
        typer.echo(
            f"WARNING: no authentication ({where}): anyone who can reach the port can run code here.",
            err=True,
        )
    if settings.plaintext_token:
        typer.echo(
            f"WARNING: PLAINTEXT TOKEN: the token would cross the network unencrypted on {settings.host} (no "
            "--tls-cert): anyone on the path can read it and run code here. Give --tls-cert/--tls-key, or listen "
            "on loopback (127.0.0.1 or ::1) behind an encrypted tunnel.",
            err=True,
        )
    if settings.fault_injection:
        typer.echo("WARNING: --fault-injection: jobs may run hostile test behaviours. Tests only.", err=True)
    if settings.token_file_exposed():
        typer.echo(f"WARNING: {settings.token_file} is readable by other users; chmod 600 it.", err=True)
    from agent.sandbox.policy import SandboxError
    from agent.server import build

    try:
        running = build(settings)
    except SandboxError as exc:
        _fail(str(exc), EXIT_SETTINGS)
    except (OSError, RuntimeError) as exc:
        _fail(str(exc), EXIT_BIND)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see what a stuck agent is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheme = "tls" if settings.tls_cert else "plaintext"
    auth = "mTLS" if settings.tls_client_ca else ("token" if settings.token_file else "none")
    # The first stdout line is machine-readable: tools wait for it to learn the port.
    print(
        f"edgebench-agent listening on {settings.address(running.port)} ({scheme}, auth: {auth}, "
        f"workdir: {settings.workdir})",
        flush=True,
    )
    # Wait in slices: a signal the kernel delivers to one of gRPC's threads only runs its Python handler
    # when the main thread next executes bytecode, which an unbounded wait would never do.
    while not stop.wait(0.2):
        pass
    typer.echo("edgebench-agent: shutting down (cancelling running jobs)", err=True)
    running.stop()


@app.command()
def info(
    workdir: Annotated[Path | None, typer.Option(help="Work directory holding the device id.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="table or json.")] = OutputFormat.table,
) -> None:
    """Print this device's info and which runtimes it can run."""
    import agent
    from agent.device import collect_device_info
    from agent.jobspec import to_jsonable
    from agent.runtimes.probe import probe_all
    from agent.settings import default_workdir

    wd = workdir or default_workdir()
    wd.mkdir(parents=True, exist_ok=True)
    device = collect_device_info(wd, probe_all(), agent.__version__)
    if output is OutputFormat.json:
        typer.echo(json.dumps(to_jsonable(device), indent=2))
        return
    rows = [
        ("device id", device.device_id),
        ("host", device.hostname),
        ("os", f"{device.os_name} {device.os_release}"),
        ("arch", device.architecture),
        (
            "cpu",
            f"{device.cpu_model} ({device.cpu_physical_cores} cores / {device.cpu_logical_cores} threads)",
        ),
        ("memory", f"{device.memory_total_bytes / 2**30:.1f} GiB"),
        ("board", device.board_model or "-"),
        ("gpus", ", ".join(g.name for g in device.gpus) or "-"),
        ("protocol", f"{device.protocol_major}.{device.protocol_minor}"),
        ("agent", device.agent_version),
    ]
    for key, value in rows:
        typer.echo(f"{key:<10} {value}")
    typer.echo("runtimes:")
    for rt in device.runtimes:
        state = (
            f"yes  {rt.version}  {', '.join(rt.execution_providers)}"
            if rt.available
            else f"no   {rt.unavailable_reason}"
        )
        typer.echo(f"  {rt.name:<12} {state}")


def main() -> None:
    app(prog_name="edgebench-agent")


if __name__ == "__main__":
    main()
