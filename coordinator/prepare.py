"""Before a run: turn MODEL + `--variants` recipes + dataset into the artifacts the agents will benchmark.

Builds (or takes from the cache) every variant, keeps variants a technique cannot produce as skipped (with
the reason, shown as SKIPPED cells), and writes the benchmark dataset the agents receive: the held-out
split's `inputs` and `labels` plus `reference_outputs` computed from the uncompressed model, so every
variant's fidelity is measured against the original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.compress.base import RecipeError, load_splits
from coordinator.compress.pipeline import VariantBuilder, build_all, onnx_first_output, zip_size
from coordinator.compress.recipe import parse_recipes
from coordinator.convert.targets import TARGET_FORMATS, convert_all, precision_of
from coordinator.dispatch.client import sha256_file
from coordinator.models.sources import BUILTIN, resolve_source
from coordinator.types import Artifact, Variant

#: Formats benchmarked as given (no compression, no reference outputs computed here).
DIRECT_FORMATS = {".xml": "openvino_ir", ".tflite": "tflite", ".mlpackage": "coreml", ".json": "null"}


@dataclass(frozen=True)
class Prepared:
    variants: list[Variant]
    dataset: Path | None
    label: str


def _direct(model: Path, recipes: str, dataset: Path | None) -> Prepared:
    if not model.exists():
        raise RecipeError(f"model file {model} does not exist")
    variants = []
    for recipe in parse_recipes(recipes):
        if recipe.is_baseline:
            variants.append(
                Variant(
                    "fp32",
                    str(model.resolve()),
                    sha256_file(model),
                    DIRECT_FORMATS[model.suffix],
                    model.stat().st_size,
                    recipe="fp32",
                    notes="the model as given",
                )
            )
        else:
            variants.append(
                Variant(
                    recipe.name,
                    "",
                    "",
                    DIRECT_FORMATS[model.suffix],
                    0,
                    recipe=recipe.name,
                    notes=f"not built: {model.suffix} models are benchmarked as given; compression "
                    "needs an ONNX or PyTorch model",
                )
            )
    return Prepared(variants, dataset, model.stem)


def reference_dataset(baseline: Path, dataset: Path, cache_dir: Path) -> Path:
    """The held-out split with the uncompressed model's outputs as `reference_outputs`."""
    key = hashlib.sha256(f"{sha256_file(baseline)}|{sha256_file(dataset)}".encode()).hexdigest()[:24]
    target = cache_dir / f"bench-{key}.npz"
    if target.exists():
        return target
    splits = load_splits(dataset)
    inputs = splits.test.inputs
    if inputs.dtype != np.float32:
        raise RecipeError(f"{dataset.name}: 'inputs' is {inputs.dtype}; save it as float32")
    try:
        reference = onnx_first_output(baseline, inputs, whole_batches_only=False)
    except RecipeError as exc:
        raise RecipeError(f"{dataset.name} {exc}") from None
    arrays = {"inputs": inputs, "reference_outputs": reference.astype(np.float32)}
    if splits.test.labels is not None:
        arrays["labels"] = splits.test.labels
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(target)
    return target


def prepare(
    model: str,
    recipes: str,
    dataset: Path | None,
    cache_dir: Path,
    *,
    weights: Path | None = None,
    input_shape: str = "",
    log: Callable[[str], None] = lambda _m: None,
    formats: Sequence[str] = (),
) -> Prepared:
    """Build every variant as ONNX and convert it to each of `formats` (see `coordinator.convert.targets`)."""
    if Path(model).suffix in DIRECT_FORMATS:
        return _direct(Path(model), recipes, dataset)
    parsed = parse_recipes(recipes)
    if model == BUILTIN and dataset is None:
        from coordinator.models.builtin import make_digits_npz

        dataset = cache_dir / "builtin-digits.npz"
        if not dataset.exists():
            make_digits_npz(dataset)
    if dataset is not None and not dataset.is_file():
        raise RecipeError(f"dataset file {dataset} does not exist")
    source = resolve_source(model, weights=weights, input_shape=input_shape, dataset=dataset)
    data = load_splits(dataset) if dataset else None
    builder = VariantBuilder(cache_dir / "variants", log)
    dataset_sha256 = sha256_file(dataset) if dataset else ""
    built = build_all(builder, source, parsed, data, dataset_sha256)
    targets = [f for f in formats if f in TARGET_FORMATS]
    variants = []
    for b in built:
        if b.path is None:
            variants.append(
                Variant(
                    b.recipe.name,
                    "",
                    "",
                    "onnx",
                    0,
                    recipe=b.recipe.name,
                    parent_sha256=source.sha256,
                    notes=f"not built: {b.skipped}",
                )
            )
            continue
        others: tuple[Artifact, ...] = ()
        unconverted: tuple[tuple[str, str], ...] = ()
        if targets:
            stage = builder.stage(source, b.recipe, dataset_sha256)
            folder = builder.folder(source, b.recipe, dataset_sha256)
            others, unconverted = convert_all(targets, stage, b.recipe, data, folder, log)
        variants.append(
            Variant(
                b.recipe.name,
                str(b.path),
                b.sha256,
                "onnx",
                b.path.stat().st_size,
                recipe=b.recipe.name,
                parent_sha256=b.manifest.get("parent_sha256", ""),
                compressed_bytes=int(b.manifest.get("zip_bytes", 0) or 0) or zip_size(b.path),
                notes=source.description if b.recipe.is_baseline else "",
                others=others,
                unconverted=unconverted,
                precision=precision_of(b.recipe),
            )
        )
    bench = reference_dataset(builder.baseline(source), dataset, cache_dir) if dataset else None
    return Prepared(variants, bench, source.description or model)
