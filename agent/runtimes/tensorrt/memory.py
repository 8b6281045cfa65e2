"""GPU memory used by loading an engine: read before and after load, from NVML (this process's figure, else
the device's used-memory delta) or, on a Jetson whose integrated GPU NVML does not describe, from the
shared-memory counters (nvmap's per-process table, else NvMapMemUsed, else used RAM).

The parsing and the choice of figure are pure; `read_gpu_memory` is the one reading of the counters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.runtimes.tensorrt.gpu import import_nvml

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def host_pid() -> int:
    """This process's pid as NVML and nvmap know it. A job runs in its own PID namespace (agent/sandbox),
    where os.getpid() is a small number; the host's /proc, which the sandbox leaves mounted, names it."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.readlink("/proc/self"))
    return os.getpid()


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """NVML's PCI bus id format ('%x:%x:%x.0' is accepted; we write the long form)."""
    return f"{domain:08x}:{bus:02x}:{device:02x}.0"


def nvml_gpu_memory(
    pid: int, processes: Sequence[tuple[int, int | None]], used_before: int | None, used_after: int | None
) -> tuple[int | None, str]:
    """(bytes, method) from NVML readings after load: this process's own figure when NVML lists it (not in
    a PID namespace it cannot map), else the device's used-memory delta across load."""
    own = [used for p, used in processes if p == pid]
    if own and all(u is not None for u in own):
        return sum(u for u in own if u is not None), "nvml: this process's GPU memory after load"
    if used_before is not None and used_after is not None:
        return (
            max(0, used_after - used_before),
            "nvml: device memory used after load minus before (other processes on the GPU count too)",
        )
    return None, "not measured: NVML gave neither this process's figure nor the device's used memory"


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: bytes} (values in kB are converted; unit-less counts kept as they are)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields:
            continue
        try:
            value = int(fields[0])
        except ValueError:
            continue
        out[key.strip()] = value * 1024 if len(fields) > 1 and fields[1].lower() == "kb" else value
    return out


def nvmap_process_bytes(clients_text: str, pid: int) -> int | None:
    """This process's total from nvmap's client table (`.../nvmap/iovmm/clients`: CLIENT PROCESS PID SIZE
    rows, sizes like 123456K); None when the process is not listed or the table is unreadable."""
    total: int | None = None
    for row in clients_text.splitlines():
        if not row or row[0].isspace():
            continue
        cells = row.split()
        if len(cells) != 4 or not cells[2].isdigit() or int(cells[2]) != pid:
            continue
        match = re.fullmatch(r"(\d+)([a-zA-Z]?)[bB]?", cells[3])
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            continue
        total = (total or 0) + int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    return total


def jetson_gpu_memory(
    pid: int, before: Mapping[str, int], after: Mapping[str, int], clients_text: str | None
) -> tuple[int | None, str]:
    """(bytes, method) on a Jetson, whose GPU allocates from system RAM through nvmap: this process's nvmap
    total when the (root-only) client table is readable, else the NvMapMemUsed delta across load, else the
    used-RAM (MemTotal - MemAvailable) delta; the last two count the whole device."""
    if clients_text:
        own = nvmap_process_bytes(clients_text, pid)
        if own is not None:
            return own, "jetson nvmap clients: this process's GPU allocations after load"
    if "NvMapMemUsed" in before and "NvMapMemUsed" in after:
        delta = after["NvMapMemUsed"] - before["NvMapMemUsed"]
        return max(0, delta), "jetson /proc/meminfo NvMapMemUsed after load minus before (whole device)"
    keys = ("MemTotal", "MemAvailable")
    if all(k in before and k in after for k in keys):
        used_before = before["MemTotal"] - before["MemAvailable"]
        used_after = after["MemTotal"] - after["MemAvailable"]
        return max(0, used_after - used_before), "jetson shared RAM used after load minus before (whole device)"
    return None, "not measured: no nvmap counters in /proc/meminfo"


@dataclass
class MemoryReading:
    nvml_used: int | None = None
    nvml_processes: tuple[tuple[int, int | None], ...] = ()
    meminfo: dict[str, int] = dataclasses.field(default_factory=dict)
    nvmap_clients: str | None = None


def read_gpu_memory(tegra: bool, bus_id: str) -> MemoryReading:
    """One reading of the counters the memory figure is computed from; never raises."""
    reading = MemoryReading()
    if tegra:
        with contextlib.suppress(OSError):
            reading.meminfo = parse_meminfo(Path("/proc/meminfo").read_text())
        with contextlib.suppress(OSError):
            reading.nvmap_clients = Path("/sys/kernel/debug/nvmap/iovmm/clients").read_text()
        return reading
    nvml = import_nvml()
    if nvml is None:
        return reading
    try:
        nvml.nvmlInit()
    except Exception:
        return reading
    try:
        handle = nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        reading.nvml_used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        reading.nvml_processes = tuple(
            (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        )
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return reading


def gpu_memory_figure(tegra: bool, before: MemoryReading, after: MemoryReading) -> tuple[int | None, str]:
    """(bytes, how it was measured) for `details()`: `gpu_memory_bytes` and `gpu_memory_method`."""
    if tegra:
        return jetson_gpu_memory(host_pid(), before.meminfo, after.meminfo, after.nvmap_clients)
    if before.nvml_used is None and after.nvml_used is None and not after.nvml_processes:
        return None, "not measured: install nvidia-ml-py (pynvml) for GPU memory figures"
    return nvml_gpu_memory(host_pid(), after.nvml_processes, before.nvml_used, after.nvml_used)
