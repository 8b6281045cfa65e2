"""What every converter to another runtime's format shares: its result, its errors and its checks.

A converter turns a variant (an ONNX file or the PyTorch module) into the format of another runtime
(`openvino_ir`, `tflite`, `coreml`) and returns a `Converted`: the main file, companion files the agent
needs next to it under their own names (the IR's ``model.bin``), and notes for the manifest (tool and
version, precision, quantized-op counts, the numeric check, seconds).

Errors, all of them visible skips in reports rather than crashes:

* `ConverterMissing` (a `NotApplicable`): the converter's SDK is not installed; the message names the
  pip extra that installs it;
* `ConversionFailed` (a `NotApplicable`): the SDK ran and failed (the message names the operator when
  the SDK's message does), or its output failed the numeric check (the message gives the worst
  difference and the tolerance);
* `RecipeError`: bad input from the caller, e.g. calibration data whose shape or dtype does not fit the
  model (expected vs given).

Outputs are written atomically: to a temporary name in the target directory, renamed into place only
after they passed their checks, so a killed run never leaves a half-written file under the final name.
SDKs are imported through `require` inside the converters, typed as Any (none ships type stubs that
mypy --strict accepts), so importing a converter module is cheap and never needs its SDK.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from coordinator.compress.base import NotApplicable, RecipeError

__all__ = [
    "DYNAMIC_CHECK_BATCH",
    "MIN_INT8_TOP1_AGREEMENT",
    "RANDOM_CHECK_SAMPLES",
    "ConversionFailed",
    "Converted",
    "ConverterMissing",
    "Tolerance",
    "atomic_file",
    "check_array",
    "check_int8_classifier",
    "check_labels_fit",
    "compare_outputs",
    "eval_mode",
    "publish_files",
    "quiet",
    "random_inputs",
    "require",
    "sdk_version",
    "split_batches",
    "top1",
    "top1_agreement",
]

#: Samples per batch when a model's batch axis is dynamic (numeric checks, OpenVINO inference).
DYNAMIC_CHECK_BATCH: Final = 64
#: Samples in the seeded standard-normal batch that float conversions are checked on without check inputs.
RANDOM_CHECK_SAMPLES: Final = 8
#: An INT8 model whose top-1 agreement with its float model is below this fails its conversion: a sanity
#: floor against a broken quantization, not a quality gate (the benchmark reports accuracy).
MIN_INT8_TOP1_AGREEMENT: Final = 0.9


@dataclass(frozen=True)
class Converted:
    """A converted model: `path` is the main file (model.xml, model.tflite, model.mlpackage.zip);
    `companions` are files the agent gets next to it under their file names (the IR's model.bin);
    `notes` are for the manifest (tool + version, precision, quantized-op counts, numeric check, seconds)."""

    format: str  # "openvino_ir" | "tflite" | "coreml"
    path: Path
    companions: tuple[Path, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


class ConverterMissing(NotApplicable):
    """The converter's SDK cannot be imported; the message names the pip extra that installs it."""


class ConversionFailed(NotApplicable):
    """The converter ran but failed, or its output failed the numeric check (the message gives the worst
    difference and the tolerance)."""


def require(module: str, extra: str) -> Any:
    """Import `module` (a converter SDK) and return it, or raise ConverterMissing naming the extra.

    Any ImportError counts (a missing package, or one whose native library does not load); the message
    is e.g. ``openvino is not installed or does not import (...): pip install 'edgebench[convert-openvino]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConverterMissing(
            f"{module} is not installed or does not import ({type(exc).__name__}: {exc}); "
            f"pip install 'edgebench[{extra}]'"
        ) from exc


def sdk_version(distribution: str) -> str:
    """The installed version of a distribution (``openvino``, ``nncf``, ...), or ``unknown``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_array(
    array: np.ndarray, dims: Sequence[int | None], dtype: np.dtype[Any], *, what: str, converter: str
) -> None:
    """Check that `array` (samples stacked on axis 0) can feed a model input of `dims` and `dtype`.

    `dims` includes the batch axis, which is not compared (the converters cut the samples into the
    batches the model takes); None is a dim of any size. Raises RecipeError with the expected and
    given shape and dtype for a wrong dtype (float64 data gets a hint), a wrong rank, a fixed dim that
    differs, or no samples. `what` names the array in the message (``calibration inputs``).
    """
    expected = "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(dims)) + ")"
    given = f"{tuple(array.shape)} {array.dtype}"
    if array.dtype != dtype:
        hint = " (convert it with .astype(numpy.float32))" if array.dtype == np.float64 and dtype == np.float32 else ""
        raise RecipeError(
            f"{converter}: {what} have dtype {array.dtype}, the model's input expects {dtype}{hint}; "
            f"expected {expected} {dtype}, given {given}"
        )
    if array.ndim != len(dims) or any(
        want is not None and want != got for want, got in zip(dims[1:], array.shape[1:], strict=True)
    ):
        raise RecipeError(
            f"{converter}: {what} have shape {tuple(array.shape)}, the model's input expects {expected} "
            f"(samples stacked on the first axis); expected {expected} {dtype}, given {given}"
        )
    if len(array) == 0:
        raise RecipeError(f"{converter}: there are no {what} (given {given})")


def check_labels_fit(labels: np.ndarray | None, inputs: np.ndarray | None, converter: str) -> None:
    """Labels need inputs and one integer label per input sample; RecipeError otherwise."""
    if labels is None:
        return
    if inputs is None:
        raise RecipeError(f"{converter}: check_labels were given without check_inputs")
    if labels.shape != (len(inputs),) or not np.issubdtype(labels.dtype, np.integer):
        raise RecipeError(
            f"{converter}: check_labels have shape {tuple(labels.shape)} {labels.dtype}, expected "
            f"({len(inputs)},) integers (one per check input)"
        )


def random_inputs(dims: Sequence[int | None], dtype: np.dtype[Any], samples: int) -> np.ndarray | None:
    """A seeded standard-normal array of `samples` inputs for `dims` (batch axis replaced), for checking a
    float conversion when no check inputs were given; None when a non-batch dim is unknown or the input
    is not floating point."""
    if not np.issubdtype(dtype, np.floating) or any(d is None for d in dims[1:]):
        return None
    shape = (samples, *(int(d) for d in dims[1:] if d is not None))
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def split_batches(inputs: np.ndarray, fixed_batch: int | None) -> tuple[list[np.ndarray], int]:
    """Cut `inputs` into the batches a model takes: chunks of exactly `fixed_batch` samples (the rest is
    left out), or of at most `DYNAMIC_CHECK_BATCH` when the batch axis is dynamic (None). Returns the
    chunks and how many samples were left out."""
    if fixed_batch is None:
        return [inputs[i : i + DYNAMIC_CHECK_BATCH] for i in range(0, len(inputs), DYNAMIC_CHECK_BATCH)], 0
    usable = len(inputs) - len(inputs) % fixed_batch
    return [inputs[i : i + fixed_batch] for i in range(0, usable, fixed_batch)], len(inputs) - usable


@dataclass(frozen=True)
class Tolerance:
    """Element-wise ``|got - ref| <= atol * max(1, peak) + rtol * |ref|``, where peak is the largest |ref|
    of that output: the absolute part scales with the output's magnitude (logits of 20 and of 0.2 get
    the same relative slack)."""

    rtol: float
    atol: float

    def describe(self) -> str:
        return f"atol={self.atol:g}*max(1, max|reference|) + rtol={self.rtol:g}*|reference|"


def compare_outputs(
    reference: Sequence[np.ndarray], got: Sequence[np.ndarray], tolerance: Tolerance | None, *, what: str
) -> dict[str, Any]:
    """Compare outputs of a converted model (`got`) with the reference ones, output by output.

    Returns notes: ``max_abs_diff`` (over all outputs), ``max_rel_diff`` (max_abs_diff over the largest
    |reference|) and, when the first output is 2-D with more than one column, ``top1_agreement``.
    Raises ConversionFailed when shapes differ, when the converted model gives non-finite values where
    the reference is finite, or (with a `tolerance`) when an element is outside it: the message names the
    output, the worst element, both values, the difference and the tolerance. `what` names the
    comparison (``OpenVINO vs onnxruntime``).
    """
    if len(reference) != len(got):
        raise ConversionFailed(f"{what}: {len(got)} outputs, the reference has {len(reference)}")
    max_diff, peak_all = 0.0, 0.0
    worst: tuple[float, str] | None = None
    for i, (ref, out) in enumerate(zip(reference, got, strict=True)):
        ref64, out64 = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref64.shape != out64.shape:
            raise ConversionFailed(f"{what}: output {i} has shape {list(out64.shape)}, expected {list(ref64.shape)}")
        if ref64.size == 0:
            continue
        bad = np.isfinite(ref64) & ~np.isfinite(out64)
        if bad.any():
            raise ConversionFailed(
                f"{what}: output {i} has {int(bad.sum())} non-finite values where the reference is finite"
            )
        both = np.isfinite(ref64) & np.isfinite(out64)
        if not both.any():
            continue
        diff = np.where(both, np.abs(out64 - ref64), 0.0)
        peak = float(np.max(np.abs(ref64[both])))
        max_diff, peak_all = max(max_diff, float(diff.max())), max(peak_all, peak)
        if tolerance is None:
            continue
        allowed = tolerance.atol * max(1.0, peak) + tolerance.rtol * np.abs(np.where(both, ref64, 0.0))
        excess = diff - allowed
        flat = int(np.argmax(excess))
        if excess.flat[flat] > 0 and (worst is None or excess.flat[flat] > worst[0]):
            index = tuple(int(k) for k in np.unravel_index(flat, ref64.shape))
            worst = (
                float(excess.flat[flat]),
                f"output {i} differs by {float(diff.flat[flat]):.6g} at index {index}: reference "
                f"{float(ref64.flat[flat]):.6g}, converted {float(out64.flat[flat]):.6g}; allowed "
                f"{float(allowed.flat[flat]):.6g} ({tolerance.describe()})",
            )
    notes: dict[str, Any] = {"max_abs_diff": max_diff, "max_rel_diff": max_diff / peak_all if peak_all else 0.0}
    first_ref: np.ndarray = np.asarray(reference[0]) if len(reference) else np.empty(0)
    if first_ref.ndim == 2 and first_ref.shape[1] > 1 and len(first_ref):
        notes["top1_agreement"] = top1_agreement(first_ref, np.asarray(got[0]))
    if worst is not None:
        raise ConversionFailed(f"numeric check failed, {what}: {worst[1]} (worst element over all outputs)")
    return notes


def top1_agreement(reference: np.ndarray, got: np.ndarray) -> float:
    """Fraction of rows whose argmax matches (2-D (N, classes) outputs)."""
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(got, axis=1)))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, classes) logits against the first N labels."""
    return float(np.mean(np.argmax(logits, axis=1) == labels[: len(logits)]))


def check_int8_classifier(
    reference: np.ndarray, got: np.ndarray, labels: np.ndarray | None, check: dict[str, Any], source: str
) -> None:
    """For classifier outputs ((N, classes), classes > 1): record both accuracies when labels are given
    (``accuracy_int8`` and ``accuracy_<source>``) and require top-1 agreement with the `source` model of at
    least MIN_INT8_TOP1_AGREEMENT (ConversionFailed otherwise). Other outputs are left to the numeric check."""
    if reference.ndim != 2 or reference.shape[1] <= 1:
        return
    if labels is not None:
        check["accuracy_int8"] = top1(got, labels)
        check[f"accuracy_{source}"] = top1(reference, labels)
    agreement = top1_agreement(reference, got)
    if agreement < MIN_INT8_TOP1_AGREEMENT:
        raise ConversionFailed(
            f"numeric check failed: INT8 top-1 agreement with the {source} model is {agreement:.3f} on "
            f"{check['samples']} samples (< {MIN_INT8_TOP1_AGREEMENT}); max |difference| {check['max_abs_diff']:.4g}"
        )


def _tmp_name(target: Path) -> Path:
    """A hidden temporary name next to `target` that keeps its suffixes (some tools insist on them)."""
    return target.with_name(f".{os.getpid()}.tmp.{target.name}")


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; when the block succeeds, rename it over `target` (parents
    created); when it raises, remove it and leave `target` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise ConversionFailed(f"the converter wrote no file for {target.name}")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def publish_files(main: tuple[Path, Path], companions: Sequence[tuple[Path, Path]]) -> None:
    """Move finished files into place: (temporary, final) pairs. The main file goes last and any old one is
    removed first, so at every moment either the main file is absent or it and its companions are whole."""
    main_tmp, main_final = main
    main_final.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        main_final.unlink()
    for tmp, final in companions:
        os.replace(tmp, final)
    os.replace(main_tmp, main_final)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run the block with the torch module `model` in eval mode and restore its training flag afterwards.

    The module of a loaded `torch.export` program (``ExportedProgram.module()``) refuses ``eval()`` and
    ``train()`` (NotImplementedError): its graph was captured in one mode already, so it is used as it is.
    """
    was_training = bool(getattr(model, "training", False))
    try:
        model.eval()
        switched = True
    except NotImplementedError:
        switched = False
    try:
        yield
    finally:
        if switched:
            model.train(was_training)


@contextlib.contextmanager
def quiet(*loggers: str, env: dict[str, str] | None = None) -> Iterator[io.StringIO]:
    """Hush a converter: capture what it prints through Python's stdout/stderr (progress bars, summaries),
    ignore Python warnings, raise the named loggers to ERROR, and set environment variables for the
    duration. Yields the capture buffer. (What native code writes to the file descriptors directly is not
    captured.)"""
    buffer = io.StringIO()
    saved_env = {key: os.environ.get(key) for key in env or {}}
    saved_levels = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    try:
        os.environ.update(env or {})
        for logger, level in saved_levels:
            logger.setLevel(max(level, logging.ERROR))
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for logger, level in saved_levels:
            logger.setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
