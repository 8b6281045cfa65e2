"""Export torch models to ONNX, checked numerically, and load user models given as code or programs.

`export_onnx` writes ONE self-contained `.onnx` file (weights inside, no `.onnx.data` side file) with
the input named ``"input"`` and the first output ``"logits"`` (further outputs ``"output_1"``, ...),
then runs it with onnxruntime and compares it with the torch model; a file that does not match is never
left at the target path.

Exporter choice: the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`). For the
Conv/BatchNorm/ReLU/Linear CNNs edgebench compresses it is fast (~0.1 s against ~5 s for the dynamo
exporter on torch 2.13), folds eval-mode BatchNorm into the convolutions, emits opset 18 directly and
never writes external data for models under 2 GiB. torch deprecates it; if it disappears, the dynamo
exporter (`dynamo=True, external_data=False`) is the replacement, and the numeric check below guards the
switch.

Loading user models: `load_factory` imports ``package.module:factory``, calls it and loads a state_dict
with `torch.load(..., weights_only=True)` (pickled full models are refused, because unpickling runs
arbitrary code); `load_exported_program` loads a `.pt2` written by `torch.export.save`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from coordinator.compress.base import RecipeError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "ExportReport",
    "ModelLoadError",
    "export_onnx",
    "load_exported_program",
    "load_factory",
]

INPUT_NAME: Final = "input"
OUTPUT_NAME: Final = "logits"

#: Batch sizes of the random batches of the numeric check when the batch axis is dynamic.
_CHECK_BATCHES: Final = (1, 3, 7)
_CHECK_SEED: Final = 0
# Operator names in torch's export errors: "Exporting the operator 'aten::fft_rfft' to ONNX ..." and
# "Couldn't export operator aten::lift_fresh".
_OPERATOR_RE: Final = re.compile(r"operator '?([A-Za-z_]\w*::[\w.]+)")


class ExportError(RuntimeError):
    """The model cannot be exported to ONNX, or the exported file does not compute what torch computes."""


class ModelLoadError(RecipeError):
    """A user model (factory spec, weights file or exported program) cannot be loaded; says which and why.

    A `RecipeError` (hence a ValueError), so the CLI reports it like any other bad user input.
    """


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and how closely it matched torch.

    `max_abs_diff` is the largest |onnx - torch| over every output element of every checked batch;
    `batches_checked` counts the example plus the random batches.
    """

    path: Path
    opset: int
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    max_abs_diff: float
    batches_checked: int
    size_bytes: int
    seconds: float


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    dynamic_batch: bool = True,
    opset: int = 18,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ExportReport:
    """Export `model` (in eval mode) to one self-contained ONNX file at `path`, checked against torch.

    Contract:
    * `example` is one input batch (N, ...); its shape except the batch axis is fixed in the graph; with
      `dynamic_batch` the batch axis of the input and every output is the symbolic ``"batch"``.
    * the model runs in eval mode during export and the check; its training flag is restored afterwards.
    * the check runs the ONNX model with onnxruntime (CPU) on `example` and, for floating inputs, on
      random standard-normal batches (sizes 1, 3 and 7 when the batch is dynamic, else N; fixed seed),
      and requires ``|onnx - torch| <= atol + rtol * |torch|`` element-wise for every output.
    * on success `path` (parents created, an existing file overwritten) holds the model; on any failure
      `path` is left as it was and `ExportError` is raised: an unsupported operator is named, with the
      layer (module path and class) that calls it when it can be found; a numeric mismatch names the
      output, the index of the worst element, both values, the difference and the tolerance.
    """
    if example.ndim == 0:
        raise ExportError("the example input must have a batch axis; got a scalar tensor")
    if rtol < 0 or atol < 0:
        raise ExportError(f"tolerances must be >= 0; got rtol={rtol}, atol={atol}")
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            reference = _as_outputs(model(example))
        output_names = (OUTPUT_NAME, *(f"output_{i}" for i in range(1, len(reference))))
        dynamic_axes: dict[str, dict[int, str]] | None = None
        if dynamic_batch:
            dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)}
        _run_exporter(model, example, tmp, opset, output_names, dynamic_axes)
        _check_self_contained(tmp)
        batches = [example, *_random_batches(example, dynamic_batch)]
        max_diff = _numeric_check(model, tmp, batches, output_names, rtol, atol)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        model.train(was_training)
    return ExportReport(
        path=path,
        opset=opset,
        input_shape=tuple(example.shape),
        output_names=output_names,
        dynamic_batch=dynamic_batch,
        max_abs_diff=max_diff,
        batches_checked=len(batches),
        size_bytes=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def _as_outputs(result: object) -> list[torch.Tensor]:
    """The model's outputs as a list of tensors (a tensor, or a tuple/list of tensors)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and result and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise ExportError(f"the model must return a tensor or a tuple of tensors; it returned {type(result).__name__}")


def _run_exporter(
    model: nn.Module,
    example: torch.Tensor,
    target: Path,
    opset: int,
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> None:
    """Run the TorchScript exporter; failures become `ExportError` naming the operator and layer."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(
                model,
                (example,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        match = _OPERATOR_RE.search(str(exc))
        if match is None:
            raise ExportError(f"ONNX export (opset {opset}) failed: {first_line}") from exc
        operator = match.group(1)
        layer = _locate_operator(model, example, operator)
        where = f" in layer {layer}" if layer else ""
        raise ExportError(
            f"cannot export to ONNX opset {opset}: operator {operator}{where} is not supported by the exporter "
            f"({first_line})"
        ) from exc


def _locate_operator(model: nn.Module, example: torch.Tensor, operator: str) -> str | None:
    """Run the model once and return "'module.path' (Class)" of the innermost module that calls `operator`.

    Best effort: returns None when the operator is not seen (e.g. it comes from a tracing-only path) or
    when running the model fails.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[tuple[str, str]] = []
    found: list[tuple[str, str]] = []

    class _Spy(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not found and stack and func._schema.name == operator:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    def enter(name: str, module: nn.Module) -> None:
        stack.append((name or "<root>", type(module).__name__))

    def leave() -> None:
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n, m)))
        handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    try:
        with torch.no_grad(), _Spy():  # type: ignore[no-untyped-call]
            model(example)
    except Exception:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    name, cls = found[0]
    return f"'{name}' ({cls})"


def _check_self_contained(target: Path) -> None:
    """Refuse a file whose initializers live in external data (the contract is one self-contained file)."""
    model = onnx.load(str(target), load_external_data=False)
    external = [t.name for t in model.graph.initializer if onnx.external_data_helper.uses_external_data(t)]
    if external:
        raise ExportError(
            f"the exporter wrote {len(external)} weights (e.g. {external[0]!r}) to external data; "
            "edgebench needs one self-contained .onnx file (models must stay under 2 GiB)"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported model is not valid ONNX: {exc}") from exc


def _random_batches(example: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """Standard-normal batches like `example` (floating inputs only), from a fixed seed."""
    if not example.is_floating_point():
        return []
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    sizes = _CHECK_BATCHES if dynamic_batch else (example.shape[0],)
    return [torch.randn((size, *example.shape[1:]), generator=generator).to(example.dtype) for size in sizes]


def _numeric_check(
    model: nn.Module,
    target: Path,
    batches: Sequence[torch.Tensor],
    output_names: Sequence[str],
    rtol: float,
    atol: float,
) -> float:
    """Compare onnxruntime with torch on every batch; return the largest |difference| or raise ExportError."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}") from exc
    max_diff = 0.0
    worst: tuple[float, str] | None = None  # (excess over the tolerance, message)
    for number, batch in enumerate(batches):
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in _as_outputs(model(batch))]
        try:
            actual = session.run(list(output_names), {INPUT_NAME: batch.detach().cpu().numpy()})
        except Exception as exc:
            raise ExportError(
                f"onnxruntime failed on check batch {number} of shape {list(batch.shape)}: {exc}"
            ) from exc
        for name, want, got in zip(output_names, expected, actual, strict=True):
            got_array = np.asarray(got)
            if got_array.shape != want.shape:
                raise ExportError(
                    f"ONNX output {name!r} has shape {list(got_array.shape)} on check batch {number}, "
                    f"torch gives {list(want.shape)}"
                )
            if want.size == 0:
                continue
            want64 = want.astype(np.float64)
            diff = np.abs(got_array.astype(np.float64) - want64)
            max_diff = max(max_diff, float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan"))
            excess = diff - (atol + rtol * np.abs(want64))
            excess = np.where(np.isnan(excess), np.inf, excess)
            flat = int(np.argmax(excess))
            if excess.flat[flat] > 0 and (worst is None or excess.flat[flat] > worst[0]):
                index = tuple(int(i) for i in np.unravel_index(flat, want.shape))
                worst = (
                    float(excess.flat[flat]),
                    f"ONNX output {name!r} differs from torch by {float(diff.flat[flat]):.6g} at index {index} "
                    f"of check batch {number} (shape {list(batch.shape)}): torch {float(want.flat[flat]):.6g}, "
                    f"onnx {float(got_array.flat[flat]):.6g}; tolerance atol={atol:g} + rtol={rtol:g}*|torch| "
                    f"= {atol + rtol * abs(float(want.flat[flat])):.6g}",
                )
    if worst is not None:
        raise ExportError(f"numeric check failed: {worst[1]} (worst element over all outputs and batches)")
    return max_diff


def load_factory(spec: str, weights: Path | None = None) -> nn.Module:
    """Build a user model from ``package.module:factory`` and optionally load a state_dict into it.

    Contract: the module is imported, `factory` (a dotted attribute path inside it) is called with no
    arguments and must return an `nn.Module`. `weights`, if given, is read with
    ``torch.load(weights, map_location="cpu", weights_only=True)`` and must be a state_dict (a mapping
    of names to tensors) that matches the model exactly (strict). A pickled full model is refused,
    because unpickling one executes arbitrary code. Every failure raises `ModelLoadError` naming the
    spec or file and what to do. The model is returned in eval mode.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model factory {spec!r} must look like 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"model factory {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"model factory {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelLoadError(f"model factory {spec!r}: {attr!r} is not callable")
    model = target()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model factory {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    if weights is not None:
        state = _load_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{weights.name}: the weights do not fit the model from {spec!r}: {exc}") from exc
    return model.eval()


def _load_state_dict(weights: Path) -> Mapping[str, torch.Tensor]:
    """Read a state_dict with weights_only=True; a pickled full model or other object is refused."""
    if not weights.is_file():
        raise ModelLoadError(f"weights file {weights} does not exist")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{weights.name}: refused to load, it is not a plain state_dict ({type(exc).__name__}). edgebench "
            "loads weights with torch.load(weights_only=True) and never unpickles full models, which can run "
            "arbitrary code; save the weights with torch.save(model.state_dict(), path) instead"
        ) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a checkpoint dict with the weights under "state_dict"
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{weights.name}: expected a state_dict (a mapping of parameter names to tensors), "
            f"got {type(state).__name__}; save it with torch.save(model.state_dict(), path)"
        )
    return state


def load_exported_program(path: Path) -> nn.Module:
    """Load a `.pt2` file written by `torch.export.save` and return its runnable module.

    Contract: the file is read with `torch.export.load` (which does not unpickle arbitrary objects); the
    result is `program.module()`, an `nn.Module` taking the inputs the program was exported with.
    Failures raise `ModelLoadError` naming the file.
    """
    if not path.is_file():
        raise ModelLoadError(f"exported program {path} does not exist")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: not a torch.export program (.pt2): {exc}") from exc
    module = program.module()
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{path.name}: the program's module() is {type(module).__name__}, not an nn.Module")
    return module
