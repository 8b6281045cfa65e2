"""Registered devices: connecting with their credentials and probing them concurrently."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from coordinator.dispatch.client import AgentClient, Credentials
from coordinator.dispatch.wire import offline_probe, probe_from_pb
from coordinator.types import Device, DeviceProbe

PROBE_TIMEOUT_S = 5.0


class DeviceConfigError(ValueError):
    """A device's registered settings cannot be used (e.g. its token file is gone)."""


def _read(path: str, what: str, device: Device) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DeviceConfigError(f"device {device.name}: cannot read its {what} {path}: {exc.strerror}") from None


def credentials(device: Device) -> Credentials:
    token = _read(device.token_file, "token file", device)
    return Credentials(
        token=token.decode().strip() if token else None,
        tls_ca=_read(device.tls_ca, "TLS CA", device),
        tls_cert=_read(device.tls_cert, "TLS certificate", device),
        tls_key=_read(device.tls_key, "TLS key", device),
        tls_server_name=device.tls_server_name or None,
    )


def connect(device: Device, timeout_s: float = 30.0) -> AgentClient:
    return AgentClient(device.address, credentials(device), timeout_s=timeout_s)


def describe_rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    hint = {
        grpc.StatusCode.UNAVAILABLE: "is the agent running and the address right?",
        grpc.StatusCode.UNAUTHENTICATED: "check the device's --token-file (or TLS client certificate)",
        grpc.StatusCode.DEADLINE_EXCEEDED: "the agent did not answer in time",
    }.get(code, "")
    name = code.name if code is not None else "error"
    if details and "failed to connect to all addresses" in details:
        details = details.rsplit(": ", 1)[-1]  # gRPC's chain of causes ends with the one that matters
    return f"{name}: {details}" + (f" ({hint})" if hint else "")


def probe(device: Device, timeout_s: float = PROBE_TIMEOUT_S) -> DeviceProbe:
    """Ask one device what it is; an unreachable or misconfigured device is an offline probe, never raised."""
    try:
        with connect(device, timeout_s) as client:
            info = client.device_info()
    except DeviceConfigError as exc:
        return offline_probe(device.name, device.address, str(exc))
    except grpc.RpcError as exc:
        return offline_probe(device.name, device.address, describe_rpc_error(exc))
    return probe_from_pb(device.name, device.address, info)


def probe_all(devices: Sequence[Device], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, DeviceProbe]:
    if not devices:
        return {}
    with ThreadPoolExecutor(max_workers=min(64, len(devices))) as pool:
        return dict(zip((d.name for d in devices), pool.map(lambda d: probe(d, timeout_s), devices), strict=True))
