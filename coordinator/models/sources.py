"""What `edgebench run/compress MODEL` accepts, resolved into a SourceModel for the compression pipeline.

MODEL is one of: a `.onnx` file; a `.pt2` program saved by `torch.export`; `package.module:factory` (a
callable returning the nn.Module) with `--weights` (a state_dict, loaded with `weights_only=True`, so a
pickled model is refused); or `builtin` (the built-in digits CNN and its dataset). PyTorch models need an
input shape: from `--input-shape`, else the dataset's sample shape with batch 1.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from coordinator.compress.base import RecipeError
from coordinator.compress.pipeline import SourceModel
from coordinator.dispatch.client import sha256_file

BUILTIN = "builtin"


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise RecipeError(f"--input-shape {text!r} must look like 1,3,224,224") from None
    if not shape or min(shape) < 1:
        raise RecipeError(f"--input-shape {text!r} must be positive integers, batch first")
    return shape


def _shape_from_dataset(dataset: Path | None, spec: str) -> tuple[int, ...]:
    if dataset is None:
        raise RecipeError(f"{spec}: a PyTorch model needs --input-shape (e.g. 1,3,224,224) or a --dataset to infer it")
    with np.load(dataset, allow_pickle=False) as npz:
        if "inputs" not in npz.files:
            raise RecipeError(f"{dataset.name}: the dataset needs an 'inputs' array")
        return (1, *npz["inputs"].shape[1:])


def resolve_source(
    spec: str, *, weights: Path | None = None, input_shape: str = "", dataset: Path | None = None
) -> SourceModel:
    if spec == BUILTIN:
        from coordinator.models.builtin import WEIGHTS_PATH, load_teacher

        model = load_teacher()
        shape = parse_shape(input_shape) if input_shape else _shape_from_dataset(dataset, spec)
        return SourceModel(
            sha256_file(WEIGHTS_PATH), torch_model=model, example_shape=shape, description="built-in digits CNN"
        )
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise RecipeError(f"model file {path} does not exist")
        return SourceModel(sha256_file(path), onnx_path=path.resolve(), description=path.name)
    shape = parse_shape(input_shape) if input_shape else _shape_from_dataset(dataset, spec)
    if path.suffix.lower() == ".pt2":
        if not path.is_file():
            raise RecipeError(f"model file {path} does not exist")
        from coordinator.convert.onnx_export import load_exported_program

        return SourceModel(
            sha256_file(path), torch_model=load_exported_program(path), example_shape=shape, description=path.name
        )
    if ":" in spec and not path.exists():
        from coordinator.convert.onnx_export import load_factory

        model = load_factory(spec, weights)
        digest = hashlib.sha256(spec.encode() + (sha256_file(weights).encode() if weights else b"")).hexdigest()
        return SourceModel(digest, torch_model=model, example_shape=shape, description=spec)
    raise RecipeError(f"{spec}: give a .onnx file, a .pt2 program, package.module:factory, or '{BUILTIN}'")
