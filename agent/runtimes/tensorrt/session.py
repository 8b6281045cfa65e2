"""Loading a cached engine and running it with CUDA buffers on one stream.

`open_session` (the timed load): deserialise the engine, create the execution context (which allocates the
activation memory), allocate device buffers and pinned host buffers for the largest profile shapes, bind
tensor addresses, synchronise the device; GPU memory is read before and after (`memory`).

`TensorRtSession.run` (the timed call): copy each input to its pinned buffer and to the device,
`execute_async_v3` on the stream, copy the outputs back and synchronise the stream, so the clock stops only
when the results are on the host (what an application sees; trtexec's "H2D + GPU compute + D2H").
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, InputMismatch, ModelLoadError, RuntimeUnsupported
from agent.runtimes.tensorrt.gpu import GpuIdentity, cuda_check, gpu_identity, import_cudart, import_tensorrt, is_tegra
from agent.runtimes.tensorrt.memory import gpu_memory_figure, pci_bus_id, read_gpu_memory
from agent.runtimes.tensorrt.options import BuildOptions, Shape, fmt_shape
from agent.types import TensorInfo


@dataclass(frozen=True)
class Prepared:
    """What `prepare` settled for one model: the cached engine to load and how it came to be."""

    engine_path: Path
    built_here: bool
    sidecar: dict[str, Any]
    gpu: GpuIdentity
    device_index: int
    options: BuildOptions


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


class TensorRtSession(DeclaredIO):
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

    def _reshape(self, binding: _Binding, shape: Shape) -> None:
        if not self._context.set_input_shape(binding.name, shape):
            raise InputMismatch(
                f"input {binding.name!r} of shape {fmt_shape(shape)} is outside the engine's optimisation profile "
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

    ptr = int(cuda_check(cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
    view = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (max(nbytes, 1),))
    return ptr, view


def open_session(prepared: Prepared) -> TensorRtSession:
    """The timed load of a prepared engine (see the module docstring)."""
    import numpy as np

    trt = import_tensorrt()
    cudart = import_cudart()
    tegra = is_tegra()
    _, prop = gpu_identity(cudart, prepared.device_index)
    bus = pci_bus_id(int(prop.pciDomainID), int(prop.pciBusID), int(prop.pciDeviceID))
    before = read_gpu_memory(tegra, bus)
    cuda_check(cudart.cudaSetDevice(prepared.device_index), "cudaSetDevice")
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
    stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
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
        device = int(cuda_check(cudart.cudaMalloc(max(capacity, 1)), "cudaMalloc"))
        host_ptr, host = _pinned(cudart, np, capacity)
        current = tuple(int(d) for d in context.get_tensor_shape(n))
        nbytes = int(np.prod(current, dtype=np.int64)) * dtypes[n].itemsize
        bindings[n] = _Binding(n, dtypes[n], current, nbytes, capacity, device, host_ptr, host)
        if not context.set_tensor_address(n, device):
            raise ModelLoadError(f"TensorRT refused the device address of tensor {n!r}")
    cuda_check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
    after = read_gpu_memory(tegra, bus)
    gpu_bytes, method = gpu_memory_figure(tegra, before, after)

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
