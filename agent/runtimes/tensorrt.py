"""TensorRT backend: engines built on the device from ONNX, cached, and run on a CUDA stream.

Written against the TensorRT 10 Python API (`tensorrt`) with host<->device copies through cuda-python
(`cuda.bindings.runtime`, or `cuda.cudart` in older cuda-python); the agent never needs torch or pycuda.

Phases, and why they are where they are:

* `prepare` (not timed as load): the ONNX external-data check, then the engine. Engines are cached in a
  folder (option `engine_cache_dir`, else `tensorrt-engines` beside the job folders in the agent's work
  directory) under a key that is a pure function of the TensorRT version, the GPU's name and compute
  capability, the build options (precision flags, workspace, optimisation level, profile request) and the
  sha256 of the model (and of its external-data files). A missing engine is built in a helper process
  (`python -m agent.runtimes.tensorrt --build ...`), so the builder's host memory (often far more than
  inference needs) never counts in the job process's peak RSS, and a hit and a miss report the same
  memory. The build time and whether this job built the engine are recorded in the result's details.
* `load` (timed): deserialise the cached engine, create the execution context (which allocates the
  activation memory), allocate device buffers and pinned host buffers for the largest profile shapes,
  bind tensor addresses, synchronise the device. GPU memory is read before and after: from NVML (this
  process's figure, else the device's used-memory delta) or, on a Jetson whose integrated GPU NVML does
  not describe, from the shared-memory counters (nvmap's per-process table, else NvMapMemUsed, else
  used RAM). The figure is in `details()` as `gpu_memory_bytes` with the method beside it.
* `run` (the timed call): copy each input to its pinned buffer and to the device, `execute_async_v3`
  on the stream, copy the outputs back and synchronise the stream, so the clock stops only when the
  results are on the host (what an application sees; trtexec's "H2D + GPU compute + D2H").

Precision (`RuntimeConfig.precision_hint`): FP32 (also the default) builds a true FP32 engine (TF32
cleared; option `tf32=true` allows it); FP16 sets the FP16 builder flag; INT8 allows INT8 kernels for
models quantized with Q/DQ nodes (explicit quantization: no calibrator; a model without Q/DQ is refused).
TensorRT 11 removed the weakly typed precision flags: there every network is strongly typed, FP16 must
come from an FP16 model, and INT8 from Q/DQ nodes (option `strongly_typed=true` asks for that on 10).

Options: `engine_cache_dir`, `workspace_mb`, `builder_optimization_level` (0-5), `batch` (the profile's
optimum batch, default 1), `max_batch` (default max(batch, 32)), `input_shapes` (`name:1x3x224x224,...`:
the optimum shape of inputs with dynamic axes other than the batch), `tf32`, `strongly_typed`.
`RuntimeConfig.device` picks the GPU ("", "GPU", "cuda:1", "1").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import mmap
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, InputMismatch, ModelLoadError, RuntimeUnsupported, unavailable
from agent.runtimes.onnx_guard import check_external_data, external_locations
from agent.types import ModelFormat, PrecisionHint, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "tensorrt"
FORMATS = (ModelFormat.ONNX,)
CACHE_DIRNAME = "tensorrt-engines"
DEFAULT_MAX_BATCH = 32
#: Bumped when the way engines are built changes, so old cached engines are not reused.
BUILD_RECIPE_VERSION = 1
INSTALL_HINT = (
    "install edgebench[tensorrt] on an x86 machine with an NVIDIA GPU; on a Jetson, TensorRT's Python "
    "bindings come with JetPack (python3-libnvinfer)"
)
_BUILD_EXIT_LOAD_ERROR = 3
_BUILD_EXIT_UNSUPPORTED = 4
_ERROR_PREFIX = "edgebench-error: "
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

Shape = tuple[int, ...]


# ============================================================================== pure logic


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


@dataclass(frozen=True)
class PrecisionPlan:
    """Builder flags to set and clear, whether the network is created strongly typed, and whether the model
    must carry Q/DQ nodes (INT8 is explicit quantization only: nothing is calibrated on the device)."""

    label: str
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    requires_qdq: bool = False


def precision_plan(
    hint: PrecisionHint, *, builder_flags: frozenset[str], strongly_typed: bool = False, tf32: bool = False
) -> PrecisionPlan:
    """Map a precision hint to TensorRT builder flags (`builder_flags`: the names `trt.BuilderFlag` has).

    Without an FP16 flag (TensorRT 11+) every network is strongly typed. Raises RuntimeUnsupported for a
    precision that cannot be requested as a flag there."""
    weak_typing = "FP16" in builder_flags
    strong = strongly_typed or not weak_typing
    # TensorRT enables TF32 by default; an FP32 figure should be FP32 unless the job asks for TF32.
    clear = ("TF32",) if "TF32" in builder_flags and not tf32 else ()
    suffix = "+tf32" if tf32 else ""
    if hint in (PrecisionHint.UNSPECIFIED, PrecisionHint.FP32):
        return PrecisionPlan(f"fp32{suffix}", (), clear, strong)
    if hint is PrecisionHint.INT8:
        if strong:
            return PrecisionPlan(f"int8 (Q/DQ, strongly typed){suffix}", (), clear, True, requires_qdq=True)
        return PrecisionPlan(f"int8 (Q/DQ, explicit quantization){suffix}", ("INT8",), clear, False, requires_qdq=True)
    flag = {PrecisionHint.FP16: "FP16", PrecisionHint.BF16: "BF16"}[hint]
    if strong:
        why = "this TensorRT has no weakly typed precision flags" if not weak_typing else "strongly_typed=true"
        raise RuntimeUnsupported(
            f"precision {hint.value} cannot be requested from a strongly typed TensorRT network ({why}): there "
            f"the precision comes from the model's own types: send a variant converted to {hint.value.upper()} "
            "(e.g. `edgebench compress --variants fp16`) and leave the precision FP32 or unspecified"
        )
    if flag not in builder_flags:
        raise RuntimeUnsupported(f"this TensorRT has no {flag} builder flag; use FP32, FP16 or INT8")
    return PrecisionPlan(f"{hint.value}{suffix}", (flag,), clear, False)


@dataclass(frozen=True)
class ProfileRequest:
    """The optimisation profile asked for: the batch range and the optimum shape of named inputs."""

    opt_batch: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    shapes: tuple[tuple[str, Shape], ...] = ()


def parse_input_shapes(text: str) -> tuple[tuple[str, Shape], ...]:
    """'input:1x3x224x224,mask:1x128' -> (('input', (1, 3, 224, 224)), ('mask', (1, 128))), sorted by name."""
    found: dict[str, Shape] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, dims = part.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise RuntimeUnsupported(
                f"input_shapes entry {part!r} must look like name:1x3x224x224 (positive sizes, x-separated)"
            )
        found[name] = shape
    return tuple(sorted(found.items()))


def _int_option(config: RuntimeConfig, key: str, default: int, low: int, high: int | None = None) -> int:
    raw = config.option(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RuntimeUnsupported(f"tensorrt option {key}={raw!r} must be an integer {bound}")
    return value


def _bool_option(config: RuntimeConfig, key: str) -> bool:
    raw = config.option(key, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise RuntimeUnsupported(f"tensorrt option {key}={raw!r} must be true or false")


def profile_request(config: RuntimeConfig) -> ProfileRequest:
    opt = _int_option(config, "batch", 1, 1)
    high = _int_option(config, "max_batch", max(opt, DEFAULT_MAX_BATCH), 1)
    if high < opt:
        raise RuntimeUnsupported(f"tensorrt option max_batch={high} is below batch={opt}; raise max_batch")
    return ProfileRequest(opt, high, parse_input_shapes(config.option("input_shapes", "")))


def profile_shapes(
    inputs: Sequence[tuple[str, Shape]], request: ProfileRequest
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input that needs a profile (one with a dynamic axis, or named in the
    request); static inputs are left out. Axis 0 is the batch axis: min 1, opt `opt_batch`, max `max_batch`.
    Another dynamic axis needs its size in `request.shapes`. Raises RuntimeUnsupported saying what to set."""
    names = {name for name, _ in inputs}
    unknown = sorted(set(dict(request.shapes)) - names)
    if unknown:
        raise RuntimeUnsupported(
            f"input_shapes names {', '.join(unknown)}, which the model does not have; its inputs: "
            f"{', '.join(sorted(names))}"
        )
    wanted = dict(request.shapes)
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs:
        dynamic = [axis for axis, d in enumerate(dims) if d < 0]
        given = wanted.get(name)
        if not dynamic and given is None:
            continue
        if given is not None:
            if len(given) != len(dims):
                raise RuntimeUnsupported(
                    f"input_shapes gives {name!r} {len(given)} dimensions; "
                    f"the model declares {len(dims)} ({_fmt(dims)})"
                )
            fixed = [f"axis {a} is {d}" for a, (d, g) in enumerate(zip(dims, given, strict=True)) if d >= 0 and d != g]
            if fixed:
                raise RuntimeUnsupported(
                    f"input_shapes {name}:{_fmt(given)} disagrees with the model, where {'; '.join(fixed)}"
                )
            opt = given
        else:
            others = [a for a in dynamic if a != 0]
            if others:
                raise RuntimeUnsupported(
                    f"input {name!r} ({_fmt(dims)}) has dynamic axes {others} besides the batch axis; give its "
                    f"optimum shape with the runtime option input_shapes={name}:{_fmt(_example(dims, request))}"
                )
            opt = (request.opt_batch, *dims[1:])
        if 0 in dynamic:
            low: Shape = (1, *opt[1:])
            high: Shape = (max(request.max_batch, opt[0]), *opt[1:])
        else:
            low = high = opt
        out[name] = (low, opt, high)
    return out


def _example(dims: Shape, request: ProfileRequest) -> Shape:
    return tuple(request.opt_batch if a == 0 else (d if d >= 0 else 1) for a, d in enumerate(dims))


def _fmt(shape: Sequence[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in shape) or "scalar"


@dataclass(frozen=True)
class BuildOptions:
    precision: PrecisionPlan
    workspace_bytes: int  # 0: TensorRT's default (the device's memory)
    optimization_level: int  # -1: TensorRT's default
    profile: ProfileRequest

    def describe(self) -> dict[str, str]:
        return {
            "precision": self.precision.label,
            "builder_flags_set": ",".join(self.precision.set_flags) or "none",
            "builder_flags_cleared": ",".join(self.precision.clear_flags) or "none",
            "strongly_typed": str(self.precision.strongly_typed).lower(),
            "workspace_bytes": str(self.workspace_bytes) if self.workspace_bytes else "default",
            "builder_optimization_level": str(self.optimization_level) if self.optimization_level >= 0 else "default",
        }


def build_options(config: RuntimeConfig, builder_flags: frozenset[str]) -> BuildOptions:
    """Everything that shapes the engine, from the job's runtime config (pure; raises RuntimeUnsupported)."""
    plan = precision_plan(
        config.precision_hint,
        builder_flags=builder_flags,
        strongly_typed=_bool_option(config, "strongly_typed"),
        tf32=_bool_option(config, "tf32"),
    )
    workspace_mb = _int_option(config, "workspace_mb", 0, 0)
    level = _int_option(config, "builder_optimization_level", -1, 0, 5)
    return BuildOptions(plan, workspace_mb * 2**20, level, profile_request(config))


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]


def engine_cache_key(trt_version: str, gpu: GpuIdentity, options: BuildOptions, model_sha256: str) -> str:
    """The cache key: sha256 of a canonical JSON of everything an engine depends on. Pure.

    The profile enters as the request (batch range and named shapes), which with the model's hash
    determines the profile shapes exactly."""
    material = {
        "recipe": BUILD_RECIPE_VERSION,
        "tensorrt": trt_version,
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "set": sorted(options.precision.set_flags),
        "clear": sorted(options.precision.clear_flags),
        "strongly_typed": options.precision.strongly_typed,
        "requires_qdq": options.precision.requires_qdq,
        "workspace_bytes": options.workspace_bytes,
        "optimization_level": options.optimization_level,
        "profile": [
            options.profile.opt_batch,
            options.profile.max_batch,
            [[n, list(s)] for n, s in options.profile.shapes],
        ],
        "model": model_sha256,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_device_index(device: str) -> int:
    """'' / 'GPU' / 'cuda' -> 0; 'cuda:1' / 'GPU:1' / '1' -> 1."""
    text = device.strip().lower()
    if text in ("", "gpu", "cuda"):
        return 0
    match = re.fullmatch(r"(?:(?:gpu|cuda):)?(\d+)", text)
    if not match:
        raise RuntimeUnsupported(f"device {device!r} is not a GPU index; use '', 'GPU', 'cuda:N' or 'N'")
    return int(match.group(1))


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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


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


@dataclass(frozen=True)
class ParserErrorInfo:
    desc: str
    code: str = ""
    node: int = -1
    node_name: str = ""
    operator: str = ""


def format_parser_errors(errors: Sequence[ParserErrorInfo], limit: int = 5) -> str:
    """One message for the ONNX parser's errors, naming the node and operator of each."""
    if not errors:
        return "TensorRT's ONNX parser rejected the model without saying why (see the diagnostics)"
    parts = []
    for e in errors[:limit]:
        where = []
        if e.operator:
            where.append(f"operator {e.operator}")
        if e.node_name:
            where.append(f"node {e.node_name!r}")
        elif e.node >= 0:
            where.append(f"node #{e.node}")
        prefix = f"{', '.join(where)}: " if where else ""
        parts.append(f"{prefix}{e.desc.strip()}" + (f" [{e.code}]" if e.code else ""))
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return (
        "TensorRT's ONNX parser rejected the model: "
        + "; ".join(parts)
        + more
        + ". Check the operators against onnx-tensorrt's support matrix (`edgebench analyze`)"
    )


def model_digest(model_path: Path) -> str:
    """sha256 of the model file and of every external-data file it names (name and content). Streams the
    files: the job process's peak RSS must not grow by a copy of the model before its load is measured."""
    digest = hashlib.sha256()
    with model_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                has_external = mm.find(b"location") >= 0  # every external reference carries this key
        except ValueError:  # empty file
            has_external = False
    locations: list[str] = []
    if has_external:
        try:
            locations = sorted({loc for _, loc in external_locations(model_path.read_bytes())})
        except Exception:  # not parseable here: the parser will say so; the file's own hash still keys it
            locations = []
    for location in locations:
        digest.update(b"\0" + location.encode())
        path = model_path.parent / location
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir(model_path: Path) -> Path:
    """Beside the job folders: the model sits in <workdir>/jobs/<job>/, so this is <workdir>/jobs/tensorrt-engines."""
    return model_path.parent.parent / CACHE_DIRNAME


def cache_dir_for(model_path: Path, config: RuntimeConfig) -> Path:
    raw = config.option("engine_cache_dir", "")
    if not raw:
        return default_cache_dir(model_path)
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise RuntimeUnsupported(f"engine_cache_dir {raw!r} must be an absolute path on the agent")
    return path


# ============================================================================== thin I/O shell


def _import_tensorrt() -> Any:
    return importlib.import_module("tensorrt")


def _import_cudart() -> Any:
    try:
        return importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6
    except ImportError:
        return importlib.import_module("cuda.cudart")  # older cuda-python 12.x


def _import_nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")  # nvidia-ml-py
    except ImportError:
        return None


def _is_tegra() -> bool:
    from agent.device.board import is_tegra

    return is_tegra(Path("/"))


def _cuda_check(result: Any, what: str) -> Any:
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


def gather_probe_facts() -> ProbeFacts:
    """Look at the machine; never raises."""
    version: str | None = None
    error = ""
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            version = str(_import_tensorrt().__version__)
        except Exception as exc:
            version, error = "", f"{type(exc).__name__}: {exc}"
    tegra = False
    with contextlib.suppress(Exception):
        tegra = _is_tegra()
    dev = os.path.exists("/dev/nvidia0")
    nvml_error = ""
    nvml = _import_nvml()
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
        cudart = _import_cudart()
    except Exception:
        cuda_python = False
    else:
        if dev or tegra:
            try:
                count = int(_cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
            except Exception as exc:
                cuda_error = str(exc)
    return ProbeFacts(version, error, cuda_python, tegra, dev, nvml_error, count, cuda_error)


def _gpu_identity(cudart: Any, index: int) -> tuple[GpuIdentity, Any]:
    count = int(_cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    if index >= count:
        raise RuntimeUnsupported(f"GPU {index} was asked for, but CUDA sees {count} GPU(s) (indices 0..{count - 1})")
    prop = _cuda_check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw = prop.name
    name = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return GpuIdentity(name.split("\0", 1)[0].strip(), (int(prop.major), int(prop.minor))), prop


@dataclass
class _MemoryReading:
    nvml_used: int | None = None
    nvml_processes: tuple[tuple[int, int | None], ...] = ()
    meminfo: dict[str, int] = dataclasses.field(default_factory=dict)
    nvmap_clients: str | None = None


def _read_gpu_memory(tegra: bool, bus_id: str) -> _MemoryReading:
    """One reading of the counters the memory figure is computed from; never raises."""
    reading = _MemoryReading()
    if tegra:
        with contextlib.suppress(OSError):
            reading.meminfo = parse_meminfo(Path("/proc/meminfo").read_text())
        with contextlib.suppress(OSError):
            reading.nvmap_clients = Path("/sys/kernel/debug/nvmap/iovmm/clients").read_text()
        return reading
    nvml = _import_nvml()
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


def _gpu_memory_figure(tegra: bool, before: _MemoryReading, after: _MemoryReading) -> tuple[int | None, str]:
    if tegra:
        return jetson_gpu_memory(os.getpid(), before.meminfo, after.meminfo, after.nvmap_clients)
    if before.nvml_used is None and after.nvml_used is None and not after.nvml_processes:
        return None, "not measured: install nvidia-ml-py (pynvml) for GPU memory figures"
    return nvml_gpu_memory(os.getpid(), after.nvml_processes, before.nvml_used, after.nvml_used)


# ------------------------------------------------------------------------------ engine build (helper process)


def _has_qdq(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def build_engine(model_path: Path, options: BuildOptions, device_index: int) -> tuple[bytes, dict[str, str]]:
    """Parse the ONNX model and build a serialized engine (runs in the helper process). Raises ModelLoadError
    (the model) or RuntimeUnsupported (the request)."""
    trt = _import_tensorrt()
    cudart = _import_cudart()
    _cuda_check(cudart.cudaSetDevice(device_index), "cudaSetDevice")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if options.precision.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):  # resolves external data beside the model
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(
                ParserErrorInfo(
                    desc=str(e.desc()),
                    code=str(getattr(e.code(), "name", e.code())),
                    node=int(e.node()),
                    node_name=str(e.node_name()) if hasattr(e, "node_name") else "",
                    operator=str(e.node_operator()) if hasattr(e, "node_operator") else "",
                )
            )
        raise ModelLoadError(format_parser_errors(errors))
    qdq = _has_qdq(trt, network)
    if options.precision.requires_qdq and not qdq:
        raise RuntimeUnsupported(
            "INT8 with TensorRT needs a model quantized with QuantizeLinear/DequantizeLinear (Q/DQ) nodes; this "
            "model has none and edgebench does not calibrate on the device. Send an INT8 Q/DQ variant "
            "(symmetric, signed INT8: TensorRT refuses zero points other than 0)"
        )
    config = builder.create_builder_config()
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level >= 0:
        config.builder_optimization_level = options.optimization_level
    for flag in options.precision.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in options.precision.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs.append((str(tensor.name), tuple(int(d) for d in tensor.shape)))
    shapes = profile_shapes(inputs, options.profile)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ModelLoadError(
            "TensorRT could not build an engine for this model (its log is in the diagnostics); try another "
            "precision, a larger workspace_mb, or check the operators with `edgebench analyze`"
        )
    info = {
        "engine_build_s": f"{seconds:.3f}",
        "has_qdq": str(qdq).lower(),
        "profile": "; ".join(f"{n}: {_fmt(a)} / {_fmt(b)} / {_fmt(c)}" for n, (a, b, c) in shapes.items()) or "static",
    }
    return bytes(serialized), info


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _options_to_json(options: BuildOptions) -> dict[str, Any]:
    return {
        "label": options.precision.label,
        "set": list(options.precision.set_flags),
        "clear": list(options.precision.clear_flags),
        "strongly_typed": options.precision.strongly_typed,
        "requires_qdq": options.precision.requires_qdq,
        "workspace_bytes": options.workspace_bytes,
        "optimization_level": options.optimization_level,
        "opt_batch": options.profile.opt_batch,
        "max_batch": options.profile.max_batch,
        "shapes": [[n, list(s)] for n, s in options.profile.shapes],
    }


def _options_from_json(data: Mapping[str, Any]) -> BuildOptions:
    plan = PrecisionPlan(
        str(data["label"]),
        tuple(data["set"]),
        tuple(data["clear"]),
        bool(data["strongly_typed"]),
        bool(data["requires_qdq"]),
    )
    profile = ProfileRequest(
        int(data["opt_batch"]),
        int(data["max_batch"]),
        tuple((str(n), tuple(int(d) for d in s)) for n, s in data["shapes"]),
    )
    return BuildOptions(plan, int(data["workspace_bytes"]), int(data["optimization_level"]), profile)


def _build_main(request: Mapping[str, Any]) -> int:
    """The helper process: build, write engine + sidecar atomically, exit 0; errors as exit codes."""
    engine_path = Path(request["engine"])
    try:
        data, info = build_engine(
            Path(request["model"]), _options_from_json(request["options"]), int(request["device"])
        )
    except ModelLoadError as exc:
        print(_ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr)
        return _BUILD_EXIT_LOAD_ERROR
    except RuntimeUnsupported as exc:
        print(_ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr)
        return _BUILD_EXIT_UNSUPPORTED
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(engine_path, data)
    sidecar = {
        **request["sidecar"],
        **info,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
    }
    _write_atomic(engine_path.with_suffix(".json"), json.dumps(sidecar, sort_keys=True).encode())
    return 0


def _run_build_helper(request: Mapping[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.runtimes.tensorrt", "--build", json.dumps(request)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    # The builder's own log goes to the job's log (the result's diagnostics).
    sys.stderr.write((proc.stdout + proc.stderr)[-20000:])
    if proc.returncode == 0:
        return
    lines = [ln[len(_ERROR_PREFIX) :] for ln in proc.stderr.splitlines() if ln.startswith(_ERROR_PREFIX)]
    message = (
        lines[-1]
        if lines
        else f"the engine build process exited with status {proc.returncode}: "
        + (proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output")
    )
    if proc.returncode == _BUILD_EXIT_UNSUPPORTED:
        raise RuntimeUnsupported(message)
    raise ModelLoadError(message)


# ------------------------------------------------------------------------------ session


@dataclass
class _Binding:
    name: str
    dtype: Any  # numpy dtype
    shape: Shape  # current shape
    nbytes: int  # bytes of the current shape
    capacity: int  # bytes allocated (largest profile shape)
    device: int
    host_ptr: int
    host: Any  # numpy uint8 view of the pinned buffer


@dataclass(frozen=True)
class _Prepared:
    engine_path: Path
    built_here: bool
    sidecar: dict[str, Any]
    gpu: GpuIdentity
    device_index: int
    options: BuildOptions


class TensorRtSession:
    def __init__(
        self,
        trt: Any,
        cudart: Any,
        np: Any,
        engine: Any,
        context: Any,
        stream: Any,
        inputs: list[_Binding],
        outputs: list[_Binding],
        infos: tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]],
        details: dict[str, str],
        provider: str,
        runtime: Any,
    ) -> None:
        self._trt, self._cudart, self._np = trt, cudart, np
        # The runtime (and its logger) must outlive the engine deserialised from it.
        self._runtime = runtime
        self._engine, self._context, self._stream = engine, context, stream
        self._stream_handle = int(stream)
        self._in, self._out = inputs, outputs
        self._inputs, self._outputs = infos
        self._details = details
        self._provider = provider
        self._h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return self._outputs

    def _reshape(self, binding: _Binding, shape: Shape) -> None:
        if not self._context.set_input_shape(binding.name, shape):
            raise InputMismatch(
                f"input {binding.name!r} of shape {_fmt(shape)} is outside the engine's optimisation profile "
                f"({self._details.get('profile', '?')}); set the runtime options batch/max_batch (or input_shapes) "
                "to cover it so the engine is built for it"
            )
        binding.shape = shape

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        np, cudart, stream = self._np, self._cudart, self._stream
        reshaped = False
        for b in self._in:
            arr = np.ascontiguousarray(feeds[b.name], dtype=b.dtype)
            if arr.shape != b.shape:
                self._reshape(b, tuple(arr.shape))
                reshaped = True
            n = arr.nbytes
            if n > b.capacity:
                raise InputMismatch(f"input {b.name!r} needs {n} bytes; the engine's buffers hold {b.capacity}")
            b.host[:n] = arr.reshape(-1).view(np.uint8)
            err = cudart.cudaMemcpyAsync(b.device, b.host_ptr, n, self._h2d, stream)[0]
            if int(err):
                raise RuntimeError(f"CUDA host-to-device copy of {b.name!r} failed: {err}")
        if reshaped:
            for o in self._out:
                o.shape = tuple(int(d) for d in self._context.get_tensor_shape(o.name))
                o.nbytes = int(np.prod(o.shape, dtype=np.int64)) * o.dtype.itemsize
        if not self._context.execute_async_v3(self._stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the diagnostics for TensorRT's log)")
        for o in self._out:
            err = cudart.cudaMemcpyAsync(o.host_ptr, o.device, o.nbytes, self._d2h, stream)[0]
            if int(err):
                raise RuntimeError(f"CUDA device-to-host copy of {o.name!r} failed: {err}")
        err = cudart.cudaStreamSynchronize(stream)[0]
        if int(err):
            raise RuntimeError(f"CUDA stream synchronisation failed: {err}")
        return [o.host[: o.nbytes].view(o.dtype).reshape(o.shape).copy() for o in self._out]

    def execution_providers(self) -> Sequence[str]:
        return (self._provider,)

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        cudart = self._cudart
        if cudart is None:
            return
        with contextlib.suppress(Exception):
            cudart.cudaStreamSynchronize(self._stream)
        self._context = None
        self._engine = None
        self._runtime = None
        for b in (*self._in, *self._out):
            with contextlib.suppress(Exception):
                cudart.cudaFree(b.device)
            with contextlib.suppress(Exception):
                cudart.cudaFreeHost(b.host_ptr)
        with contextlib.suppress(Exception):
            cudart.cudaStreamDestroy(self._stream)
        self._in, self._out = [], []
        self._cudart = None


def _pinned(cudart: Any, np: Any, nbytes: int) -> tuple[int, Any]:
    import ctypes

    ptr = int(_cuda_check(cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
    view = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (max(nbytes, 1),))
    return ptr, view


# ------------------------------------------------------------------------------ backend


class TensorRtBackend:
    name = NAME
    formats = FORMATS

    def __init__(self) -> None:
        self._prepared: dict[Path, _Prepared] = {}

    def probe(self) -> RuntimeInfo:
        try:
            facts = gather_probe_facts()
        except Exception as exc:  # the probe never raises
            return unavailable(NAME, FORMATS, f"probe failed: {type(exc).__name__}: {exc}")
        problems = probe_problems(facts)
        version = facts.tensorrt_version or ""
        if problems:
            return unavailable(NAME, FORMATS, "; ".join(problems), version)
        return RuntimeInfo(
            name=NAME,
            available=True,
            version=version,
            execution_providers=("jetson-igpu" if facts.is_tegra else "cuda",),
            model_formats=FORMATS,
        )

    def _require_available(self) -> ProbeFacts:
        facts = gather_probe_facts()
        problems = probe_problems(facts)
        if problems:
            raise RuntimeUnsupported(f"runtime 'tensorrt' is unavailable on this device: {'; '.join(problems)}")
        return facts

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        facts = self._require_available()
        check_external_data(model_path)
        trt = _import_tensorrt()
        cudart = _import_cudart()
        options = build_options(config, frozenset(trt.BuilderFlag.__members__))
        index = parse_device_index(config.device)
        gpu, _ = _gpu_identity(cudart, index)
        digest = model_digest(model_path)
        key = engine_cache_key(str(facts.tensorrt_version), gpu, options, digest)
        cache = cache_dir_for(model_path, config)
        engine_path = cache / f"{key}.engine"
        sidecar = _read_sidecar(engine_path)
        built_here = False
        if sidecar is None:
            cache.mkdir(parents=True, exist_ok=True)
            meta = {
                "key": key,
                "tensorrt": facts.tensorrt_version,
                "gpu": gpu.name,
                "compute_capability": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                "model_sha256": digest,
                "options": _options_to_json(options),
                "built_at_ns": time.time_ns(),
            }
            _run_build_helper(
                {
                    "model": str(model_path),
                    "engine": str(engine_path),
                    "device": index,
                    "options": _options_to_json(options),
                    "sidecar": meta,
                }
            )
            sidecar = _read_sidecar(engine_path)
            if sidecar is None:
                raise ModelLoadError(f"the engine built for this job is missing or corrupt in {cache}")
            built_here = True
        self._prepared[model_path] = _Prepared(engine_path, built_here, sidecar, gpu, index, options)

    def load(self, model_path: Path, config: RuntimeConfig) -> TensorRtSession:
        prepared = self._prepared.pop(model_path, None)
        if prepared is None:
            self.prepare(model_path, config)
            prepared = self._prepared.pop(model_path)
        import numpy as np

        trt = _import_tensorrt()
        cudart = _import_cudart()
        tegra = _is_tegra()
        _, prop = _gpu_identity(cudart, prepared.device_index)
        bus = pci_bus_id(int(prop.pciDomainID), int(prop.pciBusID), int(prop.pciDeviceID))
        before = _read_gpu_memory(tegra, bus)
        _cuda_check(cudart.cudaSetDevice(prepared.device_index), "cudaSetDevice")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(prepared.engine_path.read_bytes())
        if engine is None:
            raise ModelLoadError(
                f"TensorRT could not deserialise the cached engine {prepared.engine_path.name}; delete it from "
                f"{prepared.engine_path.parent} and run again to rebuild it"
            )
        context = engine.create_execution_context()
        if context is None:
            raise ModelLoadError("TensorRT could not create an execution context (out of GPU memory?)")
        stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        declared = {n: tuple(int(d) for d in engine.get_tensor_shape(n)) for n in names}
        # Size every buffer for the profile's largest shapes, then settle on the optimum shapes.
        for n in names:
            if is_input[n] and -1 in declared[n]:
                context.set_input_shape(n, tuple(engine.get_tensor_profile_shape(n, 0)[2]))
        largest = {n: tuple(int(d) for d in context.get_tensor_shape(n)) for n in names}
        dynamic_out = [n for n in names if not is_input[n] and -1 in largest[n]]
        if dynamic_out:
            raise RuntimeUnsupported(
                f"outputs {', '.join(dynamic_out)} have data-dependent shapes, which this backend does not "
                "support yet (it would need an output allocator)"
            )
        for n in names:
            if is_input[n] and -1 in declared[n]:
                context.set_input_shape(n, tuple(engine.get_tensor_profile_shape(n, 0)[1]))
        bindings: dict[str, _Binding] = {}
        for n in names:
            capacity = int(np.prod(largest[n], dtype=np.int64)) * dtypes[n].itemsize
            device = int(_cuda_check(cudart.cudaMalloc(max(capacity, 1)), "cudaMalloc"))
            host_ptr, host = _pinned(cudart, np, capacity)
            current = tuple(int(d) for d in context.get_tensor_shape(n))
            nbytes = int(np.prod(current, dtype=np.int64)) * dtypes[n].itemsize
            bindings[n] = _Binding(n, dtypes[n], current, nbytes, capacity, device, host_ptr, host)
            if not context.set_tensor_address(n, device):
                raise ModelLoadError(f"TensorRT refused the device address of tensor {n!r}")
        _cuda_check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        after = _read_gpu_memory(tegra, bus)
        gpu_bytes, method = _gpu_memory_figure(tegra, before, after)

        def info(n: str) -> TensorInfo:
            return TensorInfo(n, declared[n], str(dtypes[n]))

        infos = (tuple(info(n) for n in names if is_input[n]), tuple(info(n) for n in names if not is_input[n]))
        sidecar = prepared.sidecar
        details = {
            **prepared.options.describe(),
            "tensorrt_version": str(trt.__version__),
            "gpu": prepared.gpu.name,
            "compute_capability": "{}.{}".format(*prepared.gpu.compute_capability),
            "cuda_device": str(prepared.device_index),
            "profile": str(sidecar.get("profile", "?")),
            "engine_cache": "built in this job" if prepared.built_here else "hit",
            "engine_build_s": str(sidecar.get("engine_build_s", "?")),
            "engine_bytes": str(sidecar.get("engine_bytes", "?")),
            "engine_key": prepared.engine_path.stem[:16],
            "gpu_memory_bytes": "" if gpu_bytes is None else str(gpu_bytes),
            "gpu_memory_method": method,
            "timed_call": "pinned H2D copies + execute_async_v3 + D2H copies + stream synchronize",
        }
        provider = f"{'jetson-igpu' if tegra else 'cuda'}:{prepared.device_index} {prepared.gpu.name}"
        return TensorRtSession(
            trt,
            cudart,
            np,
            engine,
            context,
            stream,
            [bindings[n] for n in names if is_input[n]],
            [bindings[n] for n in names if not is_input[n]],
            infos,
            details,
            provider,
            (runtime, logger),
        )


def _read_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The cached engine's metadata when the engine is present and its sha256 matches; a corrupt or
    half-written entry is removed (and rebuilt by the caller)."""
    sidecar_path = engine_path.with_suffix(".json")
    try:
        meta = json.loads(sidecar_path.read_text())
        expected = str(meta["engine_sha256"])
        digest = hashlib.sha256()
        with engine_path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, ValueError, KeyError, TypeError):
        meta, expected, digest = None, "", None
    if meta is not None and digest is not None and digest.hexdigest() == expected and isinstance(meta, dict):
        return meta
    for stale in (engine_path, sidecar_path):
        with contextlib.suppress(OSError):
            stale.unlink()
    return None


BACKEND = TensorRtBackend()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--build":
        print("usage: python -m agent.runtimes.tensorrt --build '<json request>' (run by the agent)", file=sys.stderr)
        return 2
    try:
        request = json.loads(args[1])
    except ValueError as exc:
        print(f"{_ERROR_PREFIX}bad build request: {exc}", file=sys.stderr)
        return 2
    try:
        return _build_main(request)
    except ImportError as exc:
        print(f"{_ERROR_PREFIX}runtime 'tensorrt' is unavailable on this device: {exc}", file=sys.stderr)
        return _BUILD_EXIT_UNSUPPORTED


if __name__ == "__main__":
    sys.exit(main())
