"""The thin shell around the SDKs: importing TensorRT, cuda-python and NVML lazily (only job and probe
child processes do), checking cuda-python's (error, value...) results, and naming the GPU an engine is for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.base import RuntimeUnsupported


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]


def import_tensorrt() -> Any:
    return importlib.import_module("tensorrt")


def import_cudart() -> Any:
    try:
        return importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6
    except ImportError:
        return importlib.import_module("cuda.cudart")  # older cuda-python 12.x


def import_nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")  # nvidia-ml-py
    except ImportError:
        return None


def is_tegra() -> bool:
    from agent.device.board import is_tegra as board_is_tegra

    return board_is_tegra(Path("/"))


def cuda_check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...); raise on an error, return the value (or None)."""
    err = result[0]
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        if name == "cudaErrorMemoryAllocation":
            raise MemoryError(f"GPU out of memory: CUDA {what} failed ({name})")
        raise RuntimeError(f"CUDA {what} failed: {name}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def gpu_identity(cudart: Any, index: int) -> tuple[GpuIdentity, Any]:
    """The GPU's name and compute capability (part of the engine cache key) and its CUDA properties."""
    count = int(cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if index >= count:
        raise RuntimeUnsupported(f"GPU {index} was asked for, but CUDA sees {count} GPU(s) (indices 0..{count - 1})")
    prop = cuda_check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw = prop.name
    name = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return GpuIdentity(name.split("\0", 1)[0].strip(), (int(prop.major), int(prop.minor))), prop
