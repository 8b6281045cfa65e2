"""Can TensorRT run here? `gather_probe_facts` looks at the machine (never raises); `probe_problems` turns
the facts into every reason it cannot, most fundamental first (pure, so it is tested without a GPU)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass

from agent.runtimes.tensorrt.gpu import cuda_check, import_cudart, import_nvml, import_tensorrt, is_tegra

INSTALL_HINT = (
    "install edgebench[tensorrt] on an x86 machine with an NVIDIA GPU; on a Jetson, TensorRT's Python "
    "bindings come with JetPack (python3-libnvinfer)"
)


@dataclass(frozen=True)
class ProbeFacts:
    """What the probe found on this machine; `probe_problems` turns it into reasons."""

    tensorrt_version: str | None  # None: no `tensorrt` module
    tensorrt_error: str = ""  # the module exists but failed to import
    cuda_python: bool = False
    is_tegra: bool = False
    dev_nvidia0: bool = False
    nvml_error: str = ""  # "" = NVML initialised, or not checked (no nvidia-ml-py)
    cuda_device_count: int | None = None  # None: not asked (no cuda-python, or nothing to ask)
    cuda_error: str = ""


def probe_problems(facts: ProbeFacts) -> list[str]:
    """Every reason TensorRT cannot run here, most fundamental first; empty when it can."""
    problems: list[str] = []
    if facts.tensorrt_version is None:
        problems.append(f"no `tensorrt` Python module ({INSTALL_HINT})")
    elif facts.tensorrt_error:
        problems.append(f"the `tensorrt` module failed to import: {facts.tensorrt_error}")
    if not facts.is_tegra and not facts.dev_nvidia0:
        problems.append("no NVIDIA GPU visible: /dev/nvidia0 does not exist (no GPU, or its driver is not loaded)")
    elif facts.nvml_error and not facts.is_tegra:
        problems.append(f"no NVIDIA GPU usable: NVML failed to initialise ({facts.nvml_error}); check the driver")
    if not facts.cuda_python:
        problems.append("cuda-python is missing (pip install cuda-python, or edgebench[tensorrt])")
    elif facts.cuda_error:
        problems.append(f"CUDA is not usable: {facts.cuda_error}")
    elif facts.cuda_device_count == 0:
        problems.append("CUDA sees no GPU (check CUDA_VISIBLE_DEVICES and the driver)")
    return problems


def gather_probe_facts() -> ProbeFacts:
    """Look at the machine; never raises."""
    version: str | None = None
    error = ""
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            version = str(import_tensorrt().__version__)
        except Exception as exc:
            version, error = "", f"{type(exc).__name__}: {exc}"
    tegra = False
    with contextlib.suppress(Exception):
        tegra = is_tegra()
    dev = os.path.exists("/dev/nvidia0")
    nvml_error = ""
    nvml = import_nvml()
    if nvml is not None and dev and not tegra:
        try:
            nvml.nvmlInit()
            nvml.nvmlShutdown()
        except Exception as exc:
            nvml_error = f"{type(exc).__name__}: {exc}"
    cuda_python = True
    count: int | None = None
    cuda_error = ""
    try:
        cudart = import_cudart()
    except Exception:
        cuda_python = False
    else:
        if dev or tegra:
            try:
                count = int(cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
            except Exception as exc:
                cuda_error = str(exc)
    return ProbeFacts(version, error, cuda_python, tegra, dev, nvml_error, count, cuda_error)
