"""PyTorch -> Core ML ML program (``.mlpackage``), shipped as one ZIP file.

The module is exported with `torch.export` (decomposed to the core ATen op set) and converted with
`coremltools.convert(..., convert_to="mlprogram")`; when `torch.export` cannot capture the model a
traced TorchScript module is converted instead (the notes say which, and why). Precision is explicit:
coremltools defaults ML programs to FLOAT16 compute, so FP32 passes `compute_precision=FLOAT32`. The
input is named ``input`` and the outputs ``logits``, ``output_1``, ... (as in the ONNX export), both
float32 with the model's NCHW shape and a fixed batch, also when the compute is FP16 (the casts are
inside the program), so the same dataset feeds every runtime. The deployment target is
`MINIMUM_DEPLOYMENT_TARGET` (iOS 16 / macOS 13: ML programs with FP16 compute and float32 I/O).

The package (a directory) is written as a ZIP file whose members are the package's files with paths
relative to the package root (``Manifest.json``, ``Data/com.apple.CoreML/model.mlmodel``, ...), in
sorted order with fixed timestamps and permissions, no directories and no symlinks: the agent extracts
it into a directory named ``<something>.mlpackage``.

Core ML prediction runs only on macOS, so no numeric check runs here; the notes say so and the agent's
accuracy pass on a Mac measures fidelity against the reference outputs.
"""

from __future__ import annotations

import re
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from coordinator.compress.base import RecipeError
from coordinator.convert.base import (
    ConversionFailed,
    Converted,
    atomic_file,
    check_array,
    eval_mode,
    quiet,
    require,
    sdk_version,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["EXTRA", "INPUT_NAME", "MINIMUM_DEPLOYMENT_TARGET", "OUTPUT_NAME", "torch_to_coreml", "zip_package"]

EXTRA: Final = "convert-coreml"
FORMAT: Final = "coreml"
INPUT_NAME: Final = "input"
OUTPUT_NAME: Final = "logits"
#: `coremltools.target` member; iOS16 is macOS 13 / watchOS 9 / tvOS 16.
MINIMUM_DEPLOYMENT_TARGET: Final = "iOS16"
#: Timestamp of every ZIP member (the earliest ZIP allows), so the archive depends on content only.
_ZIP_TIME: Final = (1980, 1, 1, 0, 0, 0)
_NO_CHECK: Final = (
    "skipped: Core ML prediction needs macOS (coremltools cannot run models on Linux); the agent's accuracy "
    "pass on a Mac compares the outputs with the reference ones"
)


def torch_to_coreml(
    model: nn.Module,
    example_shape: tuple[int, ...],
    out: Path,
    *,
    fp16: bool,
    check_inputs: np.ndarray | None = None,
) -> Converted:
    """Convert `model` (put in eval mode; its training flag is restored) to a Core ML ML program and write
    it as the ZIP file `out` (``model.mlpackage.zip``).

    `example_shape` is the fixed input batch shape (NCHW as the ONNX model). `fp16` selects FLOAT16
    compute and weights, otherwise FLOAT32. `check_inputs` are validated against the shape (RecipeError
    when they do not fit) but not run: prediction needs macOS. Notes: ``tool``, ``source``
    (``torch.export`` or ``torch.jit.trace`` with the reason), ``compute_precision``,
    ``minimum_deployment_target``, ``input_shape``, ``inputs``/``outputs`` (names), ``ops`` (ML program ops
    by type), ``weights_bytes``, ``package_bytes``, ``size_bytes`` (the ZIP), ``zip_members``,
    ``numeric_check`` (why skipped) and ``seconds``.

    Raises ConverterMissing without coremltools, RecipeError for a bad example shape or check inputs, and
    ConversionFailed when coremltools fails (naming the operator when its message does) or the package
    holds something that cannot be shipped (a symlink). `out` appears only when everything passed.
    """
    with quiet("coremltools"):  # it warns about untested torch/TensorFlow/scikit-learn versions on import
        ct = require("coremltools", EXTRA)
    import torch

    started = time.perf_counter()
    if not example_shape or any(not isinstance(d, int) or d < 1 for d in example_shape):
        raise RecipeError(f"torch_to_coreml: example_shape {example_shape} must be positive integers (batch first)")
    if check_inputs is not None:
        dims: list[int | None] = [None, *example_shape[1:]]
        check_array(check_inputs, dims, np.dtype(np.float32), what="check inputs", converter="torch_to_coreml")
    with eval_mode(model):
        example = torch.zeros(example_shape, dtype=torch.float32)
        with torch.no_grad():
            produced = model(example)
        outputs = 1 if isinstance(produced, torch.Tensor) else len(produced)
        output_names = [OUTPUT_NAME, *(f"output_{i}" for i in range(1, outputs))]
        program, source = _capture(torch, model, example)
        precision = ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32
        try:
            with quiet("coremltools"):
                mlmodel = ct.convert(
                    program,
                    inputs=[ct.TensorType(name=INPUT_NAME, shape=example_shape, dtype=np.float32)],
                    outputs=[ct.TensorType(name=name, dtype=np.float32) for name in output_names],
                    convert_to="mlprogram",
                    compute_precision=precision,
                    minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
                )
        except Exception as exc:
            raise ConversionFailed(_describe_failure(exc)) from exc
    notes: dict[str, Any] = {
        "tool": f"coremltools {sdk_version('coremltools')}",
        "source": source,
        "compute_precision": "fp16" if fp16 else "fp32",
        "minimum_deployment_target": MINIMUM_DEPLOYMENT_TARGET,
        "input_shape": list(example_shape),
        "inputs": [INPUT_NAME],
        "outputs": output_names,
        "ops": _op_counts(mlmodel.get_spec()),
    }
    with tempfile.TemporaryDirectory(prefix="edgebench-coreml-") as tmp:
        package = Path(tmp) / "model.mlpackage"
        with quiet("coremltools"):
            mlmodel.save(str(package))
            del mlmodel
            saved = ct.models.MLModel(str(package), skip_model_load=True).get_spec().description
        names = ([i.name for i in saved.input], [o.name for o in saved.output])
        if names != ([INPUT_NAME], output_names):
            expected = ([INPUT_NAME], output_names)
            raise ConversionFailed(f"the saved package has inputs/outputs {names}, expected {expected}")
        notes["weights_bytes"] = sum(p.stat().st_size for p in (package / "Data").rglob("weights/*") if p.is_file())
        notes["package_bytes"] = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
        with atomic_file(out) as tmp_zip:
            notes["zip_members"] = zip_package(package, tmp_zip)
    notes["size_bytes"] = out.stat().st_size
    notes["numeric_check"] = _NO_CHECK
    notes["seconds"] = round(time.perf_counter() - started, 3)
    return Converted(FORMAT, out, (), notes)


def zip_package(package: Path, target: Path) -> int:
    """Write the directory `package` as a ZIP file `target`; return the number of members.

    Members are the regular files under `package`, named by their POSIX path relative to it, in sorted
    order, deflated, with a fixed timestamp and mode 0644: the archive depends only on the content.
    Raises ConversionFailed for a symlink or anything else that is not a plain file or directory.
    """
    files: list[tuple[str, Path]] = []
    for path in package.rglob("*"):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ConversionFailed(f"the Core ML package holds {path.relative_to(package)}, which is not a plain file")
        if path.is_file():
            files.append((path.relative_to(package).as_posix(), path))
    files.sort()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            with path.open("rb") as source, archive.open(info, "w") as member:
                while chunk := source.read(1 << 20):
                    member.write(chunk)
    return len(files)


def _capture(torch: Any, model: nn.Module, example: Any) -> tuple[Any, str]:
    """The model as a decomposed torch.export program, or as a traced module when export fails."""
    try:
        with quiet("torch._export"):
            return torch.export.export(model, (example,)).run_decompositions({}), "torch.export"
    except Exception as export_error:
        reason = (str(export_error).strip().splitlines() or [type(export_error).__name__])[0][:300]
        try:
            with quiet(), torch.no_grad():
                traced = torch.jit.trace(model, example)
        except Exception as exc:
            raise ConversionFailed(
                f"neither torch.export ({reason}) nor torch.jit.trace ({str(exc).strip()[:300]}) can capture the model"
            ) from exc
        return traced, f"torch.jit.trace (torch.export failed: {reason})"


def _op_counts(spec: Any) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            counts.update(str(op.type) for op in block.operations if op.type != "const")
    return dict(sorted(counts.items()))


def _describe_failure(exc: BaseException) -> str:
    """coremltools' failure as one message, naming the operator when its message has one
    ("PyTorch convert function for op 'fft_rfft' not implemented.", "Unsupported fx node special_bessel_j0")."""
    text = str(exc)
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:500]
    match = re.search(r"op '([\w.:]+)'", text) or re.search(r"Unsupported fx node (\w+)", text)
    if match:
        return f"coremltools cannot convert the model: operator {match.group(1)} is not supported ({first})"
    return f"coremltools cannot convert the model: {type(exc).__name__}: {first}"
