"""Who this agent runs on: a stable device id and a one-shot description of the hardware.

`collect_device_info` is called at start-up and whenever a client asks for the device description. It
is deliberately defensive: edge boxes differ wildly (a Raspberry Pi has no DMI table, an x86 server no
device tree, a Jetson may or may not ship nvidia-smi), so every probe that fails leaves its field empty
or 0 instead of raising. All file reads are made relative to a `root` directory so tests can describe a
fake machine with a few files in a temporary directory; the few subprocesses (nvidia-smi, and sysctl on
macOS) go through an injectable runner for the same reason.

Counts that the kernel exposes only through psutil (cores, memory, frequency) come from psutil and hence
always describe the real machine, whatever `root` is.

This package's public API is what `__all__` lists; the parts live in submodules:

* `identity` – the device id persisted in the workdir;
* `probes` – reading files below `root` and running commands, never raising;
* `cpu` – CPU model (with ARM core decoding), feature flags, frequencies;
* `board` – board model from Jetson's nv_tegra_release, the device tree, macOS sysctl or DMI;
* `gpus` – nvidia-smi GPUs and a Jetson's integrated GPU.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from agent.device.board import board_model
from agent.device.cpu import CPU_FEATURE_ALLOWLIST, cpu_frequencies_hz, cpu_model_and_features
from agent.device.gpus import gpus
from agent.device.identity import DEVICE_ID_FILENAME, load_or_create_device_id
from agent.device.probes import RunCommand, default_run_command
from agent.types import DeviceInfo, RuntimeInfo
from protos.version import CURRENT

__all__ = [
    "CPU_FEATURE_ALLOWLIST",
    "DEVICE_ID_FILENAME",
    "RunCommand",
    "collect_device_info",
    "default_run_command",
    "load_or_create_device_id",
]


def collect_device_info(
    workdir: Path,
    runtimes: Sequence[RuntimeInfo],
    agent_version: str,
    *,
    root: Path = Path("/"),
    run_command: RunCommand = default_run_command,
) -> DeviceInfo:
    """Describe this machine: identity, OS, CPU, memory, board, GPUs, and the given runtimes.

    `workdir` holds the device id (see load_or_create_device_id, whose OSError is the only exception this
    raises). Files are read below `root` ("/" in production, a fake tree in tests); psutil-backed values
    (cores, memory, frequencies when psutil knows them) always describe the real machine. `run_command`
    runs nvidia-smi (every OS; absent or failing means no discrete GPUs) and, on macOS only, sysctl.

    Every probe is defensive: an unreadable file or failing command leaves its field "" / 0 / (). Takes
    a few milliseconds on Linux, plus however long nvidia-smi takes where it exists (at most 5 s).
    """
    device_id = load_or_create_device_id(workdir)
    is_darwin = platform.system() == "Darwin"

    cpu_model, cpu_features = cpu_model_and_features(root, is_darwin, run_command)
    memory_total = _safe_int(lambda: psutil.virtual_memory().total)
    max_hz, current_hz = cpu_frequencies_hz(root)
    board, board_source = board_model(root, is_darwin, run_command)

    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = platform.node()

    return DeviceInfo(
        protocol_major=CURRENT.major,
        protocol_minor=CURRENT.minor,
        agent_version=agent_version,
        device_id=device_id,
        hostname=hostname,
        os_name=platform.system(),
        os_release=platform.release(),
        os_version=platform.version(),
        architecture=platform.machine(),
        python_version=platform.python_version(),
        cpu_model=cpu_model,
        cpu_physical_cores=_safe_int(lambda: psutil.cpu_count(logical=False)),
        cpu_logical_cores=_safe_int(lambda: psutil.cpu_count(logical=True)),
        cpu_frequency_max_hz=max_hz,
        cpu_frequency_current_hz=current_hz,
        cpu_features=cpu_features,
        memory_total_bytes=memory_total,
        board_model=board,
        board_model_source=board_source,
        gpus=gpus(root, run_command, memory_total),
        runtimes=tuple(runtimes),
        collected_at_ns=time.time_ns(),
    )


def _safe_int(probe: Callable[[], int | None]) -> int:
    try:
        value = probe()
    except Exception:
        return 0
    return value if value is not None and value > 0 else 0
