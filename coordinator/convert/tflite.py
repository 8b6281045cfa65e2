"""PyTorch -> TFLite (LiteRT) with litert-torch, and INT8 quantization of the result with ai-edge-quantizer.

Converter choice: litert-torch converts the `nn.Module` itself (torch.export -> StableHLO -> TFLite),
offline, inside the coordinator's environment. onnx2tf would need its own ~2.5 GB TensorFlow environment
and downloads a calibration file for INT8 unless one is given.

Layout: the TFLite model keeps the NCHW inputs and outputs of the PyTorch (and ONNX) model, so the same
dataset feeds every runtime; litert-torch inserts the transposes to NHWC inside the graph. Channel-last
I/O (`litert_torch.to_channel_last_io`) would save those transposes but needs a dataset in another
layout, so it is not used. The batch size is fixed at the example's (TFLite models have static shapes).

`torch_to_tflite` checks the file with LiteRT's Interpreter (`ai_edge_litert`) against torch:
element-wise within `FLOAT_TOLERANCE` (scaled to the output's magnitude), on the check inputs or, without
them, on a seeded standard-normal batch.

`quantize_int8` is full-integer static INT8 (`recipe.static_wi8_ai8`: int8 weights, int8 activations
calibrated on the given samples): the result has int8 input and output tensors with a scale and zero
point (the agent's LiteRT backend quantizes inputs and dequantizes outputs at the boundary); the notes
record those parameters. Its check dequantizes the outputs and compares their argmax with the float
model's: agreement must reach `MIN_INT8_TOP1_AGREEMENT` (a sanity floor; the benchmark reports
accuracy). `quantize_dynamic_int8` (`recipe.dynamic_wi8_afp32`) stores int8 weights and computes with
float activations; it needs no data and keeps float I/O.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from coordinator.compress.base import RecipeError
from coordinator.convert.base import (
    MIN_INT8_TOP1_AGREEMENT,
    RANDOM_CHECK_SAMPLES,
    ConversionFailed,
    Converted,
    Tolerance,
    atomic_file,
    check_array,
    check_int8_classifier,
    check_labels_fit,
    compare_outputs,
    eval_mode,
    quiet,
    random_inputs,
    require,
    sdk_version,
    split_batches,
)
from coordinator.convert.tflite_runner import Runner, first_line

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "EXTRA",
    "FLOAT_TOLERANCE",
    "MIN_INT8_TOP1_AGREEMENT",
    "quantize_dynamic_int8",
    "quantize_int8",
    "torch_to_tflite",
]

EXTRA: Final = "convert-tflite"
FORMAT: Final = "tflite"
#: TFLite FP32 vs torch: only kernels and accumulation order differ.
FLOAT_TOLERANCE: Final = Tolerance(rtol=1e-3, atol=1e-4)
#: Operator names in litert-torch / converter errors: "Lowering not found: aten.special_bessel_j0.default",
#: "failed to legalize operation 'stablehlo.fft'", "'tfl.custom' op ...".
_OPERATOR_RES: Final = (
    re.compile(r"Lowering not found: ([\w.:]+)"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
    re.compile(r"\b(aten(?:::|\.)\w+(?:\.\w+)?)"),
    re.compile(r"'((?:tfl|stablehlo|mhlo|tf)\.\w+)' op"),
)


def torch_to_tflite(
    model: nn.Module, example_shape: tuple[int, ...], out: Path, *, check_inputs: np.ndarray | None = None
) -> Converted:
    """Convert `model` (put in eval mode; its training flag is restored) to a float32 TFLite file `out`.

    `example_shape` is the input batch shape, e.g. (1, 1, 32, 32): inputs and outputs keep the model's
    NCHW layout, identical to the ONNX export, and the batch size is fixed at `example_shape[0]`.
    The file is checked with LiteRT's Interpreter against torch on `check_inputs` (float32 samples,
    cut into batches of that size; a partial last batch is left out) or on a seeded standard-normal
    batch. Notes: ``tool``, ``precision`` (``fp32``), ``input_shape``, ``layout`` (``NCHW``),
    ``ops`` (TFLite ops by name), ``size_bytes``, ``numeric_check`` (``max_abs_diff``, ``max_rel_diff``,
    ``top1_agreement``, ``inputs``, ``samples``, ``tolerance``) and ``seconds``.

    Raises ConverterMissing without litert-torch or ai-edge-litert, RecipeError for a bad example shape
    or check inputs that do not fit it, ConversionFailed when conversion fails (naming the operator when
    the converter's message does) or the check fails. `out` appears only when everything passed.
    """
    with quiet("absl"):  # it reports optional torchao kernels it cannot load on import
        litert_torch = require("litert_torch", EXTRA)
        interpreter_module = require("ai_edge_litert.interpreter", EXTRA)
    import torch

    started = time.perf_counter()
    if not example_shape or any(not isinstance(d, int) or d < 1 for d in example_shape):
        raise RecipeError(f"torch_to_tflite: example_shape {example_shape} must be positive integers (batch first)")
    dims: list[int | None] = [None, *example_shape[1:]]
    inputs, source = check_inputs, "check inputs"
    if check_inputs is not None:
        check_array(check_inputs, dims, np.dtype(np.float32), what="check inputs", converter="torch_to_tflite")
    else:
        inputs = random_inputs(dims, np.dtype(np.float32), max(example_shape[0], RANDOM_CHECK_SAMPLES))
        source = "seeded standard-normal batch"
    batch = example_shape[0]
    assert inputs is not None
    chunks, dropped = split_batches(inputs, batch)
    if not chunks:
        raise RecipeError(f"torch_to_tflite: the batch size is {batch}, but only {len(inputs)} check inputs were given")
    with eval_mode(model):
        example = torch.zeros(example_shape, dtype=torch.float32)
        try:
            with quiet("absl", "torch._export", env={"LITERT_TORCH_SHOW_PROGRESS": "n"}):
                edge_model = litert_torch.convert(model, (example,))
        except Exception as exc:
            raise ConversionFailed(_describe_failure(exc)) from exc
        notes: dict[str, Any] = {
            "tool": f"litert-torch {sdk_version('litert-torch')}",
            "precision": "fp32",
            "input_shape": list(example_shape),
            "layout": "NCHW (as the ONNX model)",
        }
        with atomic_file(out) as tmp:
            with quiet("absl", env={"LITERT_TORCH_SHOW_PROGRESS": "n"}):
                edge_model.export(str(tmp))
            del edge_model
            runner = Runner(interpreter_module, tmp)
            notes["ops"] = runner.op_counts()
            with torch.no_grad():
                reference_runs = [_torch_outputs(model(torch.from_numpy(chunk))) for chunk in chunks]
            reference = _join(reference_runs)
            got = _join([runner.run(chunk) for chunk in chunks])
            check = compare_outputs(reference, got, FLOAT_TOLERANCE, what="TFLite vs torch")
            check.update(inputs=source, samples=len(inputs) - dropped, tolerance=FLOAT_TOLERANCE.describe())
            if dropped:
                check["samples_left_out"] = dropped
            notes["numeric_check"] = check
            del runner
        notes["size_bytes"] = out.stat().st_size
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out, (), notes)


def quantize_int8(
    float_tflite: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    check_inputs: np.ndarray | None = None,
    check_labels: np.ndarray | None = None,
) -> Converted:
    """Full-integer static INT8 quantization of a float TFLite file, calibrated on `calibration`.

    `calibration` holds float32 samples of the model's single input (N, ...), cut into batches of the
    model's fixed batch size. The result has int8 inputs and outputs with a scale and zero point. With
    `check_inputs` its dequantized outputs are compared with the float model's: top-1 agreement must reach
    `MIN_INT8_TOP1_AGREEMENT`; with `check_labels` the accuracy of both is recorded.

    Notes: ``tool``, ``recipe`` (``static_wi8_ai8``), ``calibration_samples``, ``input_quantization`` and
    ``output_quantization`` (dtype, scale, zero_point per tensor), ``ops``, ``quantized_ops`` (ops with
    int8 inputs), ``float_ops``, ``size_bytes``/``float_size_bytes``/``size_ratio``, ``numeric_check``
    (``top1_agreement``, ``max_abs_diff``, ``accuracy_int8``/``accuracy_float`` with labels, ``samples``)
    and ``seconds``.

    Raises ConverterMissing without ai-edge-quantizer or ai-edge-litert; RecipeError for a missing input
    file, calibration or check data that do not fit the model's input (expected vs given) or fewer
    samples than one batch, labels that do not fit the check inputs; NotApplicable for a model with more
    than one signature or input; ConversionFailed when quantization fails or the check fails.
    """
    quantizer = require("ai_edge_quantizer.quantizer", EXTRA)
    recipe = require("ai_edge_quantizer.recipe", EXTRA)
    interpreter_module = require("ai_edge_litert.interpreter", EXTRA)
    started = time.perf_counter()
    float_runner = Runner(interpreter_module, _existing(float_tflite, "quantize_int8"))
    float_runner.single_input("quantize_int8")
    dims = [None, *float_runner.input_shape[1:]]
    check_array(calibration, dims, float_runner.input_dtype, what="calibration inputs", converter="quantize_int8")
    if check_inputs is not None:
        check_array(check_inputs, dims, float_runner.input_dtype, what="check inputs", converter="quantize_int8")
    check_labels_fit(check_labels, check_inputs, "quantize_int8")
    chunks, _ = split_batches(calibration, float_runner.batch)
    if not chunks:
        raise RecipeError(
            f"quantize_int8: the model's batch size is {float_runner.batch}, but only {len(calibration)} "
            "calibration samples were given"
        )
    notes: dict[str, Any] = {
        "tool": f"ai-edge-quantizer {sdk_version('ai-edge-quantizer')}",
        "recipe": "static_wi8_ai8",
        "calibration_samples": sum(len(c) for c in chunks),
    }
    try:
        with quiet("absl"):
            qt = quantizer.Quantizer(str(float_tflite))
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            data = {float_runner.signature: [{float_runner.input_name: chunk} for chunk in chunks]}
            calibrated = qt.calibrate(data, num_threads=max(1, os.cpu_count() or 1))
            result = qt.quantize(calibrated)
    except Exception as exc:
        raise ConversionFailed(f"ai-edge-quantizer static INT8 failed: {type(exc).__name__}: {_first(exc)}") from exc
    with atomic_file(out) as tmp:
        with quiet("absl"):
            result.export_model(str(tmp), overwrite=True)
        runner = Runner(interpreter_module, tmp)
        notes.update(
            input_quantization=runner.quantization(runner.input_details()),
            output_quantization=runner.quantization(runner.output_details()),
            ops=runner.op_counts(),
            **runner.quantized_op_counts(),
        )
        if not notes["quantized_ops"]:
            raise ConversionFailed("ai-edge-quantizer quantized nothing in this model (no op takes int8 inputs)")
        if check_inputs is None:
            notes["numeric_check"] = "skipped: no check inputs given"
        else:
            check_chunks, dropped = split_batches(check_inputs, runner.batch)
            if not check_chunks:
                raise RecipeError(
                    f"quantize_int8: the batch size is {runner.batch}, but only {len(check_inputs)} check "
                    "inputs were given"
                )
            reference = _join([float_runner.run(chunk) for chunk in check_chunks])
            got = _join([runner.run(chunk) for chunk in check_chunks])
            check = compare_outputs(reference, got, None, what="TFLite INT8 (dequantized) vs TFLite float")
            check["samples"] = len(check_inputs) - dropped
            check_int8_classifier(reference[0], got[0], check_labels, check, "float")
            notes["numeric_check"] = check
        del runner
    notes.update(_sizes(out, float_tflite))
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out, (), notes)


def quantize_dynamic_int8(float_tflite: Path, out: Path) -> Converted:
    """Dynamic-range INT8 (`recipe.dynamic_wi8_afp32`): int8 weights, float activations and float I/O.

    No data needed; the result is loaded and run once on zeros (its outputs must be finite). Notes:
    ``tool``, ``recipe``, ``ops``, ``int8_weight_tensors`` (int8 tensors no op produces), ``smoke_run``,
    sizes (``size_bytes``, ``float_size_bytes``, ``size_ratio``) and ``seconds``. Raises
    ConverterMissing, RecipeError for a missing input file, ConversionFailed when quantization fails,
    nothing gets int8 weights, or the result does not run.
    """
    quantizer = require("ai_edge_quantizer.quantizer", EXTRA)
    recipe = require("ai_edge_quantizer.recipe", EXTRA)
    interpreter_module = require("ai_edge_litert.interpreter", EXTRA)
    started = time.perf_counter()
    _existing(float_tflite, "quantize_dynamic_int8")
    try:
        with quiet("absl"):
            qt = quantizer.Quantizer(str(float_tflite))
            qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = qt.quantize()
    except Exception as exc:
        raise ConversionFailed(f"ai-edge-quantizer dynamic INT8 failed: {type(exc).__name__}: {_first(exc)}") from exc
    notes: dict[str, Any] = {
        "tool": f"ai-edge-quantizer {sdk_version('ai-edge-quantizer')}",
        "recipe": "dynamic_wi8_afp32",
    }
    with atomic_file(out) as tmp:
        with quiet("absl"):
            result.export_model(str(tmp), overwrite=True)
        runner = Runner(interpreter_module, tmp)
        notes["ops"] = runner.op_counts()
        notes["int8_weight_tensors"] = runner.int8_constant_tensors()
        if not notes["int8_weight_tensors"]:
            raise ConversionFailed("ai-edge-quantizer stored no int8 weights in this model")
        if runner.signature_inputs_count() == 1:
            zeros = np.zeros(runner.input_shape, dtype=runner.input_dtype)
            outputs = runner.run(zeros)
            if not all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating)):
                raise ConversionFailed("the dynamic INT8 model gives non-finite outputs on a zero input")
            notes["smoke_run"] = "ok: ran once on zeros, finite outputs"
        del runner
    notes.update(_sizes(out, float_tflite))
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out, (), notes)


def _torch_outputs(result: object) -> list[np.ndarray]:
    import torch

    if isinstance(result, torch.Tensor):
        return [result.detach().cpu().numpy()]
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return [t.detach().cpu().numpy() for t in result]
    raise RecipeError(f"the model must return a tensor or a tuple of tensors; it returned {type(result).__name__}")


def _join(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([run[i] for run in runs]) for i in range(len(runs[0]))]


def _existing(path: Path, converter: str) -> Path:
    if not path.is_file():
        raise RecipeError(f"{converter}: TFLite model {path} does not exist")
    return path


def _sizes(out: Path, float_tflite: Path) -> dict[str, Any]:
    size, before = out.stat().st_size, float_tflite.stat().st_size
    return {"size_bytes": size, "float_size_bytes": before, "size_ratio": round(size / before, 4)}


_first = first_line


def _describe_failure(exc: BaseException) -> str:
    """The converter's failure as one message, naming the operator when its message has one."""
    text = str(exc)
    for pattern in _OPERATOR_RES:
        match = pattern.search(text)
        if match:
            return (
                f"litert-torch cannot convert the model: operator {match.group(1)} is not supported "
                f"({type(exc).__name__}: {_first(exc)})"
            )
    return f"litert-torch cannot convert the model: {type(exc).__name__}: {_first(exc)}"
