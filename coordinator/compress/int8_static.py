"""INT8 static (calibrated) quantization with ONNX Runtime: technique ``int8``.

Pipeline: `quant_pre_process` (shape inference and ONNX Runtime graph optimisation, written to a temporary
file; when it fails the original model is used and the failure is noted), then `quantize_static` in the QDQ
format with activation ranges calibrated on `DataSplits.calibration_inputs`. The result is one
self-contained ``.onnx`` file (weights inside, no external data), so models of 2 GiB or more are out of
scope.

Parameters (all optional, strings as in a recipe):

* ``calib``: ``minmax`` (default) | ``entropy`` | ``percentile`` — how activation ranges are chosen
  (entropy searches `ENTROPY_BINS` histogram bins, see `entropy_ranges`; percentile keeps 99.999 %);
* ``per_channel``: ``true`` (default) | ``false`` — per-output-channel weight scales;
* ``activations``: ``u8`` (default) | ``s8`` — activation type (u8 is the fast path on x86 CPUs; s8
  activations measured slower than FP32 for CNNs);
* ``weights``: ``s8`` (default) | ``u8`` (not with ``activations=s8``: onnxruntime rejects that pair);
* ``reduce_range``: ``auto`` (default) | ``true`` | ``false`` — 7-bit weights, which avoid the saturation
  of the u8×s8 instructions of x86 CPUs without VNNI. ``auto`` reads the CPU flags of the machine that
  quantizes (``/proc/cpuinfo``): true on an x86 CPU without ``avx512_vnni``/``avx_vnni``, false on one
  with them and where the flags cannot be read or are not x86's. The decision and its reason are in the
  notes;
* ``samples``: how many calibration samples to use at most (integer ≥ 1, default 256);
* ``symmetric``: ``false`` (default) | ``true`` — symmetric activation ranges (zero point 0). TensorRT takes
  only signed symmetric Q/DQ: ``int8:activations=s8;symmetric=true`` is the form for TensorRT targets.

The helpers below (`input_signature`, `check_inputs`, `batches`, `quant_node_counts`, ...) are shared by
the other ONNX techniques (`int8_dynamic`, `fp16`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx

from coordinator.compress.base import DataSplits, Log, NotApplicable, RecipeError, StepReport, param_choice, param_float

__all__ = [
    "TECHNIQUE",
    "InputSignature",
    "Int8Static",
    "batches",
    "check_inputs",
    "entropy_ranges",
    "input_signature",
    "publish_quantized",
    "quant_node_counts",
    "reduce_range_decision",
    "reject_unknown",
]

CPUINFO: Final = Path("/proc/cpuinfo")
_VNNI_FLAGS: Final = ("avx512_vnni", "avx_vnni")
#: Batch size used to feed a model whose batch dim is symbolic.
DYNAMIC_BATCH: Final = 16
_BOOL: Final = ("true", "false")
#: Histogram bins for entropy calibration, searched for the threshold that keeps 128 quantized bins. ORT's
#: own default through `quantize_static` is 128/128, which leaves one candidate threshold: the full range,
#: i.e. the same scales as minmax. The search is a Python loop over candidates per tensor: 2048 bins (the
#: TensorRT choice) cost ~0.7 s per tensor on a small x86 machine, 1024 bins about a third of that.
ENTROPY_BINS: Final = 1024
ENTROPY_QUANTIZED_BINS: Final = 128


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


class _Reader:
    """A CalibrationDataReader over pre-cut batches, for one named input; `rewind` starts it over."""

    def __init__(self, input_name: str, chunks: list[np.ndarray]) -> None:
        self._name = input_name
        self._chunks = chunks
        self._next = 0

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        if self._next >= len(self._chunks):
            return None
        chunk = self._chunks[self._next]
        self._next += 1
        return {self._name: chunk}

    def rewind(self) -> None:
        self._next = 0


def entropy_ranges(model_path: Path, reader: _Reader, workdir: Path) -> Path:
    """Calibrate `model_path` by entropy with `ENTROPY_BINS` bins, save the ranges as an ORT cache, return it.

    `quantize_static` in onnxruntime 1.32 forwards no bin counts to its calibrator, so entropy there uses
    128 bins searched for 128 quantized bins: a single candidate, the full range, exactly minmax's scales.
    This runs the same calibrator with more bins and hands its ranges to `quantize_static` through
    `calibration_cache_path` (a cache file that exists is loaded instead of calibrating again).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        str(model_path),
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates by default
        augmented_model_path=str(workdir / "entropy_augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    cache = workdir / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


class Int8Static:
    """ONNX technique ``int8``: QDQ static quantization calibrated on the data set (see module docstring).

    `apply` writes one self-contained ``.onnx`` to `target` and returns notes: ``calibration``,
    ``calibration_samples``, ``calibration_batches``, ``per_channel``, ``activations``, ``weights``,
    ``reduce_range`` and ``reduce_range_reason``, ``preprocess`` (``ok`` or why it was skipped),
    ``size_before_bytes``/``size_after_bytes``/``size_ratio``, ``quantized_nodes`` (total) and
    ``quant_node_types`` (per op type), ``int8_initializers``, and for entropy ``entropy_bins``. Raises
    RecipeError for bad or unknown parameters or calibration data of the wrong shape/dtype (or too few
    samples for a fixed batch), NotApplicable for a model with more than one input or nothing to quantize.
    """

    name = "int8"

    def __init__(self, cpuinfo: Path = CPUINFO) -> None:
        self.cpuinfo = cpuinfo

    def apply(self, source: Path, target: Path, data: DataSplits, params: Mapping[str, str], log: Log) -> StepReport:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        started = time.perf_counter()
        reject_unknown(
            params,
            ("calib", "per_channel", "activations", "weights", "reduce_range", "samples", "symmetric"),
            self.name,
        )
        symmetric = bool_param(params, "symmetric", False)
        calib = param_choice(params, "calib", "minmax", ("minmax", "entropy", "percentile"))
        per_channel = bool_param(params, "per_channel", True)
        activations = param_choice(params, "activations", "u8", ("u8", "s8"))
        weights = param_choice(params, "weights", "s8", ("s8", "u8"))
        if (activations, weights) == ("s8", "u8"):
            raise RecipeError(
                f"{self.name}: activations=s8 with weights=u8 is not supported by onnxruntime; "
                "use weights=s8 (or activations=u8)"
            )
        reduce_setting = param_choice(params, "reduce_range", "auto", ("auto", "true", "false"))
        samples = int_param(params, "samples", 256, low=1, high=1_000_000)
        reduce_range, reduce_reason = reduce_range_decision(reduce_setting, self.cpuinfo)

        model = onnx.load_model(str(source))
        sig = input_signature(model, self.name)
        del model
        inputs = data.calibration_inputs(limit=samples)
        check_inputs(inputs, sig, self.name)
        chunks = batches(inputs, sig)
        if not chunks:
            raise RecipeError(
                f"{self.name}: the model's fixed batch size is {sig.fixed_batch}, but only {len(inputs)} "
                "calibration samples are available"
            )
        used = sum(len(c) for c in chunks)

        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[calib]
        qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
        notes: dict[str, Any] = {
            "calibration": calib,
            "calibration_samples": used,
            "calibration_batches": len(chunks),
            "per_channel": per_channel,
            "activations": activations,
            "weights": weights,
            "reduce_range": reduce_range,
            "reduce_range_reason": reduce_reason,
            "symmetric_activations": symmetric,
            "format": "QDQ",
        }
        if used < len(inputs):
            notes["calibration_samples_dropped"] = len(inputs) - used
        log(
            f"{self.name}: {calib} calibration on {used} samples in {len(chunks)} batches; "
            f"reduce_range={reduce_range} ({reduce_reason})"
        )

        with tempfile.TemporaryDirectory(prefix="edgebench-int8-") as tmp:
            pre = Path(tmp) / "preprocessed.onnx"
            out = Path(tmp) / "quantized.onnx"
            quant_input = source
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                with quiet_quantizer():
                    quant_pre_process(str(source), str(pre))
                quant_input = pre
                notes["preprocess"] = "ok"
            except Exception as exc:  # any failure of the optional step: quantize the original instead
                notes["preprocess"] = f"skipped: {type(exc).__name__}: {exc}"[:500]
                log(f"{self.name}: pre-processing failed, quantizing the original model ({notes['preprocess']})")
            reader = _Reader(sig.name, chunks)
            cache: Path | None = None
            if calib == "entropy":
                try:
                    with quiet_quantizer():
                        cache = entropy_ranges(quant_input, reader, Path(tmp))
                    notes["entropy_bins"] = f"{ENTROPY_BINS} searched for {ENTROPY_QUANTIZED_BINS}"
                except Exception as exc:  # an ORT whose calibrator API moved: fall back to its own defaults
                    notes["entropy_bins"] = f"onnxruntime defaults ({type(exc).__name__}: {exc})"[:500]
                    log(f"{self.name}: entropy with custom bins failed, using onnxruntime's defaults")
                reader.rewind()
            with quiet_quantizer():
                quantize_static(
                    str(quant_input),
                    str(out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=qtype[activations],
                    weight_type=qtype[weights],
                    calibrate_method=method,
                    use_external_data_format=False,
                    calibration_cache_path=cache,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                )
            notes.update(
                publish_quantized(
                    out, target, source, f"{self.name}: onnxruntime found nothing to quantize in this model"
                )
            )

        log(
            f"{self.name}: {notes['size_before_bytes']} -> {notes['size_after_bytes']} bytes "
            f"({notes['size_ratio']:.1%}), {notes['quantized_nodes']} Q/DQ nodes"
        )
        return StepReport(
            technique=self.name,
            params=dict(params),
            notes=notes,
            seconds=time.perf_counter() - started,
        )


TECHNIQUE: Final = Int8Static()
