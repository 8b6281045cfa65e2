"""ONNX -> OpenVINO IR (FP32 or FP16 weights), and NNCF post-training INT8 saved as IR.

`onnx_to_ir` reads the ONNX file with `openvino.convert_model` and writes ``model.xml`` + ``model.bin``
with `openvino.save_model`. save_model compresses weights to FP16 *by default*; the FP32 path passes
``compress_to_fp16=False`` explicitly, the FP16 path True (weights are stored as f16 and decompressed
to f32 on load; the CPU plugin still computes in f32 under the f32 hint). Inputs and outputs keep the
ONNX model's names, layout (NCHW stays NCHW), dtypes and dynamic batch axis, so the same dataset feeds
every runtime.

`nncf_int8` quantizes the OpenVINO model read from the ONNX file with `nncf.quantize` (activations get
FakeQuantize ops, Conv/MatMul weights are stored as int8 constants with per-channel scales), calibrated
on the given samples one batch per NNCF item (batch 1 when the batch axis is dynamic), and saves it as
IR with ``compress_to_fp16=False`` so the scales and the remaining float constants stay f32 (the int8
weights are untouched by that option either way; the notes count them after reading the IR back).

Telemetry: OpenVINO's converter and NNCF send usage events to Google Analytics through
`openvino_telemetry` unless a consent file in the user's home says no, each event from a forked process
that tries the network (seconds per conversion offline, and a fork of a process that may run JAX's threads
after a TFLite conversion). edgebench works offline and sends nothing: before importing openvino (whose
import already sends an event), `_telemetry_off` sets the telemetry singleton (and NNCF's handle on it)
to a no-op stand-in for this process, without touching the user's consent file; the notes record
``telemetry``. An openvino imported earlier in the process by other code has sent its import event already.

Numeric checks run the saved IR with OpenVINO on CPU compiled with ``INFERENCE_PRECISION_HINT=f32`` (the
CPU plugin would otherwise use bf16 on CPUs that have it) against onnxruntime on the ONNX file:

* FP32 weights: element-wise within `FP32_TOLERANCE` (scaled to the output's magnitude, see
  `coordinator.convert.base.Tolerance`); FP16 weights: within `FP16_TOLERANCE`;
* INT8: top-1 agreement with the FP32 model at least `MIN_INT8_TOP1_AGREEMENT` (a sanity floor, not a
  quality gate: the benchmark reports the accuracy), plus accuracy of both when labels are given.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import numpy as np

from coordinator.compress.base import NotApplicable, RecipeError
from coordinator.convert.base import (
    MIN_INT8_TOP1_AGREEMENT,
    RANDOM_CHECK_SAMPLES,
    ConversionFailed,
    Converted,
    Tolerance,
    check_array,
    check_int8_classifier,
    check_labels_fit,
    compare_outputs,
    publish_files,
    quiet,
    random_inputs,
    require,
    sdk_version,
    split_batches,
)

__all__ = [
    "EXTRA",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "MIN_INT8_TOP1_AGREEMENT",
    "PRECISION_HINT",
    "nncf_int8",
    "onnx_to_ir",
]

EXTRA: Final = "convert-openvino"
FORMAT: Final = "openvino_ir"
#: OpenVINO CPU plugin precision for the checks (bf16 is its default on CPUs with avx512_bf16/AMX).
PRECISION_HINT: Final = "f32"
#: IR with FP32 weights vs onnxruntime: only accumulation order differs.
FP32_TOLERANCE: Final = Tolerance(rtol=1e-3, atol=1e-4)
#: IR with FP16 weights vs onnxruntime FP32: weights rounded to 11 significant bits.
FP16_TOLERANCE: Final = Tolerance(rtol=1e-2, atol=5e-3)
PRESETS: Final = ("performance", "mixed")
XML: Final = "model.xml"
BIN: Final = "model.bin"


def onnx_to_ir(
    onnx_path: Path, out_dir: Path, *, fp16_weights: bool, check_inputs: np.ndarray | None = None
) -> Converted:
    """Convert an ONNX file to OpenVINO IR in `out_dir` (``model.xml`` + companion ``model.bin``).

    `fp16_weights` stores weights as FP16 (half the .bin), otherwise FP32. The saved IR runs on OpenVINO
    CPU (f32 hint) against onnxruntime on `check_inputs` (samples of the model's single input) and must
    agree within the tolerance for its weight precision; without check inputs a seeded standard-normal
    batch is used (when the input is a float tensor of known shape). Notes: ``tool``, ``telemetry``,
    ``weights`` (``fp32``/``fp16``), ``weight_constants`` (Constant ops by element type in the saved IR),
    ``xml_bytes``/``bin_bytes``/``onnx_bytes``, ``numeric_check`` (``max_abs_diff``, ``max_rel_diff``,
    ``top1_agreement``, ``inputs``, ``samples``, ``tolerance``, ``precision_hint``) and ``seconds``.

    Raises ConverterMissing without openvino, ConversionFailed when OpenVINO cannot read the model or the
    check fails, RecipeError for check inputs that do not fit the model, NotApplicable for a check on a
    model with more than one input. `out_dir` gets the two files only when everything passed.
    """
    telemetry = _telemetry_off()  # before openvino's import, which sends an event
    ov = require("openvino", EXTRA)
    started = time.perf_counter()
    model = _read_onnx(ov, onnx_path)
    inputs, source = check_inputs, "check inputs"
    if check_inputs is not None:
        dims, dtype, _ = _input_signature(model, "onnx_to_ir")
        check_array(check_inputs, dims, dtype, what="check inputs", converter="onnx_to_ir")
    elif len(model.inputs) == 1 and model.inputs[0].get_partial_shape().rank.is_static:
        dims, dtype, fixed = _input_signature(model, "onnx_to_ir")
        inputs, source = random_inputs(dims, dtype, fixed or RANDOM_CHECK_SAMPLES), "seeded standard-normal batch"
    precision = "fp16" if fp16_weights else "fp32"
    notes: dict[str, Any] = {
        "tool": f"openvino {sdk_version('openvino')}",
        "weights": precision,
        "telemetry": telemetry,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ir-") as tmp:
        xml = Path(tmp) / XML
        ov.save_model(model, str(xml), compress_to_fp16=fp16_weights)
        del model
        notes["weight_constants"] = _constant_types(ov.Core().read_model(str(xml)))
        if inputs is None:
            notes["numeric_check"] = "skipped: no check inputs given, and the input is not a fixed-shape float tensor"
        else:
            tolerance = FP16_TOLERANCE if fp16_weights else FP32_TOLERANCE
            reference = _onnxruntime_outputs(onnx_path, inputs)
            got = _openvino_outputs(ov, xml, inputs)
            check = compare_outputs(reference, got, tolerance, what=f"OpenVINO IR ({precision} weights) vs onnxruntime")
            notes["numeric_check"] = {
                **check,
                "inputs": source,
                "samples": len(reference[0]),
                "tolerance": tolerance.describe(),
                "precision_hint": PRECISION_HINT,
                "reference": f"onnxruntime {sdk_version('onnxruntime')} (CPU)",
            }
        notes.update(_sizes(Path(tmp), onnx_path))
        publish_files((xml, out_dir / XML), [(Path(tmp) / BIN, out_dir / BIN)])
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out_dir / XML, (out_dir / BIN,), notes)


def nncf_int8(
    onnx_path: Path,
    out_dir: Path,
    calibration: np.ndarray,
    *,
    check_inputs: np.ndarray | None = None,
    check_labels: np.ndarray | None = None,
    preset: str = "performance",
    subset_size: int = 300,
) -> Converted:
    """Quantize an ONNX model to INT8 with NNCF post-training quantization and save it as IR in `out_dir`.

    `calibration` holds samples of the model's single input (N, ...), fed one batch per NNCF item;
    NNCF collects statistics on the first `subset_size` items. `preset` is ``performance`` (symmetric
    activations, the fast path) or ``mixed`` (asymmetric activations, for activations that are not
    centred such as after non-ReLU non-linearities). With `check_inputs` the INT8 IR (OpenVINO CPU) is
    compared with the FP32 ONNX model (onnxruntime): top-1 agreement must reach
    `MIN_INT8_TOP1_AGREEMENT`; with `check_labels` the accuracy of both is recorded.

    Notes: ``tool``, ``telemetry``, ``preset``, ``subset_size``, ``calibration_samples``, ``fake_quantize_ops``,
    ``int8_weight_constants``, ``quantized_ops`` (Convolution/MatMul/... fed by FakeQuantize or int8
    weights), ``weight_constants`` by element type, sizes (``xml_bytes``, ``bin_bytes``, ``size_bytes``,
    ``onnx_bytes``, ``size_ratio``), ``numeric_check`` (``top1_agreement``, ``max_abs_diff``,
    ``accuracy_int8``/``accuracy_fp32`` with labels, ``samples``) and ``seconds``.

    Raises ConverterMissing without openvino or nncf; RecipeError for a bad preset or subset_size,
    calibration or check data that do not fit the model's input (expected vs given) or labels that do
    not fit the check inputs; NotApplicable for a model with more than one input; ConversionFailed when
    NNCF fails, quantizes nothing, or the check fails.
    """
    _telemetry_off()  # before the imports: openvino's sends an event, NNCF's takes a handle
    ov = require("openvino", EXTRA)
    nncf = require("nncf", EXTRA)
    telemetry = _telemetry_off()  # again, for an NNCF imported earlier by someone else
    started = time.perf_counter()
    if preset not in PRESETS:
        raise RecipeError(f"nncf_int8: preset={preset!r} must be one of {', '.join(PRESETS)}")
    if subset_size < 1:
        raise RecipeError(f"nncf_int8: subset_size={subset_size} must be >= 1")
    model = _read_onnx(ov, onnx_path)
    dims, dtype, fixed_batch = _input_signature(model, "nncf_int8")
    check_array(calibration, dims, dtype, what="calibration inputs", converter="nncf_int8")
    if check_inputs is not None:
        check_array(check_inputs, dims, dtype, what="check inputs", converter="nncf_int8")
    check_labels_fit(check_labels, check_inputs, "nncf_int8")
    items, _ = split_batches(calibration, fixed_batch or 1)
    if not items:
        raise RecipeError(
            f"nncf_int8: the model's fixed batch size is {fixed_batch}, but only {len(calibration)} calibration "
            "samples were given"
        )
    used_items = min(subset_size, len(items))
    notes: dict[str, Any] = {
        "tool": f"nncf {sdk_version('nncf')}, openvino {sdk_version('openvino')}",
        "preset": preset,
        "subset_size": subset_size,
        "calibration_samples": sum(len(item) for item in items[:used_items]),
        "telemetry": telemetry,
    }
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    try:
        with quiet("nncf"):
            quantized = nncf.quantize(
                model, nncf.Dataset(items[:used_items]), preset=presets[preset], subset_size=used_items
            )
    except Exception as exc:
        raise ConversionFailed(f"NNCF quantization failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    del model

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ir-") as tmp:
        xml = Path(tmp) / XML
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        del quantized
        saved = ov.Core().read_model(str(xml))
        counts = Counter(op.get_type_name() for op in saved.get_ops())
        constants = _constant_types(saved)
        notes.update(
            fake_quantize_ops=counts.get("FakeQuantize", 0),
            int8_weight_constants=constants.get("i8", 0) + constants.get("u8", 0),
            quantized_ops=_quantized_ops(saved),
            weight_constants=constants,
        )
        del saved
        if not notes["fake_quantize_ops"] and not notes["int8_weight_constants"]:
            raise ConversionFailed("NNCF quantized nothing in this model (no FakeQuantize ops, no int8 weights)")
        if check_inputs is None:
            notes["numeric_check"] = "skipped: no check inputs given"
        else:
            reference = _onnxruntime_outputs(onnx_path, check_inputs)
            got = _openvino_outputs(ov, xml, check_inputs)
            check = compare_outputs(reference, got, None, what="OpenVINO INT8 IR vs onnxruntime FP32")
            check.update(samples=len(reference[0]), precision_hint=PRECISION_HINT)
            check_int8_classifier(reference[0], got[0], check_labels, check, "fp32")
            notes["numeric_check"] = check
        notes.update(_sizes(Path(tmp), onnx_path))
        publish_files((xml, out_dir / XML), [(Path(tmp) / BIN, out_dir / BIN)])
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out_dir / XML, (out_dir / BIN,), notes)


class _NoTelemetry:
    """Stands in for the `openvino_telemetry.Telemetry` singleton: every method of its API does nothing."""

    def init(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    send_event = start_session = end_session = send_error = send_stack_trace = send_opt_in_event = init
    force_shutdown = init

    def get_stats(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs


def _telemetry_off() -> str:
    """Switch off OpenVINO/NNCF usage telemetry in this process (see the module docstring); best effort.

    Runs before openvino is imported (whose import sends an event): the `openvino_telemetry.Telemetry`
    singleton is set to a `_NoTelemetry`, so every later ``Telemetry(...)`` returns it; an NNCF imported
    earlier gets it as its handle too. Returns ``off``, ``not installed``, or why it could not be done.
    """
    try:
        telemetry = importlib.import_module("openvino_telemetry")
    except ImportError:
        return "not installed"
    try:
        attribute = "_SingletonMetaClass__single_instance"
        if not hasattr(telemetry.Telemetry, attribute):
            return "left as configured: openvino_telemetry has no singleton to replace in this version"
        if not isinstance(getattr(telemetry.Telemetry, attribute), _NoTelemetry):
            setattr(telemetry.Telemetry, attribute, _NoTelemetry())
        handle = getattr(sys.modules.get("nncf.telemetry.wrapper"), "telemetry", None)
        if handle is not None and hasattr(handle, "_impl"):
            handle._impl = getattr(telemetry.Telemetry, attribute)
    except Exception as exc:
        return f"left as configured: {type(exc).__name__}: {exc}"[:300]
    return "off"


def _read_onnx(ov: Any, onnx_path: Path) -> Any:
    if not onnx_path.is_file():
        raise RecipeError(f"ONNX model {onnx_path} does not exist")
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ConversionFailed(f"OpenVINO cannot read {onnx_path.name}: {_first_line(exc)}") from exc


def _input_signature(model: Any, converter: str) -> tuple[list[int | None], np.dtype[Any], int | None]:
    """Dims (None when dynamic), numpy dtype and fixed batch size of the model's only input."""
    inputs = list(model.inputs)
    if len(inputs) != 1:
        raise NotApplicable(f"{converter} supports models with exactly one input; this one has {len(inputs)}")
    shape = inputs[0].get_partial_shape()
    if shape.rank.is_dynamic:
        raise NotApplicable(f"{converter}: the model's input has no known rank")
    dims = [int(d.get_length()) if d.is_static else None for d in shape]
    dtype = np.dtype(inputs[0].get_element_type().to_dtype())
    return dims, dtype, dims[0] if dims else None


def _onnxruntime_outputs(onnx_path: Path, inputs: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    declared = session.get_inputs()[0]
    fixed = declared.shape[0] if isinstance(declared.shape[0], int) and declared.shape[0] > 0 else None
    chunks, _ = split_batches(inputs, fixed)
    if not chunks:
        raise RecipeError(f"the model's fixed batch size is {fixed}, but only {len(inputs)} check inputs were given")
    runs = [session.run(None, {declared.name: chunk}) for chunk in chunks]
    return [np.concatenate([np.asarray(run[i]) for run in runs]) for i in range(len(runs[0]))]


def _openvino_outputs(ov: Any, xml: Path, inputs: np.ndarray) -> list[np.ndarray]:
    core = ov.Core()
    try:
        compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": PRECISION_HINT})
    except Exception as exc:
        raise ConversionFailed(f"OpenVINO CPU cannot compile the saved IR: {_first_line(exc)}") from exc
    shape = compiled.inputs[0].get_partial_shape()
    fixed = int(shape[0].get_length()) if shape.rank.is_static and shape[0].is_static else None
    chunks, _ = split_batches(inputs, fixed)
    request = compiled.create_infer_request()
    runs = []
    for chunk in chunks:
        result = request.infer({0: chunk})
        runs.append([np.array(result[output]) for output in compiled.outputs])
    return [np.concatenate([run[i] for run in runs]) for i in range(len(compiled.outputs))]


def _constant_types(model: Any) -> dict[str, int]:
    """Constant ops of an OpenVINO model by element type (``f32``, ``f16``, ``i8``, ...), multi-element ones
    only (weights, not scalars or shapes)."""
    counts = Counter(
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static and _numel(op) > 1
    )
    return dict(sorted(counts.items()))


def _numel(op: Any) -> int:
    return int(np.prod([int(d) for d in op.get_output_shape(0)], dtype=np.int64))


def _quantized_ops(model: Any) -> dict[str, int]:
    """Compute ops (Convolution, MatMul, ...) whose data input comes from a FakeQuantize or whose weights are
    int8 constants (through Convert/Subtract/Multiply decompression), by op type."""
    compute = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}

    def from_int8(node: Any, depth: int = 0) -> bool:
        if node.get_type_name() == "FakeQuantize":
            return True
        if node.get_type_name() == "Constant":
            return str(node.get_output_element_type(0).get_type_name()) in ("i8", "u8")
        if depth > 4 or node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            return False
        return any(from_int8(value.get_node(), depth + 1) for value in node.input_values())

    counts = Counter(
        op.get_type_name()
        for op in model.get_ops()
        if op.get_type_name() in compute and any(from_int8(v.get_node()) for v in op.input_values())
    )
    return dict(sorted(counts.items()))


def _sizes(folder: Path, onnx_path: Path) -> dict[str, Any]:
    xml, binary, source = (folder / XML).stat().st_size, (folder / BIN).stat().st_size, onnx_path.stat().st_size
    return {
        "xml_bytes": xml,
        "bin_bytes": binary,
        "size_bytes": xml + binary,
        "onnx_bytes": source,
        "size_ratio": round((xml + binary) / source, 4),
    }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
