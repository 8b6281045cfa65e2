"""One tiny torch model written in every format the agent's runtimes take, for runtime tests.

`TinyNet` (Conv 3->4, ReLU, Linear -> 5 logits on (N, 3, 8, 8) inputs) is small enough to build and run in
well under a second per format, and has both a convolution and a matmul so layout mistakes show. Every
builder takes the same seeded module, so outputs of all formats can be compared with torch's.

Builders import their SDK inside the function: callers `pytest.importorskip` what they need first.
`patch_tflite_operator` rewrites a `.tflite` flatbuffer with the schema module LiteRT ships, to make
models that reference operators an interpreter does not have.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

INPUT_SHAPE = (1, 3, 8, 8)
NUM_OUTPUTS = 5


class TinyNet(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.fc = nn.Linear(channels * INPUT_SHAPE[2] * INPUT_SHAPE[3], NUM_OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.conv(x)).flatten(1))
        return out


class PooledNet(nn.Module):
    """TinyNet with global average pooling instead of flatten: litert-torch can give it a dynamic batch axis."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=3, padding=1)
        self.fc = nn.Linear(channels, NUM_OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return out


def pooled_module(seed: int = 0) -> PooledNet:
    torch.manual_seed(seed)
    return PooledNet().eval()


def tiny_module(seed: int = 0, channels: int = 4) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(channels).eval()


def sample_input(batch: int = 1, seed: int = 1) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((batch, *INPUT_SHAPE[1:])).astype(np.float32)


def reference(module: nn.Module, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        out: npt.NDArray[np.float32] = module(torch.from_numpy(x)).numpy()
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Converters print progress bars and banners; keep test output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def build_onnx(path: Path, module: nn.Module | None = None, *, dynamic_batch: bool = True) -> Path:
    """A self-contained ONNX file (input "input", output "logits"), checked against torch by the exporter."""
    from coordinator.convert.onnx_export import export_onnx

    export_onnx(module or tiny_module(), torch.from_numpy(sample_input()), path, dynamic_batch=dynamic_batch)
    return path


def build_ir(folder: Path, module: nn.Module | None = None, *, dynamic_batch: bool = True) -> Path:
    """OpenVINO IR `folder/model.xml` + `folder/model.bin` (FP32 weights), converted from ONNX; returns the .xml."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = build_onnx(folder / "source.onnx", module, dynamic_batch=dynamic_batch)
    xml = folder / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    onnx_path.unlink()
    return xml


def build_tflite(path: Path, module: nn.Module | None = None) -> Path:
    """A float32 TFLite flatbuffer with litert-torch (NCHW I/O like the torch module, batch fixed at 1)."""
    import litert_torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        litert_torch.convert(module or tiny_module(), (torch.from_numpy(sample_input()),)).export(str(path))
    return path


def build_dynamic_batch_tflite(path: Path, module: nn.Module | None = None) -> Path:
    """A float32 TFLite file of `pooled_module()` whose input batch axis is free (shape_signature -1)."""
    import litert_torch

    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.from_numpy(sample_input(batch=2)),)
    with _quiet():
        litert_torch.convert(module or pooled_module(), example, dynamic_shapes=({0: batch},)).export(str(path))
    return path


def build_int8_tflite(float_path: Path, path: Path, calibration_batches: int = 16) -> Path:
    """Full-integer INT8 (`static_wi8_ai8`: int8 weights and activations, int8 I/O) with ai-edge-quantizer."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_path=str(float_path)).get_signature_list()
    (signature, spec), *_ = signatures.items()
    input_name = spec["inputs"][0]
    samples = [{input_name: sample_input(seed=100 + i)} for i in range(calibration_batches)]
    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    with _quiet():
        calibration = qt.calibrate({signature: samples}, num_threads=1)
        qt.quantize(calibration).export_model(str(path), overwrite=True)
    return path


def build_pt2(path: Path, module: nn.Module | None = None) -> Path:
    """A `torch.export` program (batch 1), saved with `torch.export.save`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(module or tiny_module(), (torch.from_numpy(sample_input()),))
    torch.export.save(program, str(path))
    return path


def patch_tflite_operator(
    source: Path, target: Path, builtin: str, *, custom_code: str | None = None, version: int | None = None
) -> Path:
    """Copy `source` to `target` with every operator code of `builtin` (e.g. "FULLY_CONNECTED") rewritten:
    into the custom operator `custom_code`, and/or to operator `version`. Raises ValueError if the model
    has no such operator (so a test built on it cannot pass vacuously)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    code = getattr(schema.BuiltinOperator, builtin)
    model: Any = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    hits = [c for c in model.operatorCodes if max(c.builtinCode, c.deprecatedBuiltinCode) == code]
    if not hits:
        raise ValueError(f"{source.name} has no {builtin} operator")
    for c in hits:
        if custom_code is not None:
            c.builtinCode = c.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
            c.customCode = custom_code
        if version is not None:
            c.version = version
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(bytes(builder.Output()))
    return target
