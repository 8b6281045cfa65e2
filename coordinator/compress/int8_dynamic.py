"""INT8 dynamic quantization with ONNX Runtime: technique ``int8dyn``.

`quantize_dynamic` stores the weights as 8-bit integers and quantizes activations at run time
(DynamicQuantizeLinear), so it needs no calibration data. In onnxruntime 1.32 it rewrites MatMul and Gemm
into MatMulInteger, Conv into ConvInteger, and also handles Attention, LSTM, Gather, Transpose and
EmbedLayerNormalization. It suits Linear/attention-heavy models; for CNNs static ``int8`` is the
faster choice (dynamic quantization measured slower than FP32 there). A model with none of those ops
raises NotApplicable rather than coming back unchanged.

Parameters: ``per_channel``: ``false`` (default) | ``true``; ``weights``: ``s8`` (default) | ``u8``;
``reduce_range``: ``auto`` (default) | ``true`` | ``false`` (see `int8_static.reduce_range_decision`).
The result is one self-contained ``.onnx`` file.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from coordinator.compress.base import DataSplits, Log, StepReport, param_choice
from coordinator.compress.onnx_common import (
    CPUINFO,
    bool_param,
    publish_quantized,
    quiet_quantizer,
    reduce_range_decision,
    reject_unknown,
)

__all__ = ["TECHNIQUE", "Int8Dynamic"]


class Int8Dynamic:
    """ONNX technique ``int8dyn``: dynamic (weight-only calibrated) INT8 quantization.

    `apply` ignores `data`, writes one self-contained ``.onnx`` to `target` and returns notes:
    ``per_channel``, ``weights``, ``reduce_range``/``reduce_range_reason``, ``size_before_bytes``,
    ``size_after_bytes``, ``size_ratio``, ``quantized_nodes``, ``quant_node_types``, ``int8_initializers``.
    Raises RecipeError for bad or unknown parameters and NotApplicable when onnxruntime quantized nothing (no
    MatMul/Gemm/Conv/Attention/LSTM/Gather/... in the model); `target` is then not written.
    """

    name = "int8dyn"

    def __init__(self, cpuinfo: Path = CPUINFO) -> None:
        self.cpuinfo = cpuinfo

    def apply(self, source: Path, target: Path, data: DataSplits, params: Mapping[str, str], log: Log) -> StepReport:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        started = time.perf_counter()
        reject_unknown(params, ("per_channel", "weights", "reduce_range"), self.name)
        per_channel = bool_param(params, "per_channel", False)
        weights = param_choice(params, "weights", "s8", ("s8", "u8"))
        reduce_setting = param_choice(params, "reduce_range", "auto", ("auto", "true", "false"))
        reduce_range, reduce_reason = reduce_range_decision(reduce_setting, self.cpuinfo)
        weight_type = QuantType.QInt8 if weights == "s8" else QuantType.QUInt8

        with tempfile.TemporaryDirectory(prefix="edgebench-int8dyn-") as tmp:
            out = Path(tmp) / "quantized.onnx"
            with quiet_quantizer():
                quantize_dynamic(
                    str(source),
                    str(out),
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=weight_type,
                    use_external_data_format=False,
                )
            sizes = publish_quantized(
                out, target, source, f"{self.name}: no MatMul/Gemm/Conv/Attention/LSTM/Gather to quantize dynamically"
            )

        notes: dict[str, Any] = {
            "per_channel": per_channel,
            "weights": weights,
            "reduce_range": reduce_range,
            "reduce_range_reason": reduce_reason,
            **sizes,
        }
        if "ConvInteger" in sizes["quant_node_types"]:
            notes["warning"] = "ConvInteger (dynamic Conv) is usually slower than FP32 on CPU; prefer int8 for CNNs"
        log(
            f"{self.name}: {sizes['size_before_bytes']} -> {sizes['size_after_bytes']} bytes "
            f"({sizes['size_ratio']:.1%}), nodes {sizes['quant_node_types']}"
        )
        return StepReport(technique=self.name, params=dict(params), notes=notes, seconds=time.perf_counter() - started)


TECHNIQUE: Final = Int8Dynamic()
