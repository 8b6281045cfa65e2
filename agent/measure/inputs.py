"""Model inputs for a job: batches cut from an .npz dataset, or random data shaped from the model's inputs.

Dataset keys (documented in the README): `inputs` (single-input models) or `inputs/<name>` per model
input, each shaped (N, ...); optional `labels` (N,) integers; optional `reference_outputs` (N, ...) the
uncompressed model's first output, for fidelity. Files are loaded with allow_pickle=False.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.runtimes.base import InputMismatch
from agent.types import TensorInfo

Feeds = dict[str, np.ndarray]
#: Distinct batches cycled through by the timing loop (bounded so a big dataset costs bounded memory).
MAX_TIMING_BATCHES = 16


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    reference: np.ndarray | None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))


def _describe(info: TensorInfo) -> str:
    return f"{info.dtype}[{', '.join('?' if d < 0 else str(d) for d in info.shape)}]"


def load_dataset(path: Path, model_inputs: Sequence[TensorInfo]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputMismatch(f"dataset is not a readable .npz file without pickled objects: {exc}") from None
    names = [i.name for i in model_inputs]
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        key = f"inputs/{name}"
        if key in arrays:
            inputs[name] = arrays[key]
        elif len(names) == 1 and "inputs" in arrays:
            inputs[name] = arrays["inputs"]
        else:
            wanted = "'inputs'" if len(names) == 1 else ", ".join(f"'inputs/{n}'" for n in names)
            raise InputMismatch(f"dataset has keys {sorted(arrays)}, but the model's input {name!r} needs {wanted}")
    sizes = {len(a) if a.ndim else 0 for a in inputs.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise InputMismatch(f"dataset input arrays must share a non-empty first (sample) axis; got sizes {sizes}")
    n = sizes.pop()
    labels = arrays.get("labels")
    if labels is not None and (labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer)):
        raise InputMismatch(f"dataset 'labels' must be integers shaped ({n},), got {labels.dtype}{list(labels.shape)}")
    reference = arrays.get("reference_outputs")
    if reference is not None and (reference.ndim == 0 or len(reference) != n):
        raise InputMismatch(f"dataset 'reference_outputs' must have {n} rows, got shape {list(reference.shape)}")
    return Dataset(inputs, labels, reference)


def check_batch(model_inputs: Sequence[TensorInfo], feeds: Feeds) -> None:
    """Raise InputMismatch, naming the input, its declared type and what was given, unless they fit."""
    for info in model_inputs:
        arr = feeds[info.name]
        problem = ""
        if str(arr.dtype) != info.dtype:
            problem = f"dtype {arr.dtype} instead of {info.dtype}"
        elif len(info.shape) != arr.ndim:
            problem = f"{arr.ndim} dimensions instead of {len(info.shape)}"
        else:
            bad = [(ax, d, a) for ax, (d, a) in enumerate(zip(info.shape, arr.shape, strict=True)) if d >= 0 and d != a]
            if bad:
                problem = "; ".join(f"axis {ax} is {a}, the model fixes it at {d}" for ax, d, a in bad)
        if problem:
            raise InputMismatch(
                f"model input {info.name!r} expects {_describe(info)}, but the batch is "
                f"{arr.dtype}{list(arr.shape)}: {problem}. Check the dataset's shape and dtype, and the batch "
                "size (a model with a fixed batch axis needs that batch size)"
            )


def dataset_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[Feeds, slice]]:
    """Consecutive full batches (a trailing partial batch is dropped so every run has the same shape)."""
    n = dataset.size
    if batch_size > n:
        raise InputMismatch(f"batch size {batch_size} is larger than the dataset's {n} samples")
    for start in range(0, n - batch_size + 1, batch_size):
        sl = slice(start, start + batch_size)
        yield {k: v[sl] for k, v in dataset.inputs.items()}, sl


def generated_batches(model_inputs: Sequence[TensorInfo], batch_size: int, num_batches: int, seed: int) -> list[Feeds]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        feeds: Feeds = {}
        for info in model_inputs:
            shape = []
            for axis, d in enumerate(info.shape):
                if axis == 0:
                    # Axis 0 is the batch axis: follow the request, so a fixed-batch model that disagrees is
                    # reported by check_batch rather than silently measured at another batch size.
                    shape.append(batch_size)
                elif d >= 0:
                    shape.append(d)
                else:
                    raise InputMismatch(
                        f"model input {info.name!r} ({_describe(info)}) has a free dimension at axis {axis}, "
                        "so random inputs cannot be shaped; send a dataset instead"
                    )
            dtype = np.dtype(info.dtype)
            if np.issubdtype(dtype, np.floating):
                feeds[info.name] = rng.standard_normal(shape).astype(dtype)
            elif np.issubdtype(dtype, np.integer):
                feeds[info.name] = rng.integers(0, 10, size=shape).astype(dtype)
            elif dtype == np.bool_:
                feeds[info.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
            else:
                raise InputMismatch(f"cannot generate random data of dtype {info.dtype} for input {info.name!r}")
        batches.append(feeds)
    return batches
