"""LiteRT's Interpreter as the TFLite converters use it to check their output: one model through its single
signature, float inputs quantized and integer outputs dequantized with each tensor's scale and zero point."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.compress.base import NotApplicable
from coordinator.convert.base import ConversionFailed


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]


class Runner:
    """One TFLite model in LiteRT's Interpreter, run through its (single) signature: float inputs are
    quantized and int8/uint8 outputs dequantized with the tensors' scale and zero point, outputs come back
    in order (``output_0``, ``output_1``, ...)."""

    def __init__(self, interpreter_module: Any, path: Path) -> None:
        try:
            self.interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            signatures = self.interpreter.get_signature_list()
        except Exception as exc:
            raise ConversionFailed(f"LiteRT cannot load {path.name}: {first_line(exc)}") from exc
        if len(signatures) != 1:
            raise NotApplicable(f"TFLite model with {len(signatures)} signatures; exactly one is supported")
        self.signature = next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(self.signature)
        self.input_names = list(signatures[self.signature]["inputs"])
        self.output_names = sorted(signatures[self.signature]["outputs"], key=_natural_key)
        self.input_name = self.input_names[0] if self.input_names else ""

    def single_input(self, converter: str) -> None:
        if len(self.input_names) != 1:
            raise NotApplicable(
                f"{converter} supports models with exactly one input; this one has {len(self.input_names)}"
            )

    def signature_inputs_count(self) -> int:
        return len(self.input_names)

    def input_details(self) -> dict[str, Any]:
        return {name: self.runner.get_input_details()[name] for name in self.input_names}

    def output_details(self) -> dict[str, Any]:
        return {name: self.runner.get_output_details()[name] for name in self.output_names}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_details()[self.input_name]["shape"])

    @property
    def input_dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.input_details()[self.input_name]["dtype"])
        return dtype

    @property
    def batch(self) -> int:
        return self.input_shape[0] if self.input_shape else 1

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        detail = self.input_details()[self.input_name]
        feed = _quantize(batch, detail) if np.dtype(detail["dtype"]) != batch.dtype else batch
        result = self.runner(**{self.input_name: feed})
        details = self.output_details()
        return [_dequantize(np.asarray(result[name]), details[name]) for name in self.output_names]

    @staticmethod
    def quantization(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Per tensor: dtype, and scale/zero point when it is quantized (per-tensor parameters)."""
        described: dict[str, dict[str, Any]] = {}
        for name, detail in details.items():
            scale, zero_point = detail["quantization"]
            entry: dict[str, Any] = {
                "dtype": np.dtype(detail["dtype"]).name,
                "shape": [int(d) for d in detail["shape"]],
            }
            if scale:
                entry.update(scale=float(scale), zero_point=int(zero_point))
            described[name] = entry
        return described

    def _ops(self) -> list[dict[str, Any]]:
        try:
            ops: list[dict[str, Any]] = self.interpreter._get_ops_details()
        except Exception:  # a private API: counts are best effort
            return []
        return ops

    def _tensor_dtypes(self) -> dict[int, np.dtype[Any]]:
        dtypes: dict[int, np.dtype[Any]] = {}
        for detail in self.interpreter.get_tensor_details():
            dtypes[int(detail["index"])] = np.dtype(detail["dtype"])
        return dtypes

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(str(op["op_name"]) for op in self._ops()).items()))

    def quantized_op_counts(self) -> dict[str, Any]:
        """Ops whose first input is int8/uint8 (``quantized_ops`` by name) and the other ops (``float_ops``),
        QUANTIZE/DEQUANTIZE left out of both."""
        dtypes = self._tensor_dtypes()
        quantized: Counter[str] = Counter()
        floating: Counter[str] = Counter()
        for op in self._ops():
            name, inputs = str(op["op_name"]), [int(i) for i in op["inputs"] if int(i) >= 0]
            if name in ("QUANTIZE", "DEQUANTIZE") or not inputs:
                continue
            if dtypes.get(inputs[0], np.dtype(np.float32)) in (np.dtype(np.int8), np.dtype(np.uint8)):
                quantized[name] += 1
            else:
                floating[name] += 1
        return {"quantized_ops": dict(sorted(quantized.items())), "float_ops": dict(sorted(floating.items()))}

    def int8_constant_tensors(self) -> int:
        """int8 tensors that are op inputs but never op outputs or graph inputs: stored weights."""
        dtypes = self._tensor_dtypes()
        produced = {int(i) for op in self._ops() for i in op["outputs"]}
        graph_inputs = {int(d["index"]) for d in self.interpreter.get_input_details()}
        consumed = {int(i) for op in self._ops() for i in op["inputs"] if int(i) >= 0}
        return sum(
            1 for i in consumed - produced - graph_inputs if dtypes.get(i) in (np.dtype(np.int8), np.dtype(np.uint8))
        )


def _quantize(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    if not scale or not np.issubdtype(dtype, np.integer):
        return batch.astype(dtype)
    info = np.iinfo(dtype)
    quantized: np.ndarray = np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)
    return quantized


def _dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale or not np.issubdtype(values.dtype, np.integer):
        return values
    real: np.ndarray = ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    return real


def _natural_key(name: str) -> tuple[str, int]:
    match = re.search(r"(\d+)$", name)
    return (name[: match.start()], int(match.group(1))) if match else (name, -1)
