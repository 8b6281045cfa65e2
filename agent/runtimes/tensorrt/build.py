"""Building an engine, in a helper process: `python -m agent.runtimes.tensorrt.build --build '<json>'`.

The builder's host memory (often far more than inference needs) must never count in the job process's
peak RSS, so the job process runs this module as a child (`run_build_helper`) and only reads the result
from the cache. The child parses the ONNX model, builds a serialized engine, and writes the engine and its
sidecar atomically. Protocol: exit 0 when written; otherwise its last `edgebench-error: ` line on stderr
is the message, and the exit status its kind (3: the model's fault, 4: the request's; anything else, e.g.
a crash, is a load error too). The builder's own log goes to the job's log (the result's diagnostics).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.base import ModelLoadError, RuntimeUnsupported
from agent.runtimes.tensorrt.cache import write_atomic
from agent.runtimes.tensorrt.gpu import cuda_check, import_cudart, import_tensorrt
from agent.runtimes.tensorrt.options import BuildOptions, fmt_shape, options_from_json, profile_shapes

HELPER_MODULE = "agent.runtimes.tensorrt.build"
EXIT_LOAD_ERROR = 3
EXIT_UNSUPPORTED = 4
ERROR_PREFIX = "edgebench-error: "


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


# ------------------------------------------------------------------------------ the job process's side


def run_build_helper(request: Mapping[str, Any]) -> None:
    """Run the helper for `request` (model, engine, device, options, sidecar); raise what its exit means."""
    proc = subprocess.run(
        [sys.executable, "-m", HELPER_MODULE, "--build", json.dumps(request)],
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
    lines = [ln[len(ERROR_PREFIX) :] for ln in proc.stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
    message = (
        lines[-1]
        if lines
        else f"the engine build process exited with status {proc.returncode}: "
        + (proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output")
    )
    if proc.returncode == EXIT_UNSUPPORTED:
        raise RuntimeUnsupported(message)
    raise ModelLoadError(message)


# ------------------------------------------------------------------------------ the helper process's side


def _has_qdq(trt: Any, network: Any) -> bool:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def build_engine(model_path: Path, options: BuildOptions, device_index: int) -> tuple[bytes, dict[str, str]]:
    """Parse the ONNX model and build a serialized engine (runs in the helper process). Raises ModelLoadError
    (the model) or RuntimeUnsupported (the request)."""
    trt = import_tensorrt()
    cudart = import_cudart()
    cuda_check(cudart.cudaSetDevice(device_index), "cudaSetDevice")
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
        "profile": "; ".join(
            f"{n}: {fmt_shape(a)} / {fmt_shape(b)} / {fmt_shape(c)}" for n, (a, b, c) in shapes.items()
        )
        or "static",
    }
    return bytes(serialized), info


def build_main(request: Mapping[str, Any]) -> int:
    """The helper process: build, write engine + sidecar atomically, exit 0; errors as exit codes."""
    engine_path = Path(request["engine"])
    try:
        data, info = build_engine(Path(request["model"]), options_from_json(request["options"]), int(request["device"]))
    except ModelLoadError as exc:
        print(ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_LOAD_ERROR
    except RuntimeUnsupported as exc:
        print(ERROR_PREFIX + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_UNSUPPORTED
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(engine_path, data)
    sidecar = {
        **request["sidecar"],
        **info,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
    }
    write_atomic(engine_path.with_suffix(".json"), json.dumps(sidecar, sort_keys=True).encode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--build":
        print(f"usage: python -m {HELPER_MODULE} --build '<json request>' (run by the agent)", file=sys.stderr)
        return 2
    try:
        request = json.loads(args[1])
    except ValueError as exc:
        print(f"{ERROR_PREFIX}bad build request: {exc}", file=sys.stderr)
        return 2
    try:
        return build_main(request)
    except ImportError as exc:
        print(f"{ERROR_PREFIX}runtime 'tensorrt' is unavailable on this device: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED


if __name__ == "__main__":
    sys.exit(main())
