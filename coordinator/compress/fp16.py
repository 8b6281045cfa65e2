"""FP16 weights and compute with onnxconverter-common: technique ``fp16``.

`convert_float_to_float16(model, keep_io_types=True)` turns float32 initializers and ops into float16 and
adds Casts at the graph's edges, so the inputs and outputs stay float32 and the model is fed exactly like
the original. Weights halve in size. Weights beyond the float16 range are clamped by the converter
(values with magnitude above 1e4 are clamped to ±1e4, tiny ones raised to ±1e-7).

Numeric checks, on up to `CHECK_SAMPLES` calibration samples:

* overflow: the FP32 model runs with every float32 intermediate tensor exposed; a finite value beyond the
  float16 maximum (`FP16_MAX`) anywhere raises NotApplicable("FP16 overflows this model: ..."). This is
  checked on FP32 activations because onnxruntime's x86 CPU provider has no float16 kernel for most ops:
  it inserts Casts and computes them in float32, so running the FP16 model there does not show overflow
  that an FP16 accelerator would hit (measured: Mul giving 1e5 returns 1e5, not inf);
* agreement: the FP16 model runs in onnxruntime (CPU) and its outputs are compared with the FP32 ones. The
  notes record ``max_abs_diff`` and, for a 2-D first output (N, classes), ``top1_agreement``; an
  agreement below `MIN_TOP1_AGREEMENT` only logs a warning (the benchmark's accuracy pass reports the
  effect). Non-finite FP16 outputs where the FP32 ones are finite raise NotApplicable too. When
  onnxruntime's CPU provider cannot run the FP16 model the comparison is skipped and the note says why (a
  GPU or NPU target may still run it). On x86 CPUs the diff mostly reflects the float16 rounding of the
  weights.

No parameters.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx

from coordinator.compress.base import DataSplits, Log, NotApplicable, StepReport
from coordinator.compress.onnx_common import batches, check_inputs, input_signature, install, reject_unknown

__all__ = ["CHECK_SAMPLES", "FP16_MAX", "MIN_TOP1_AGREEMENT", "TECHNIQUE", "Fp16"]

#: At most this many calibration samples are run through both models for the numeric check.
CHECK_SAMPLES: Final = 32
#: The largest finite float16 value.
FP16_MAX: Final = 65504.0
#: Top-1 agreement below this logs a warning.
MIN_TOP1_AGREEMENT: Final = 0.99


def _session(model: onnx.ModelProto | Path) -> Any:
    """An onnxruntime CPU session for a model in memory or at a path, with warnings hushed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session: Any, input_name: str, chunks: Sequence[np.ndarray], keep: int) -> list[np.ndarray]:
    """Run the first `keep` outputs of `session` over `chunks`; one array per output, chunks joined."""
    runs = [session.run(None, {input_name: chunk})[:keep] for chunk in chunks]
    return [np.concatenate([np.asarray(r[i]) for r in runs], axis=0) for i in range(keep)]


def _reference(
    model: onnx.ModelProto, input_name: str, chunks: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], float, str]:
    """Run the FP32 model over `chunks`: its outputs, and the largest finite |value| of any float32 tensor.

    Every float32 intermediate tensor (as shape inference types them) is added as an extra graph output,
    reduced to its peak per chunk and dropped, so memory stays at one chunk's activations. Returns
    (outputs, peak, name of the tensor with the peak).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    outputs = [o.name for o in model.graph.output]
    extra = [
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in outputs
    ]
    del inferred
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    for name in extra:
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = _session(augmented)
    del augmented
    names = outputs + extra
    peak, peak_name = 0.0, ""
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for chunk in chunks:
        values = session.run(None, {input_name: chunk})
        for i, (name, value) in enumerate(zip(names, values, strict=True)):
            array = np.asarray(value)
            if i < len(outputs):
                parts[i].append(array)
            if array.dtype == np.float32 and array.size:
                finite = np.abs(array[np.isfinite(array)])
                if finite.size and float(finite.max()) > peak:
                    peak, peak_name = float(finite.max()), name
    return [np.concatenate(p, axis=0) for p in parts], peak, peak_name


class Fp16:
    """ONNX technique ``fp16``: float16 weights and ops with float32 inputs and outputs.

    `apply` writes one self-contained ``.onnx`` to `target` and returns notes: ``size_before_bytes``,
    ``size_after_bytes``, ``size_ratio``, ``io_types`` (``float32 kept``), ``max_abs_activation`` (FP32),
    ``check_samples``, ``max_abs_diff``, ``top1_agreement`` (2-D first output only), or ``numeric_check``
    saying why the comparison was skipped. Raises RecipeError for any parameter (it takes none) or
    calibration data of the wrong shape/dtype, NotApplicable when the model has more than one input or
    FP16 overflows it.
    """

    name = "fp16"

    def apply(self, source: Path, target: Path, data: DataSplits, params: Mapping[str, str], log: Log) -> StepReport:
        from onnxconverter_common.float16 import convert_float_to_float16  # type: ignore[import-untyped]

        started = time.perf_counter()
        reject_unknown(params, (), self.name)
        model = onnx.load_model(str(source))
        sig = input_signature(model, self.name)
        inputs = data.calibration_inputs(limit=CHECK_SAMPLES)
        check_inputs(inputs, sig, self.name)
        chunks = batches(inputs, sig)

        notes: dict[str, Any] = {"io_types": "float32 kept"}
        reference: list[np.ndarray] = []
        if chunks:
            reference, peak, peak_name = _reference(model, sig.name, chunks)
            notes["max_abs_activation"] = peak
            if peak > FP16_MAX:
                raise NotApplicable(
                    f"FP16 overflows this model: tensor {peak_name!r} reaches {peak:.4g} in FP32, beyond the "
                    f"float16 maximum {FP16_MAX:g}"
                )
        converted = convert_float_to_float16(model, keep_io_types=True)
        del model
        with tempfile.TemporaryDirectory(prefix="edgebench-fp16-") as tmp:
            out = Path(tmp) / "fp16.onnx"
            onnx.save_model(converted, str(out))
            del converted
            if not chunks:
                notes["numeric_check"] = (
                    f"skipped: fixed batch {sig.fixed_batch} but only {len(inputs)} calibration samples"
                )
            else:
                notes.update(self._check(reference, out, sig.name, chunks, log))
            install(out, target)

        before, after = source.stat().st_size, target.stat().st_size
        notes.update(size_before_bytes=before, size_after_bytes=after, size_ratio=round(after / before, 4))
        log(f"{self.name}: {before} -> {after} bytes ({after / before:.1%})")
        return StepReport(technique=self.name, params=dict(params), notes=notes, seconds=time.perf_counter() - started)

    def _check(
        self, reference: list[np.ndarray], converted: Path, input_name: str, chunks: list[np.ndarray], log: Log
    ) -> dict[str, Any]:
        """Compare FP32 outputs with the FP16 model's on `chunks`; NotApplicable for FP16-only non-finite ones."""
        try:
            half = _run(_session(converted), input_name, chunks, len(reference))
        except Exception as exc:  # e.g. an op without a float16 kernel on the CPU provider
            reason = f"skipped: onnxruntime CPU cannot run the FP16 model: {type(exc).__name__}: {exc}"[:500]
            log(f"{self.name}: warning: {reason}")
            return {"numeric_check": reason}
        notes: dict[str, Any] = {"check_samples": int(sum(len(c) for c in chunks))}
        max_diff = 0.0
        for i, (ref, got) in enumerate(zip(reference, half, strict=True)):
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            bad = np.isfinite(ref64) & ~np.isfinite(got64)
            if bad.any():
                raise NotApplicable(
                    f"FP16 overflows this model: output {i} has {int(bad.sum())} non-finite values "
                    f"where FP32 gives finite ones"
                )
            both = np.isfinite(ref64) & np.isfinite(got64)
            if both.any():
                max_diff = max(max_diff, float(np.max(np.abs(ref64[both] - got64[both]))))
        notes["max_abs_diff"] = max_diff
        ref0, got0 = reference[0], half[0]
        if ref0.ndim == 2 and ref0.shape[1] > 1:
            agreement = float(np.mean(np.argmax(ref0, axis=1) == np.argmax(got0, axis=1)))
            notes["top1_agreement"] = agreement
            if agreement < MIN_TOP1_AGREEMENT:
                log(
                    f"{self.name}: warning: top-1 agreement with FP32 is {agreement:.3f} "
                    f"(< {MIN_TOP1_AGREEMENT}) on {notes['check_samples']} samples"
                )
        return notes


TECHNIQUE: Final = Fp16()
