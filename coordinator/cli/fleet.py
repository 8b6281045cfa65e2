"""`edgebench fleet`: register, list (probing every device concurrently), show and remove devices."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.common import ListFormat, fail, open_store

app = typer.Typer(help="Register and inspect the devices (agents) of the fleet.", no_args_is_help=True)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ADDRESS_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}")


def _existing(path: Path | None, what: str) -> str:
    if path is None:
        return ""
    if not path.is_file():
        fail(f"{what} {path} does not exist")
    return str(path.resolve())


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A short name for the device (letters, digits, . _ -).")],
    address: Annotated[str, typer.Argument(help="HOST:PORT the agent listens on.")],
    token_file: Annotated[Path | None, typer.Option(help="File holding the agent's token.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA (PEM) that signed the agent's certificate.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Client key (PEM) for mutual TLS.")] = None,
    tls_server_name: Annotated[str, typer.Option(help="Name to check the agent's certificate against.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a device of the same name.")] = False,
) -> None:
    """Register an agent. Credentials are stored as paths, never copied into the database."""
    from coordinator.types import Device

    if not NAME_RE.fullmatch(name):
        fail(f"device name {name!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not ADDRESS_RE.fullmatch(address):
        fail(f"address {address!r} must be HOST:PORT (e.g. 192.168.1.20:50551 or jetson.local:50551)")
    if bool(tls_cert) != bool(tls_key):
        fail("--tls-cert and --tls-key go together")
    device = Device(
        name=name,
        address=address,
        token_file=_existing(token_file, "token file"),
        tls_ca=_existing(tls_ca, "TLS CA"),
        tls_cert=_existing(tls_cert, "TLS certificate"),
        tls_key=_existing(tls_key, "TLS key"),
        tls_server_name=tls_server_name,
    )
    from coordinator.store.sqlite import StoreError

    with open_store() as store:
        try:
            store.add_device(device, replace=replace)
        except StoreError as exc:
            fail(f"{exc} (or use --replace)")
    typer.echo(f"added {name} at {address}; check it with `edgebench fleet show {name}`")


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Device name.")]) -> None:
    """Forget a device (its past results stay in the store)."""
    with open_store() as store:
        if not store.remove_device(name):
            fail(f"no device named {name!r}; see `edgebench fleet list`")
    typer.echo(f"removed {name}")


@app.command("list")
def list_(
    output: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each device.")] = 5.0,
) -> None:
    """Probe every device concurrently: online, versions, compatibility, summary, runtimes."""
    from coordinator.fleet import probe_all

    with open_store() as store:
        devices = store.devices()
    probes = probe_all(devices, timeout)
    if output is ListFormat.json:
        typer.echo(json.dumps([_probe_json(p) for p in probes.values()], indent=2))
        return
    if not devices:
        typer.echo("no devices registered; add one with `edgebench fleet add NAME HOST:PORT --token-file F`")
        return
    from rich.console import Console
    from rich.table import Table

    from coordinator.safe_text import text

    # Everything in a probe but the name and address came from the agent: rich Text, never markup.
    table = Table(title=f"fleet ({len(devices)} devices)")
    for column in ("device", "address", "state", "agent / protocol", "device summary", "runtimes"):
        table.add_column(column, overflow="fold")
    for p in probes.values():
        if not p.online:
            table.add_row(text(p.name), text(p.address), text("offline", "red"), "", text(p.error), "")
            continue
        state = text("online", "green") if p.compatible else text("incompatible", "yellow")
        summary = f"{p.cpu_model}, {p.cpu_cores} CPUs, {p.memory_bytes / 2**30:.1f} GiB, {p.architecture}"
        if p.board:
            summary += f", {p.board}"
        if p.gpus:
            summary += f", GPU: {', '.join(p.gpus)}"
        runtimes = ", ".join(f"{r.name} {r.version}" for r in p.runtimes if r.available)
        agent = text(f"{p.agent_version} / {p.protocol}")
        if not p.compatible:
            agent.append("\n")
            agent.append_text(text(p.compatibility))
        table.add_row(text(p.name), text(p.address), state, agent, text(summary), text(runtimes))
    Console(soft_wrap=False).print(table, markup=False, highlight=False, emoji=False)


def _probe_json(p: object) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(p)  # type: ignore[call-overload,no-any-return]


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Device name.")],
    output: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
) -> None:
    """Everything a device reports: hardware, runtimes (with why unavailable ones are), compatibility, and
    what contains a job there (the agent's sandbox: each protection, how it is enforced or why it is not)."""
    from coordinator.fleet import probe
    from coordinator.safe_text import one_line

    with open_store() as store:
        device = store.device(name)
    if device is None:
        fail(f"no device named {name!r}; see `edgebench fleet list`")
        return
    found = probe(device)
    if output is ListFormat.json:
        typer.echo(json.dumps(_probe_json(found), indent=2))
        return
    rows = [
        ("address", device.address),
        ("auth", "token" if device.token_file else "none"),
        ("tls", "mutual" if device.tls_cert else ("server" if device.tls_ca else "off")),
    ]
    if not found.online:
        rows.append(("state", f"offline: {found.error}"))
    else:
        rows += [
            ("state", "online" if found.compatible else "incompatible"),
            ("protocol", f"{found.protocol} ({found.compatibility})"),
            ("agent", found.agent_version),
            ("device id", found.device_id),
            ("host", found.hostname),
            ("os", found.os),
            ("arch", found.architecture),
            ("cpu", f"{found.cpu_model} ({found.cpu_cores} CPUs)"),
            ("memory", f"{found.memory_bytes / 2**30:.1f} GiB"),
            ("board", found.board or "-"),
            ("gpus", ", ".join(found.gpus) or "-"),
        ]
    # Agent strings: one line each, control and bidi characters made visible.
    for key, value in rows:
        typer.echo(f"{key:<10} {one_line(value)}")
    if found.online:
        typer.echo("runtimes:")
        for r in found.runtimes:
            detail = (
                f"{r.version}  formats: {', '.join(r.formats)}  providers: {', '.join(r.providers)}"
                if r.available
                else f"unavailable: {r.reason}"
            )
            typer.echo(one_line(f"  {r.name:<12} {detail}"))
        typer.echo(f"job sandbox ({one_line(found.sandbox_mode) or 'not reported: agent predates it'}):")
        for c in found.sandbox:
            typer.echo(one_line(f"  {c.name:<14} {'yes' if c.enforced else 'NO '}  {c.detail}"))
