"""Each variant in the formats of other runtimes: which converter makes which format, and their cache.

A variant is a recipe (`channels:0.5+int8`). Its ONNX-level steps (INT8, FP16) are ONNX Runtime techniques;
every other format has its own tool for the same idea, applied to the variant as it stood before those steps
(`pipeline.Stage`): OpenVINO quantizes with NNCF, LiteRT with ai-edge-quantizer, Core ML computes in FP16 when
asked. So "int8 on openvino" is NNCF's INT8 of the same pruned network, not ONNX Runtime's QDQ file re-read.

| ONNX-level steps | openvino_ir                  | tflite                        | coreml          | torch_export |
|------------------|------------------------------|-------------------------------|-----------------|--------------|
| none             | IR, FP32 weights             | litert-torch, FP32            | FP32 mlprogram  | the program  |
| fp16             | IR, FP16 weights             | - (no FP16 path here)         | FP16 mlprogram  | -            |
| int8             | NNCF static INT8             | ai-edge-quantizer full INT8   | -               | -            |
| int8dyn          | -                            | ai-edge-quantizer dynamic INT8| -               | -            |

A "-" or a converter that is not installed or fails leaves the format out with the reason, which planning
turns into a visible SKIPPED cell. Converted files are cached in the variant's cache folder under
`targets/<format>/` with a manifest of their sha256; a file that no longer matches is converted again.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coordinator.compress.base import DataSplits, NotApplicable
from coordinator.compress.pipeline import Stage
from coordinator.compress.recipe import Recipe
from coordinator.dispatch.client import sha256_file
from coordinator.types import Artifact

#: Formats a variant can be converted to (ONNX is every built variant's primary format).
TARGET_FORMATS = ("openvino_ir", "tflite", "coreml", "torch_export")
#: Bump when a converter's output for the same input changes.
TARGETS_VERSION = "1"

Log = Callable[[str], None]
Make = Callable[[Path], Any]  # writes into a folder, returns a convert.base.Converted


def onnx_steps(recipe: Recipe) -> tuple[str, ...]:
    return tuple(s.technique for s in recipe.steps if s.stage == "onnx")


def precision_of(recipe: Recipe) -> str:
    """What a runtime should be asked to compute in for this variant."""
    steps = onnx_steps(recipe)
    if "fp16" in steps:
        return "fp16"
    return "int8" if any(s.startswith("int8") for s in steps) else "fp32"


def _torch_module(stage: Stage) -> Any:
    import torch

    assert stage.program is not None
    return torch.export.load(str(stage.program)).module()


def _check_inputs(data: DataSplits | None) -> Any:
    """The held-out split: converters check their output against the source on it (and, for INT8, accuracy
    against `_labels`, which must match it sample for sample)."""
    return None if data is None else data.test.inputs


def _labels(data: DataSplits | None) -> Any:
    return None if data is None else data.test.labels


def _calibration(data: DataSplits | None, fmt: str) -> Any:
    if data is None:
        raise NotApplicable(f"INT8 for {fmt} calibrates on the dataset; give --dataset D.npz")
    return data.calibration_inputs()


class _Lazy:
    """A converter module imported on first use, so deciding *whether* a format can be made never needs it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(f"coordinator.convert.{self._name}"), attr)


def _converter(name: str) -> Any:
    return _Lazy(name)


def _plan(fmt: str, stage: Stage, steps: tuple[str, ...], data: DataSplits | None) -> tuple[Make, str]:
    """(the function that converts into a folder, a short description) or NotApplicable with the reason."""
    shown = "+".join(steps) or "fp32"
    if fmt == "openvino_ir":
        ov = _converter("openvino_ir")
        if steps in ((), ("fp16",)):
            fp16 = steps == ("fp16",)
            desc = f"OpenVINO IR, {'FP16' if fp16 else 'FP32'} weights"
            return (lambda d: ov.onnx_to_ir(stage.onnx, d, fp16_weights=fp16, check_inputs=_check_inputs(data))), desc
        if steps == ("int8",):
            calibration = _calibration(data, "OpenVINO")
            return (
                lambda d: ov.nncf_int8(
                    stage.onnx, d, calibration, check_inputs=_check_inputs(data), check_labels=_labels(data)
                )
            ), "OpenVINO IR, NNCF static INT8"
        raise NotApplicable(f"no OpenVINO form of {shown} (OpenVINO's INT8 is NNCF static quantization: recipe int8)")
    if fmt in ("tflite", "coreml", "torch_export") and stage.program is None:
        raise NotApplicable(f"{fmt} is made from the PyTorch model: {stage.program_missing}")
    if fmt == "tflite":
        tflite = _converter("tflite")

        def float_tflite(folder: Path) -> Any:
            return tflite.torch_to_tflite(
                _torch_module(stage), stage.example_shape, folder / "model.tflite", check_inputs=_check_inputs(data)
            )

        if not steps:

            def fp32(folder: Path) -> Any:
                path, notes = _stage_tflite(stage, float_tflite)
                shutil.copyfile(path, folder / "model.tflite")
                return _converter("base").Converted("tflite", folder / "model.tflite", (), notes)

            return fp32, "TFLite (litert-torch), FP32"
        if steps == ("int8",):
            calibration = _calibration(data, "TFLite")

            def full_int8(folder: Path) -> Any:
                return tflite.quantize_int8(
                    _stage_tflite(stage, float_tflite)[0],
                    folder / "model.tflite",
                    calibration,
                    check_inputs=_check_inputs(data),
                    check_labels=_labels(data),
                )

            return full_int8, "TFLite, full-integer INT8 (ai-edge-quantizer)"
        if steps == ("int8dyn",):

            def dynamic_int8(folder: Path) -> Any:
                return tflite.quantize_dynamic_int8(_stage_tflite(stage, float_tflite)[0], folder / "model.tflite")

            return dynamic_int8, "TFLite, dynamic INT8 weights (ai-edge-quantizer)"
        raise NotApplicable(f"no TFLite form of {shown} in this version (TFLite variants: fp32, int8, int8dyn)")
    if fmt == "coreml":
        coreml = _converter("coreml")
        if steps in ((), ("fp16",)):
            fp16 = steps == ("fp16",)
            return (
                lambda d: coreml.torch_to_coreml(
                    _torch_module(stage),
                    stage.example_shape,
                    d / "model.mlpackage.zip",
                    fp16=fp16,
                    check_inputs=_check_inputs(data),
                )
            ), f"Core ML mlprogram, {'FP16' if fp16 else 'FP32'}"
        raise NotApplicable(f"no Core ML form of {shown} in this version (Core ML variants: fp32, fp16)")
    if fmt == "torch_export":
        if steps:
            raise NotApplicable(f"eager PyTorch runs the network as trained; {shown} is an ONNX-level step")
        return _copy_program(stage), "torch.export program (eager PyTorch)"
    raise NotApplicable(f"unknown target format {fmt!r}; known: {', '.join(TARGET_FORMATS)}")


def _stage_tflite(stage: Stage, make: Make) -> tuple[Path, dict[str, Any]]:
    """The float TFLite of a stage and its conversion notes, converted once beside the stage's program (the FP32
    and INT8 forms all start from it). A sidecar holds its sha256, so a changed file is converted again."""
    assert stage.program is not None
    target = stage.program.with_suffix(".tflite")
    sidecar = target.with_suffix(".tflite.json")
    try:
        known = json.loads(sidecar.read_text())
        if target.is_file() and known["sha256"] == sha256_file(target):
            return target, dict(known["notes"])
    except (OSError, ValueError, KeyError):
        pass
    with tempfile.TemporaryDirectory(prefix="edgebench-tflite-", dir=target.parent) as tmp:
        converted = make(Path(tmp))
        made = Path(converted.path)
        sidecar.write_text(json.dumps({"sha256": sha256_file(made), "notes": converted.notes}, default=str))
        made.replace(target)
    return target, dict(converted.notes)


def _copy_program(stage: Stage) -> Make:
    def copy(folder: Path) -> Any:
        assert stage.program is not None
        target = folder / "model.pt2"
        shutil.copyfile(stage.program, target)
        return _converter("base").Converted("torch_export", target)

    return copy


def _artifact(folder: Path, manifest: dict[str, Any]) -> Artifact:
    main = folder / manifest["main"]
    return Artifact(
        format=manifest["format"],
        path=str(main),
        sha256=manifest["files"][manifest["main"]],
        size_bytes=main.stat().st_size,
        companions=tuple((name, str(folder / name), manifest["files"][name]) for name in manifest["companions"]),
        notes=manifest["description"],
    )


def _cached(folder: Path, log: Log) -> Artifact | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != TARGETS_VERSION:
        return None
    for name, sha in manifest.get("files", {}).items():
        if not (folder / name).is_file() or sha256_file(folder / name) != sha:
            log(f"cached {manifest.get('format')} file {name} changed (hash mismatch); converting again")
            return None
    return _artifact(folder, manifest)


def convert(fmt: str, stage: Stage, recipe: Recipe, data: DataSplits | None, cache: Path, log: Log) -> Artifact:
    """The variant in `fmt` (cached). Raises NotApplicable (ConverterMissing, ConversionFailed) with the reason."""
    folder = cache / "targets" / fmt
    cached = _cached(folder, log)
    if cached is not None:
        return cached
    make, description = _plan(fmt, stage, onnx_steps(recipe), data)
    log(f"{recipe.name}: converting to {fmt} ({description})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{fmt}-", dir=folder.parent))
    try:
        started = time.monotonic()
        converted = make(work)
        main = Path(converted.path)
        names = [main.name, *(Path(c).name for c in converted.companions)]
        for name, src in zip(names, [main, *map(Path, converted.companions)], strict=True):
            if src.parent != work:
                shutil.copyfile(src, work / name)
        manifest = {
            "version": TARGETS_VERSION,
            "format": fmt,
            "main": names[0],
            "companions": names[1:],
            "files": {n: sha256_file(work / n) for n in names},
            "description": description,
            "seconds": round(time.monotonic() - started, 2),
            "notes": converted.notes,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        work.replace(folder)  # the finished folder appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _artifact(folder, manifest)


def convert_all(
    formats: Sequence[str], stage: Stage, recipe: Recipe, data: DataSplits | None, cache: Path, log: Log
) -> tuple[tuple[Artifact, ...], tuple[tuple[str, str], ...]]:
    """Every wanted format: the artifacts made and, for the rest, why not."""
    made: list[Artifact] = []
    missing: list[tuple[str, str]] = []
    for fmt in formats:
        try:
            made.append(convert(fmt, stage, recipe, data, cache, log))
        except NotApplicable as exc:
            log(f"{recipe.name}: no {fmt}: {exc}")
            missing.append((fmt, str(exc)))
        except Exception as exc:  # a converter library failing in a way its module did not foresee
            log(f"{recipe.name}: {fmt} conversion crashed: {type(exc).__name__}: {exc}")
            missing.append((fmt, f"conversion crashed: {type(exc).__name__}: {str(exc)[:300]}"))
    return tuple(made), tuple(missing)
