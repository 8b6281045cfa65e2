"""The GPUs: discrete NVIDIA GPUs through nvidia-smi, and a Jetson's integrated GPU.

Contract: `gpus` lists what nvidia-smi reports (every OS; absent or failing means none). On a Jetson
(see `board.is_tegra`), whose GPU shares system RAM, a GPU without a memory size gets `memory_total`, and
when nvidia-smi reports nothing a single integrated GPU is described from the device tree and L4T
release. Unknown fields are "" / 0; nothing here raises.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from agent.device.board import device_tree_model, is_tegra, l4t_release
from agent.device.probes import MIB, RunCommand, run_safely
from agent.types import GpuInfo

__all__ = ["gpus"]

_NVIDIA_SMI_TIMEOUT_S = 5.0


def gpus(root: Path, run_command: RunCommand, memory_total: int) -> tuple[GpuInfo, ...]:
    """Every GPU found; `memory_total` (system RAM, in bytes) sizes a Jetson's shared-memory GPU."""
    found = _nvidia_smi_gpus(run_command)
    if not is_tegra(root):
        return tuple(found)
    # A Jetson's GPU shares system RAM, and its nvidia-smi (JetPack 6+) reports no memory size.
    if found:
        return tuple(dataclasses.replace(g, memory_total_bytes=g.memory_total_bytes or memory_total) for g in found)
    dt_model, _ = device_tree_model(root)
    l4t = l4t_release(root)
    return (
        GpuInfo(
            name=f"{dt_model or 'NVIDIA Jetson'} integrated GPU",
            vendor="NVIDIA",
            memory_total_bytes=memory_total,
            driver_version=f"L4T {l4t}" if l4t else "",
        ),
    )


def _nvidia_smi_gpus(run_command: RunCommand) -> list[GpuInfo]:
    out = run_safely(
        run_command,
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version,uuid",
            "--format=csv,noheader,nounits",
        ],
        _NVIDIA_SMI_TIMEOUT_S,
    )
    if not out:
        return []
    found: list[GpuInfo] = []
    for row in csv.reader(out.splitlines(), skipinitialspace=True):
        # Anything but a 4-field row with a name is a message ("No devices were found"), not a GPU.
        if len(row) != 4 or not _clean_smi_field(row[0]):
            continue
        name, memory, driver, gpu_uuid = row
        found.append(
            GpuInfo(
                name=_clean_smi_field(name),
                vendor="NVIDIA",
                memory_total_bytes=_parse_mib(memory.strip()),
                driver_version=_clean_smi_field(driver),
                uuid=_clean_smi_field(gpu_uuid),
            )
        )
    return found


def _parse_mib(value: str) -> int:
    try:
        return int(float(value)) * MIB
    except ValueError:
        # "[N/A]" (Jetson's nvidia-smi) or "[Not Supported]".
        return 0


def _clean_smi_field(value: str) -> str:
    value = value.strip()
    return "" if value.startswith("[") and value.endswith("]") else value
