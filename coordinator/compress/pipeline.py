"""Builds the variants a recipe list asks for: torch steps, one checked export, ONNX steps, a manifest.

Results are cached by (source model sha256, canonical recipe, dataset sha256): a cached variant is reused
only if its file still hashes to what its manifest recorded, so a corrupted cache entry is rebuilt, never
benchmarked. A technique that does not apply yields a skipped variant with the reason; a bad recipe or
parameter raises RecipeError.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.compress.base import DataSplits, Log, NotApplicable, RecipeError, StepReport
from coordinator.compress.recipe import MODULES, Recipe, Step
from coordinator.dispatch.client import sha256_file

#: 3: the torch stage (the model after a recipe's torch steps, as stage.pt2 + stage.onnx) is cached on its own,
#: keyed by those steps, so `channels:0.5` and `channels:0.5+int8` fine-tune once, and converters start from it.
CACHE_VERSION = "3"


@dataclass(frozen=True)
class SourceModel:
    """The model to compress: an ONNX file, or a PyTorch module (with an example input shape for export)."""

    sha256: str
    onnx_path: Path | None = None
    torch_model: Any = None
    example_shape: tuple[int, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Stage:
    """A variant as it stands before its ONNX-level steps (INT8, FP16): what converters to other formats start
    from, since each format has its own quantizer. `program` is a torch.export file (None, with the reason,
    when the model came as ONNX or could not be exported)."""

    onnx: Path
    program: Path | None
    program_missing: str = ""
    example_shape: tuple[int, ...] = ()


@dataclass
class BuiltVariant:
    recipe: Recipe
    path: Path | None
    sha256: str = ""
    skipped: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


def zip_size(path: Path) -> int:
    """Size after DEFLATE (what sparse weights buy in storage and download)."""
    return len(zlib.compress(path.read_bytes(), 6))


def onnx_first_output(path: Path, inputs: np.ndarray, *, whole_batches_only: bool) -> np.ndarray:
    """The model's first output over `inputs`, batch by batch (256 at a time for a dynamic batch axis). A fixed
    batch axis cannot take a partial last batch: with `whole_batches_only` the trailing rows are left out,
    otherwise they are fed as they are (and a model that refuses them is reported)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = session.get_inputs()[0]
    fixed = isinstance(declared.shape[0], int) and declared.shape[0] > 0
    step = declared.shape[0] if fixed else 256
    usable = len(inputs) - len(inputs) % step if fixed and whole_batches_only else len(inputs)
    try:
        outputs = [session.run(None, {declared.name: inputs[i : i + step]})[0] for i in range(0, usable, step)]
    except Exception as exc:  # onnxruntime's own error types
        raise RecipeError(f"does not fit the model's input {declared.name} {declared.shape}: {exc}") from None
    return np.concatenate(outputs) if outputs else np.empty((0,), dtype=np.float32)


def top1_onnx(path: Path, data: DataSplits) -> float | None:
    """Top-1 accuracy of an ONNX model on the held-out split (None without labels)."""
    if data.test.labels is None:
        return None
    logits = onnx_first_output(path, data.test.inputs.astype(np.float32), whole_batches_only=True)
    if not len(logits):
        return None
    return int((logits.argmax(axis=1) == data.test.labels[: len(logits)]).sum()) / len(logits)


def _technique(name: str) -> Any:
    return importlib.import_module(MODULES[name]).TECHNIQUE


def _export(model: Any, example_shape: tuple[int, ...], target: Path) -> None:
    import torch

    from coordinator.convert.onnx_export import export_onnx

    export_onnx(model, torch.zeros(example_shape, dtype=torch.float32), target)


def _save_program(model: Any, example_shape: tuple[int, ...], target: Path) -> tuple[Path | None, str]:
    """Save `model` as a torch.export program (atomically); (None, reason) if torch.export cannot trace it."""
    import torch

    tmp = target.with_suffix(".tmp.pt2")
    try:
        program = torch.export.export(model.eval(), (torch.zeros(example_shape, dtype=torch.float32),))
        torch.export.save(program, str(tmp))
    except Exception as exc:  # torch.export raises many kinds (Unsupported, UserError, ...)
        tmp.unlink(missing_ok=True)
        return None, f"torch.export could not trace the model: {type(exc).__name__}: {str(exc)[:300]}"
    tmp.replace(target)
    return target, ""


class VariantBuilder:
    def __init__(self, cache_dir: Path, log: Log = lambda _m: None) -> None:
        self.cache_dir = cache_dir
        self.log = log
        cache_dir.mkdir(parents=True, exist_ok=True)

    def baseline(self, source: SourceModel) -> Path:
        """The uncompressed model as ONNX (exported once and cached when the source is PyTorch)."""
        if source.onnx_path is not None:
            return source.onnx_path
        target = self.cache_dir / f"{source.sha256[:16]}-fp32.onnx"
        if not target.exists():
            self.log("exporting the PyTorch model to ONNX (numerically checked)")
            tmp = target.with_suffix(".tmp.onnx")
            _export(source.torch_model, source.example_shape, tmp)
            tmp.replace(target)
        return target

    def baseline_program(self, source: SourceModel) -> tuple[Path | None, str]:
        """The uncompressed model as a torch.export program (cached), or None and why not."""
        if source.torch_model is None:
            return None, "the model was given as ONNX; converters that start from PyTorch need the PyTorch model"
        target = self.cache_dir / f"{source.sha256[:16]}-fp32.pt2"
        if target.exists():
            return target, ""
        return _save_program(source.torch_model, source.example_shape, target)

    def folder(self, source: SourceModel, recipe: Recipe, dataset_sha256: str) -> Path:
        """Where a (non-baseline) variant and everything converted from it are cached."""
        if recipe.is_baseline:
            return self.cache_dir / f"{source.sha256[:16]}-fp32"
        key = hashlib.sha256(f"{CACHE_VERSION}|{source.sha256}|{recipe.name}|{dataset_sha256}".encode()).hexdigest()
        return self.cache_dir / key[:24]

    def stage_dir(self, source: SourceModel, torch_steps: Sequence[Step], dataset_sha256: str) -> Path:
        """Where the model after `torch_steps` is cached (shared by every recipe that starts with them)."""
        steps = "+".join(s.text() for s in torch_steps)
        key = hashlib.sha256(f"{CACHE_VERSION}|{source.sha256}|{steps}|{dataset_sha256}".encode()).hexdigest()
        return self.cache_dir / f"stage-{key[:24]}"

    def stage(self, source: SourceModel, recipe: Recipe, dataset_sha256: str) -> Stage:
        """The variant before its ONNX-level steps (see `Stage`); the variant must have been built."""
        torch_steps = [s for s in recipe.steps if s.stage == "torch"]
        if not torch_steps:
            program, missing = self.baseline_program(source)
            return Stage(self.baseline(source), program, missing, source.example_shape)
        folder = self.stage_dir(source, torch_steps, dataset_sha256)
        manifest = json.loads((folder / "manifest.json").read_text())
        if (folder / "stage.pt2").exists():
            return Stage(folder / "stage.onnx", folder / "stage.pt2", "", source.example_shape)
        return Stage(folder / "stage.onnx", None, str(manifest.get("program_error") or "no torch.export program"))

    def _torch_stage(
        self, source: SourceModel, torch_steps: Sequence[Step], data: DataSplits, folder: Path
    ) -> list[StepReport]:
        """Apply `torch_steps` (or reuse their cached result) into `folder`; the reports of what they did."""
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if sha256_file(folder / "stage.onnx") == manifest["onnx_sha256"]:
                self.log(f"reusing the cached result of {'+'.join(s.text() for s in torch_steps)}")
                return [StepReport(r["technique"], r["params"], r["notes"], r["seconds"]) for r in manifest["steps"]]
        except (OSError, ValueError, KeyError):
            pass
        if source.torch_model is None:
            raise NotApplicable(
                f"{torch_steps[0].technique} needs the PyTorch model (give the model as "
                "package.module:factory or a .pt2 program), not an ONNX file"
            )
        shutil.rmtree(folder, ignore_errors=True)
        reports = []
        model = copy.deepcopy(source.torch_model)
        for step in torch_steps:
            started = time.monotonic()
            self.log(f"{step.text()}: {step.technique}")
            model, report = _technique(step.technique).apply(model, data, dict(step.params), self.log)
            report.seconds = time.monotonic() - started
            reports.append(report)
        model.eval()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "stage.tmp.onnx"
        _export(model, source.example_shape, tmp)
        tmp.replace(folder / "stage.onnx")
        _path, program_error = _save_program(model, source.example_shape, folder / "stage.pt2")
        manifest = {
            "onnx_sha256": sha256_file(folder / "stage.onnx"),
            "program_error": program_error,
            "steps": [
                {"technique": r.technique, "params": r.params, "seconds": round(r.seconds, 2), "notes": r.notes}
                for r in reports
            ],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))  # written last
        return reports

    def build(self, source: SourceModel, recipe: Recipe, data: DataSplits | None, dataset_sha256: str) -> BuiltVariant:
        if recipe.is_baseline:
            path = self.baseline(source)
            return BuiltVariant(recipe, path, sha256_file(path), manifest={"recipe": "fp32", "parent_sha256": ""})
        folder = self.folder(source, recipe, dataset_sha256)
        cached = self._cached(folder)
        if cached is not None:
            return BuiltVariant(recipe, folder / "variant.onnx", cached["sha256"], cached.get("skipped", ""), cached)
        try:
            manifest = self._build(source, recipe, data, folder, dataset_sha256)
        except NotApplicable as exc:
            manifest = {"recipe": recipe.name, "skipped": str(exc), "parent_sha256": source.sha256}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
            return BuiltVariant(recipe, None, skipped=str(exc), manifest=manifest)
        return BuiltVariant(recipe, folder / "variant.onnx", manifest["sha256"], manifest=manifest)

    def _cached(self, folder: Path) -> dict[str, Any] | None:
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            return None
        try:
            manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get("skipped"):
            return manifest
        variant = folder / "variant.onnx"
        if manifest.get("sha256") and variant.exists() and sha256_file(variant) == manifest["sha256"]:
            self.log(f"using cached variant {manifest.get('recipe')}")
            return manifest
        self.log(f"cached variant in {folder.name} is corrupted (hash mismatch); rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def _build(
        self, source: SourceModel, recipe: Recipe, data: DataSplits | None, folder: Path, dataset_sha256: str
    ) -> dict[str, Any]:
        if data is None:
            raise RecipeError(f"{recipe.name}: compression needs a dataset (--dataset D.npz, see README 'Datasets')")
        reports: list[StepReport] = []
        torch_steps = [s for s in recipe.steps if s.stage == "torch"]
        onnx_steps = [s for s in recipe.steps if s.stage == "onnx"]
        with tempfile.TemporaryDirectory(prefix="edgebench-compress-") as tmp:
            current = Path(tmp) / "step0.onnx"
            if torch_steps:
                stage = self.stage_dir(source, torch_steps, dataset_sha256)
                reports += self._torch_stage(source, torch_steps, data, stage)
                shutil.copyfile(stage / "stage.onnx", current)
            else:
                shutil.copyfile(self.baseline(source), current)
            for i, step in enumerate(onnx_steps, start=1):
                started = time.monotonic()
                self.log(f"{recipe.name}: {step.technique}")
                target = Path(tmp) / f"step{i}.onnx"
                report = _technique(step.technique).apply(current, target, data, dict(step.params), self.log)
                report.seconds = time.monotonic() - started
                reports.append(report)
                current = target
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / "variant.onnx"
            shutil.copyfile(current, final)
        baseline = self.baseline(source)
        manifest = {
            "recipe": recipe.name,
            "parent_sha256": source.sha256,
            "sha256": sha256_file(final),
            "size_bytes": final.stat().st_size,
            "zip_bytes": zip_size(final),
            "baseline_size_bytes": baseline.stat().st_size,
            "accuracy_top1": top1_onnx(final, data),
            "baseline_accuracy_top1": top1_onnx(baseline, data),
            "steps": [
                {"technique": r.technique, "params": r.params, "seconds": round(r.seconds, 2), "notes": r.notes}
                for r in reports
            ],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        return manifest


def build_all(
    builder: VariantBuilder,
    source: SourceModel,
    recipes: Sequence[Recipe],
    data: DataSplits | None,
    dataset_sha256: str,
) -> list[BuiltVariant]:
    return [builder.build(source, r, data, dataset_sha256) for r in recipes]
