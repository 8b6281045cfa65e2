"""TensorRT backend: engines built on the device from ONNX, cached, and run on a CUDA stream.

Written against the TensorRT 10 Python API (`tensorrt`) with host<->device copies through cuda-python
(`cuda.bindings.runtime`, or `cuda.cudart` in older cuda-python); the agent never needs torch or pycuda.
The backend object is `agent.runtimes.tensorrt.backend:BACKEND` (the registry's entry). This package
module imports nothing, so the build helper process (`python -m agent.runtimes.tensorrt.build`) loads only
what building needs.

Modules, one purpose each:

* `options`: job options -> `BuildOptions` (precision -> builder flags, workspace, optimisation level,
  optimisation profile shapes), the GPU index, and the refusal of agent settings sent as job options. Pure.
* `cache`: the engine cache's place, key, integrity check, atomic writes and bounded size (LRU eviction).
* `build`: the engine build, run in a helper process, and the job process's side of that protocol.
* `session`: the timed load of a cached engine (CUDA buffers, bindings) and the timed run.
* `memory`: GPU memory from NVML or the Jetson's shared-memory counters.
* `probe`: whether TensorRT can run here, and why not.
* `gpu`: lazy SDK imports, cuda-python result checks, the GPU's identity.
* `backend`: `TensorRtBackend`, which wires the above into probe / prepare / load.

Phases, and why they are where they are:

* `prepare` (not timed as load): the ONNX external-data check, then the engine. Engines are cached in
  `tensorrt-engines` beside the job folders in the agent's work directory (where the agent decides: a job
  sending `engine_cache_dir` is refused) under a key that is a pure function of the TensorRT version, the
  GPU's name and compute capability, the build options (precision flags, workspace, optimisation level,
  profile request) and the sha256 of the model (and of its external-data files). A missing engine is built
  in a helper process, so the builder's host memory (often far more than inference needs) never counts in
  the job process's peak RSS, and a hit and a miss report the same memory. The build time and whether this
  job built the engine are recorded in the result's details. Then the cache is bounded: the least
  recently used engines beyond its limits are removed, never the one this job uses.
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

Options: `workspace_mb`, `builder_optimization_level` (0-5), `batch` (the profile's optimum batch,
default 1), `max_batch` (default max(batch, 32)), `input_shapes` (`name:1x3x224x224,...`: the optimum
shape of inputs with dynamic axes other than the batch), `tf32`, `strongly_typed`.
`RuntimeConfig.device` picks the GPU ("", "GPU", "cuda:1", "1").
"""
