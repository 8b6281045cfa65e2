"""LiteRT (TensorFlow Lite) backend: `.tflite` flatbuffers on the CPU, through XNNPACK by default.

The interpreter comes from `ai-edge-litert` (`ai_edge_litert.interpreter`), or from `tflite-runtime` on
devices that only have that (the probe says which package and version is in use).

Job settings (RuntimeConfig):

* `intra_op_threads` -> the interpreter's `num_threads` (0: the interpreter's default).
* option `xnnpack`: `1` (default: the interpreter applies its default XNNPACK delegate) or `0` (builtin
  kernels only, through OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES). Whether XNNPACK was actually
  applied is read back from the interpreter's execution plan and recorded.

Quantized I/O: a fully-integer model takes and returns int8/uint8/int16 tensors with a (scale,
zero_point). The session presents them as float32 (as an application's pre/post-processing would) and
quantizes inputs / dequantizes outputs inside `run`, so that work is measured; `details()` records it as
`io_quantization`.

Errors: a file that is not a TFLite flatbuffer (no `TFL3` identifier) is refused in `prepare`; a model
that uses an operator the interpreter lacks (a custom op, or a builtin newer than this runtime) is a
ModelLoadError naming the operator.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, ModelLoadError, RuntimeUnsupported, batch_option, unavailable
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "litert"
FORMATS = (ModelFormat.TFLITE,)
#: The flatbuffer file identifier of every TFLite model, at bytes 4..8.
TFLITE_IDENTIFIER = b"TFL3"
#: (importable interpreter module, distribution name), in order of preference.
PACKAGES = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))
QUANTIZED_DTYPES = ("int8", "uint8", "int16")

# What the interpreter says when an operator is missing (TFLite's op resolver messages), and how to name it.
_MISSING_OP = (
    (re.compile(r"unresolved custom op: ([^\s.]+)"), "{0}"),
    (re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'"), "{0} version {1}"),
    (re.compile(r"Op builtin_code out of range: (\d+)"), "builtin code {0}"),
)


@dataclass(frozen=True)
class Runtime:
    """The interpreter module in use and where it came from."""

    module: Any
    package: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}"


def _runtime() -> Runtime:
    """The first interpreter package that imports; ImportError naming both when neither does."""
    errors = []
    for module_name, package in PACKAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{package}: {exc}")
            continue
        top = importlib.import_module(module_name.split(".", maxsplit=1)[0])
        version = str(getattr(top, "__version__", "") or _distribution_version(package))
        return Runtime(module, package, version)
    raise ImportError("; ".join(errors))


def _distribution_version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def missing_operator(message: str) -> str | None:
    """The operator an interpreter error says it lacks ('MyOp', 'CONV_2D version 99', 'builtin code 250')."""
    for pattern, template in _MISSING_OP:
        match = pattern.search(message)
        if match:
            return template.format(*match.groups())
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines)[:600] or type(exc).__name__


@dataclass(frozen=True)
class Quantization:
    """Affine int quantization of one I/O tensor: real = scale * (q - zero_point)."""

    dtype: str
    scale: float
    zero_point: int

    def describe(self) -> str:
        return f"{self.dtype} scale={self.scale:.6g} zero_point={self.zero_point}"


def _quantization(detail: Mapping[str, Any]) -> Quantization | None:
    dtype = detail["dtype"].__name__ if isinstance(detail["dtype"], type) else str(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype not in QUANTIZED_DTYPES or not scale:
        return None
    params = detail.get("quantization_parameters") or {}
    if len(params.get("scales", ())) > 1:
        raise RuntimeUnsupported(
            f"tensor {detail['name']!r} is quantized per channel at the model's boundary; edgebench presents "
            "float I/O and supports per-tensor quantized inputs and outputs only. Re-export the model with "
            "float or per-tensor quantized I/O"
        )
    return Quantization(dtype, float(scale), int(zero_point))


class LiteRtSession(DeclaredIO):
    def __init__(self, interpreter: Any, np: Any, details: dict[str, str]) -> None:
        self._interpreter = interpreter
        self._np = np
        self._details = details
        in_details = interpreter.get_input_details()
        out_details = interpreter.get_output_details()
        self._in = [(d["name"], d["index"], _quantization(d)) for d in in_details]
        self._out = [(d["index"], _quantization(d)) for d in out_details]
        self._inputs = tuple(self._info(d, q) for d, (_, _, q) in zip(in_details, self._in, strict=True))
        self._outputs = tuple(self._info(d, q) for d, (_, q) in zip(out_details, self._out, strict=True))
        self._quantizers = [self._quantizer(q) if q else None for _, _, q in self._in]
        self._dequantizers = [self._dequantizer(q) if q else None for _, q in self._out]
        self._set_tensor = interpreter.set_tensor
        self._invoke = interpreter.invoke
        self._get_tensor = interpreter.get_tensor
        quantized = [f"input {n}: {q.describe()}, quantized in run()" for n, _, q in self._in if q is not None]
        quantized += [
            f"output {info.name}: {q.describe()}, dequantized in run()"
            for info, (_, q) in zip(self._outputs, self._out, strict=True)
            if q is not None
        ]
        details["io_quantization"] = "; ".join(quantized) or "none (float I/O)"

    def _info(self, detail: Mapping[str, Any], q: Quantization | None) -> TensorInfo:
        signature = detail.get("shape_signature")
        shape = signature if signature is not None and len(signature) else detail["shape"]
        dtype = "float32" if q else str(self._np.dtype(detail["dtype"]))
        return TensorInfo(name=str(detail["name"]), shape=tuple(int(d) for d in shape), dtype=dtype)

    def _quantizer(self, q: Quantization) -> Callable[[Array], Array]:
        np = self._np
        info = np.iinfo(q.dtype)
        dtype, scale, zp = np.dtype(q.dtype), np.float32(q.scale), np.float32(q.zero_point)

        def quantize(x: Array) -> Array:
            return np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(dtype)

        return quantize

    def _dequantizer(self, q: Quantization) -> Callable[[Array], Array]:
        np = self._np
        scale, zp = np.float32(q.scale), np.int32(q.zero_point)

        def dequantize(t: Array) -> Array:
            return (t.astype(np.int32) - zp).astype(np.float32) * scale

        return dequantize

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        set_tensor = self._set_tensor
        try:
            for (name, index, _), quantize in zip(self._in, self._quantizers, strict=True):
                x = feeds[name]
                set_tensor(index, quantize(x) if quantize else x)
        except ValueError:
            if not self._resize(feeds):
                raise
            return self.run(feeds)
        self._invoke()
        get_tensor = self._get_tensor
        outputs = []
        for (index, _), dequantize in zip(self._out, self._dequantizers, strict=True):
            t = get_tensor(index)  # a copy
            outputs.append(dequantize(t) if dequantize else t)
        return outputs

    def fit_batch(self, batch: int) -> str:
        """At load: resize inputs whose only free axis is the batch axis to the job's batch, so the resize is
        load time, not first-inference time. Returns what to record."""
        pairs = zip(self._in, self._inputs, strict=True)
        free = [(index, info) for (_, index, _), info in pairs if info.shape[:1] == (-1,)]
        if not free:
            return "fixed in the model"
        if any(d < 0 for _, info in free for d in info.shape[1:]):
            return "free beyond the batch axis: resized to the inputs' shape at the first run"
        for index, info in free:
            self._interpreter.resize_tensor_input(index, [batch, *info.shape[1:]], strict=True)
        self._interpreter.allocate_tensors()
        return f"free in the model: resized to the job's batch {batch} at load"

    def _resize(self, feeds: Mapping[str, Array]) -> bool:
        """Resize inputs with free dimensions to the feeds' shapes (once per new shape); False if none fit."""
        resized = False
        current_shapes = {d["index"]: tuple(int(n) for n in d["shape"]) for d in self._interpreter.get_input_details()}
        for (name, index, _), info in zip(self._in, self._inputs, strict=True):
            shape = tuple(feeds[name].shape)
            current = current_shapes[index]
            free_ok = len(shape) == len(info.shape) and all(
                d < 0 or d == s for d, s in zip(info.shape, shape, strict=False)
            )
            if shape != current and free_ok:
                self._interpreter.resize_tensor_input(index, list(shape), strict=True)
                resized = True
        if resized:
            self._interpreter.allocate_tensors()
        return resized

    def execution_providers(self) -> Sequence[str]:
        return ("XNNPACK", "CPU") if self._details.get("xnnpack") == "applied" else ("CPU",)

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        self._interpreter = self._set_tensor = self._invoke = self._get_tensor = None


def _delegated(interpreter: Any) -> bool | None:
    """Whether a delegate node (XNNPACK's, the only default delegate) is in the execution plan; None if unknown."""
    ops = getattr(interpreter, "_get_ops_details", None)
    if ops is None:
        return None
    try:
        return any(op.get("op_name") == "DELEGATE" for op in ops())
    except Exception:
        return None


class LiteRtBackend:
    name = NAME
    formats = FORMATS

    def probe(self) -> RuntimeInfo:
        try:
            runtime = _runtime()
        except ImportError as exc:
            return unavailable(
                NAME,
                FORMATS,
                f"not installed ({exc}); install edgebench[agent,litert] (ai-edge-litert), or tflite-runtime "
                "where that is what the device has",
            )
        return RuntimeInfo(
            name=NAME,
            available=True,
            version=f"{runtime.version} ({runtime.package})",
            execution_providers=("XNNPACK", "CPU"),
            model_formats=FORMATS,
        )

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        try:
            with model_path.open("rb") as f:
                head = f.read(8)
        except OSError as exc:
            raise ModelLoadError(f"cannot read the model file: {exc}") from None
        if head[4:8] != TFLITE_IDENTIFIER:
            raise ModelLoadError(
                f"{model_path.name} is not a TFLite flatbuffer: bytes 4..8 are {head[4:8]!r}, not {TFLITE_IDENTIFIER!r}"
                f"{_looks_like(head)}. Convert the model to .tflite (e.g. litert-torch), or send this file to a "
                "runtime that takes its format"
            )

    def load(self, model_path: Path, config: RuntimeConfig) -> LiteRtSession:
        try:
            runtime = _runtime()
        except ImportError as exc:
            raise RuntimeUnsupported(f"no LiteRT interpreter on this agent ({exc})") from None
        import numpy as np

        xnnpack = config.option("xnnpack", "1")
        if xnnpack not in ("0", "1"):
            raise RuntimeUnsupported(f"option xnnpack={xnnpack!r} must be '1' (default) or '0' (LiteRT backend)")
        kwargs: dict[str, Any] = {"model_path": str(model_path)}
        if config.intra_op_threads:
            kwargs["num_threads"] = config.intra_op_threads
        resolver = "AUTO (builtin kernels + default delegates)"
        if xnnpack == "0":
            op_resolver = getattr(runtime.module, "OpResolverType", None)
            if op_resolver is None:
                raise RuntimeUnsupported(
                    f"{runtime.label} cannot turn its default XNNPACK delegate off (no OpResolverType); drop "
                    "option xnnpack=0 or install ai-edge-litert"
                )
            kwargs["experimental_op_resolver_type"] = op_resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            resolver = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
        try:
            interpreter = runtime.module.Interpreter(**kwargs)
            interpreter.allocate_tensors()  # resolves every operator and applies the default delegate
        except (ValueError, RuntimeError) as exc:
            raise _load_error(exc, runtime) from None
        applied = _delegated(interpreter)
        details = {
            "package": runtime.label,
            "num_threads": str(config.intra_op_threads or "default"),
            "op_resolver": resolver,
            "xnnpack_requested": "yes" if xnnpack == "1" else "no (option xnnpack=0)",
            "xnnpack": {True: "applied", False: "not applied", None: "unknown"}[applied],
        }
        session = LiteRtSession(interpreter, np, details)
        details["batch"] = session.fit_batch(batch_option(config, "LiteRT"))
        return session


def _load_error(exc: BaseException, runtime: Runtime) -> ModelLoadError:
    message = _first_line(exc)
    op = missing_operator(str(exc))
    if op is not None:
        return ModelLoadError(
            f"the model uses operator {op}, which this LiteRT interpreter ({runtime.label}) does not provide "
            f"({message}). Convert the model with builtin operators only (no custom ops), or run it with a newer "
            "LiteRT that has this operator"
        )
    return ModelLoadError(
        f"LiteRT ({runtime.label}) could not load the model: {message}. The file is truncated or corrupt, or "
        "was not written by a TFLite converter; convert it again"
    )


def _looks_like(head: bytes) -> str:
    if head.startswith(b"\x08"):
        return " (it looks like a protobuf file, e.g. ONNX)"
    if head.lstrip().startswith(b"<"):
        return " (it looks like XML, e.g. an OpenVINO IR)"
    if head.startswith(b"PK"):
        return " (it looks like a zip archive, e.g. a .pt2 program)"
    return ""


BACKEND = LiteRtBackend()
