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

The helpers it shares with the other ONNX techniques (`input_signature`, `check_inputs`, `batches`,
`quant_node_counts`, ...) live in `coordinator.compress.onnx_common`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx

from coordinator.compress.base import DataSplits, Log, RecipeError, StepReport, param_choice
from coordinator.compress.onnx_common import (
    CPUINFO,
    batches,
    bool_param,
    check_inputs,
    input_signature,
    int_param,
    publish_quantized,
    quiet_quantizer,
    reduce_range_decision,
    reject_unknown,
)

__all__ = ["TECHNIQUE", "Int8Static", "entropy_ranges"]

#: Histogram bins for entropy calibration, searched for the threshold that keeps 128 quantized bins. ORT's
#: own default through `quantize_static` is 128/128, which leaves one candidate threshold: the full range,
#: i.e. the same scales as minmax. The search is a Python loop over candidates per tensor: 2048 bins (the
#: TensorRT choice) cost ~0.7 s per tensor on a small x86 machine, 1024 bins about a third of that.
ENTROPY_BINS: Final = 1024
ENTROPY_QUANTIZED_BINS: Final = 128


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
