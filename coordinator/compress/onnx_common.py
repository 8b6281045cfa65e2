"""Helpers the ONNX-level techniques share (`int8_static`, `int8_dynamic`, `fp16`): the model's input
signature and checks of calibration data against it, batching, the CPU's VNNI flags behind `reduce_range`,
recipe parameter parsing, counting quantized nodes, publishing a result atomically, and quieting ONNX
Runtime's quantizer logs."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx

from coordinator.compress.base import NotApplicable, RecipeError, param_choice, param_float

CPUINFO: Final = Path("/proc/cpuinfo")
_VNNI_FLAGS: Final = ("avx512_vnni", "avx_vnni")
#: Batch size used to feed a model whose batch dim is symbolic.
DYNAMIC_BATCH: Final = 16
_BOOL: Final = ("true", "false")


@dataclass(frozen=True)
class InputSignature:
    """The single graph input of a model: name, dims (int when fixed, None when symbolic) and numpy dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: np.dtype[Any]

    @property
    def fixed_batch(self) -> int | None:
        """The fixed size of the first (batch) dim, or None when it is symbolic (or the input is a scalar)."""
        return self.dims[0] if self.dims else None

    def shape_text(self) -> str:
        """The dims as text, symbolic ones as ``N``/``?``: e.g. ``(N, 3, 16, 16)``."""
        parts = [("N" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(self.dims)]
        return "(" + ", ".join(parts) + ")"


def input_signature(model: onnx.ModelProto, technique: str) -> InputSignature:
    """Return the model's only real graph input (initializers listed as inputs are skipped).

    Raises NotApplicable when the model has no input or more than one, or one that is not a tensor with a
    shape: calibration and numeric checks feed one array.
    """
    init_names = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init_names]
    if len(inputs) != 1:
        raise NotApplicable(f"{technique} supports models with exactly one input; this one has {len(inputs)}")
    value = inputs[0]
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        raise NotApplicable(f"{technique}: input {value.name!r} is not a tensor with a known shape")
    tensor_type = value.type.tensor_type
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return InputSignature(value.name, dims, dtype)


def check_inputs(inputs: np.ndarray, sig: InputSignature, technique: str) -> None:
    """Check that `inputs` (N samples stacked on axis 0) can be fed to the input `sig`.

    Raises RecipeError naming the expected and given shapes or dtypes: for an empty array, a different
    rank, a fixed dim (after the batch dim) that differs, or a dtype other than the input's (float64 data
    for a float32 input gets a hint to convert it).
    """
    given = f"{tuple(inputs.shape)} {inputs.dtype}"
    expected = f"{sig.shape_text()} {sig.dtype}"
    if inputs.dtype != sig.dtype:
        hint = ""
        if inputs.dtype == np.float64 and sig.dtype == np.float32:
            hint = " (float64 data: convert it to float32, e.g. inputs.astype(numpy.float32))"
        raise RecipeError(
            f"{technique}: calibration inputs have dtype {inputs.dtype}, the model's input {sig.name!r} "
            f"expects {sig.dtype}{hint}; expected {expected}, given {given}"
        )
    if inputs.ndim != len(sig.dims) or any(
        want is not None and want != got for want, got in zip(sig.dims[1:], inputs.shape[1:], strict=True)
    ):
        raise RecipeError(
            f"{technique}: calibration inputs have shape {tuple(inputs.shape)}, the model's input "
            f"{sig.name!r} expects {sig.shape_text()} (samples stacked on the first axis); "
            f"expected {expected}, given {given}"
        )
    if len(inputs) == 0:
        raise RecipeError(f"{technique}: there are no calibration inputs (given {given})")


def batches(inputs: np.ndarray, sig: InputSignature) -> list[np.ndarray]:
    """Split `inputs` into the batches the model accepts, in order.

    A fixed batch dim B gives consecutive chunks of exactly B samples (one sample at a time for B == 1);
    samples beyond the last full chunk are left out, and none are returned when there are fewer than B. A
    symbolic batch dim gives chunks of at most `DYNAMIC_BATCH` samples.
    """
    fixed = sig.fixed_batch
    if fixed is None:
        return [inputs[i : i + DYNAMIC_BATCH] for i in range(0, len(inputs), DYNAMIC_BATCH)]
    usable = len(inputs) - len(inputs) % fixed
    return [inputs[i : i + fixed] for i in range(0, usable, fixed)]


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU flags in the first ``flags`` line of `cpuinfo`, or None when it cannot be read or has none."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


def reduce_range_decision(setting: str, cpuinfo: Path = CPUINFO) -> tuple[bool, str]:
    """Resolve the ``reduce_range`` parameter (``auto``/``true``/``false``) into (value, reason).

    ``auto`` is True only on an x86 CPU (its flags include ``sse2``) that has neither ``avx512_vnni`` nor
    ``avx_vnni``; False with VNNI, and False when the flags cannot be read or are not x86's. It judges the
    machine that quantizes, which is the target only when the model runs there.
    """
    if setting != "auto":
        return setting == "true", "set by the recipe"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False, f"auto: no CPU flags readable from {cpuinfo}; assuming no x86 saturation issue"
    vnni = sorted(f for f in _VNNI_FLAGS if f in flags)
    if vnni:
        return False, f"auto: CPU has {', '.join(vnni)}"
    if "sse2" not in flags:
        return False, "auto: not an x86 CPU (no sse2 flag); reduce_range only matters on x86"
    return True, "auto: x86 CPU without avx512_vnni/avx_vnni (u8 x s8 products could saturate)"


def quant_node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of quantization-related nodes by op type: Q/DQ, QLinear*, *Integer and DynamicQuantize*."""
    counts = Counter(
        n.op_type
        for n in model.graph.node
        if n.op_type in {"QuantizeLinear", "DequantizeLinear"}
        or n.op_type.startswith(("QLinear", "DynamicQuantize"))
        or n.op_type.endswith("Integer")
    )
    return dict(sorted(counts.items()))


def int_initializer_count(model: onnx.ModelProto) -> int:
    """Number of initializers stored as 8-bit integers (the quantized weights)."""
    return sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))


def bool_param(params: Mapping[str, str], key: str, default: bool) -> bool:
    """Read a ``true``/``false`` parameter; anything else raises RecipeError."""
    return param_choice(params, key, "true" if default else "false", _BOOL) == "true"


def reject_unknown(params: Mapping[str, str], allowed: tuple[str, ...], technique: str) -> None:
    """Raise RecipeError naming any key of `params` not in `allowed` (a typo must not pass silently)."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise RecipeError(f"{technique}: unknown parameter(s) {', '.join(unknown)}; allowed: {known}")


def int_param(params: Mapping[str, str], key: str, default: int, *, low: int, high: int) -> int:
    """Read an integer parameter within [low, high]; a fraction or a value outside raises RecipeError."""
    value = param_float(params, key, float(default), low=low, high=high)
    if value != int(value):
        raise RecipeError(f"parameter {key}={params.get(key)} must be a whole number")
    return int(value)


def publish_quantized(out: Path, target: Path, source: Path, nothing_quantized: str) -> dict[str, Any]:
    """Count what quantization put into `out`; refuse an output in which nothing was quantized
    (NotApplicable(nothing_quantized)); install it as `target`; return the size and node-count notes."""
    quantized = onnx.load_model(str(out))
    counts = quant_node_counts(quantized)
    int_inits = int_initializer_count(quantized)
    del quantized
    if not counts:
        raise NotApplicable(nothing_quantized)
    install(out, target)
    before, after = source.stat().st_size, target.stat().st_size
    return {
        "size_before_bytes": before,
        "size_after_bytes": after,
        "size_ratio": round(after / before, 4),
        "quantized_nodes": sum(counts.values()),
        "quant_node_types": counts,
        "int8_initializers": int_inits,
    }


def install(tmp_file: Path, target: Path) -> None:
    """Check the model at `tmp_file` with the ONNX checker and move it to `target` (parents created)."""
    onnx.checker.check_model(str(tmp_file))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_file), str(target))


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[io.StringIO]:
    """Capture what the ORT quantizer prints on stdout (histogram progress) and hush its root-logger warnings.

    Yields the buffer holding the captured text.
    """
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        root.setLevel(level)
