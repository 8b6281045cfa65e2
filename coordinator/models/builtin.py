"""The built-in model and data set: a small CNN trained on scikit-learn's handwritten digits.

Data: `sklearn.datasets.load_digits` (1,797 real 8×8 grey-scale digits, 10 classes, shipped inside
scikit-learn, so nothing is downloaded). Pixels 0..16 are scaled to [0, 1] and then normalised with
the fixed constants `PIXEL_MEAN`/`PIXEL_STD`; each image is upsampled **bilinearly to 32×32**
(`torch.nn.functional.interpolate`, ``align_corners=False``). The upsampling is deliberate: at 8×8 the
CNN costs a few tens of microseconds per image and compression effects drown in timing noise; at 32×32
with the width-1.0 channels (48, 96, 192) it is about 1 ms with onnxruntime on a 2-core x86 CPU (batch 1,
~64 M multiply-adds), and the images stay smooth (bilinear rather than pixel-repeating `np.kron`) so
convolutions see natural edges. (48×48 inputs with narrower channels cost the same but learned slower:
the receptive field then covers less of the digit.) Inputs are float32 NCHW ``(N, 1, 32, 32)``.

Splits (stratified by class, fixed seed `SPLIT_SEED`): train 1,200 / calibration 200 / test 397.
`make_digits_npz` writes them with the keys of the dataset contract (`coordinator.compress.base`):
``inputs``/``labels`` (test), ``train_inputs``/``train_labels``, ``calibration_inputs``/
``calibration_labels``.

Model: `DigitsCNN(width)`, Conv-BN-ReLU blocks with two stride-2 downsamplings, global average pooling
and a linear classifier; every channel count scales with `width`, so ``DigitsCNN(0.5)`` is a narrower
student of the same family. The trained teacher (width 1.0) ships as a state_dict in
``coordinator/models/data/digits_cnn.pt`` (regenerate with ``scripts/train_builtin.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from coordinator.compress.base import DataSplits, Split

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "SPLIT_SIZES",
    "TEACHER_WEIGHTS",
    "WEIGHTS_PATH",
    "DigitsCNN",
    "builtin_paths",
    "digits_splits",
    "evaluate",
    "load_teacher",
    "make_digits_npz",
    "split_indices",
    "train",
]

NUM_CLASSES: Final = 10
IMAGE_SIZE: Final = 32
#: (train, calibration, test) sizes; they add up to the 1,797 images of the data set.
SPLIT_SIZES: Final = (1200, 200, 397)
SPLIT_SEED: Final = 0
#: Normalisation of the [0, 1]-scaled pixels (about the data set's mean and standard deviation).
PIXEL_MEAN: Final = 0.3
PIXEL_STD: Final = 0.32
#: Shipped weights of the trained width-1.0 teacher (a state_dict).
TEACHER_WEIGHTS: Final = Path(__file__).with_name("data") / "digits_cnn.pt"
#: The same path under the name `coordinator.models.sources` uses.
WEIGHTS_PATH: Final = TEACHER_WEIGHTS
#: Training settings `scripts/train_builtin.py` uses for the shipped teacher.
TEACHER_EPOCHS: Final = 3
TEACHER_LR: Final = 3e-3
TEACHER_SEED: Final = 0

_BASE_CHANNELS: Final = (48, 96, 192)
_ONNX_NAME: Final = "digits_cnn.onnx"
_NPZ_NAME: Final = "digits.npz"

# numpy's stub types `**kwds` of savez so that a dict of arrays clashes with its `allow_pickle: bool`.
_savez: Callable[..., None] = np.savez


def _preprocess(images: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """(N, 8, 8) pixels 0..16 -> normalised float32 (N, 1, 32, 32), bilinearly upsampled."""
    scaled = torch.from_numpy((images / 16.0).astype(np.float32)).unsqueeze(1)
    upsampled = nn.functional.interpolate(scaled, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    normalised: npt.NDArray[np.float32] = ((upsampled - PIXEL_MEAN) / PIXEL_STD).numpy().astype(np.float32)
    return normalised


def split_indices() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sorted indices into `load_digits()` of the (train, calibration, test) splits.

    Contract: deterministic (two stratified `train_test_split` calls with `SPLIT_SEED`: test first, then
    calibration out of the rest); sizes `SPLIT_SIZES`; disjoint, and together every index once.
    """
    from sklearn.model_selection import train_test_split

    labels = _digits()[1]
    _, n_calibration, n_test = SPLIT_SIZES
    indices = np.arange(len(labels), dtype=np.int64)
    rest, test = train_test_split(indices, test_size=n_test, stratify=labels, random_state=SPLIT_SEED)
    train_idx, calibration_idx = train_test_split(
        rest, test_size=n_calibration, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return np.sort(train_idx), np.sort(calibration_idx), np.sort(test)


def _digits() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """scikit-learn's digits: images (1797, 8, 8) with pixels 0..16, and int64 labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def digits_splits() -> DataSplits:
    """The preprocessed digits as train / calibration / test splits (all with int64 labels).

    Contract: the splits of `split_indices` (deterministic, stratified, disjoint, sizes `SPLIT_SIZES`);
    inputs float32 (N, 1, 32, 32) as described in the module docstring; images in index order.
    """
    images, labels = _digits()
    inputs = _preprocess(images)
    train_idx, calibration_idx, test_idx = split_indices()

    def split(idx: npt.NDArray[np.int64]) -> Split:
        return Split(np.ascontiguousarray(inputs[idx]), labels[idx])

    return DataSplits(test=split(test_idx), train=split(train_idx), calibration=split(calibration_idx))


def make_digits_npz(path: Path) -> Path:
    """Write the digits splits to `path` as an uncompressed, pickle-free `.npz`; return `path`.

    Keys: ``inputs``, ``labels`` (test), ``train_inputs``, ``train_labels``, ``calibration_inputs``,
    ``calibration_labels``. Written to a temporary file and renamed, so `path` is never half-written;
    parent directories are created; the content is deterministic.
    """
    splits = digits_splits()
    assert splits.train is not None and splits.calibration is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        _savez(
            handle,
            inputs=splits.test.inputs,
            labels=splits.test.labels,
            train_inputs=splits.train.inputs,
            train_labels=splits.train.labels,
            calibration_inputs=splits.calibration.inputs,
            calibration_labels=splits.calibration.labels,
        )
    os.replace(tmp, path)
    return path


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU classifier for (N, 1, 32, 32) digits; channels scale with `width`.

    Layout (c = 48·width, at least 4): stem 3×3 conv 1→c at 32×32; stage 1: c→2c stride 2 (16×16),
    2c→2c; stage 2: 2c→4c stride 2 (8×8), 4c→4c; global average pool; linear 4c→10. Blocks are
    ``nn.Sequential(Conv2d(bias=False), BatchNorm2d, ReLU)`` under `features`, so structured pruning
    sees plain convolutions. Output: logits (N, 10).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0; got {width}")
        self.width = width
        c1, c2, c3 = (max(4, round(base * width)) for base in _BASE_CHANNELS)
        self.features = nn.Sequential(
            _block(1, c1, stride=1),
            _block(c1, c2, stride=2),
            _block(c2, c2, stride=1),
            _block(c2, c3, stride=2),
            _block(c3, c3, stride=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits


def _block(cin: int, cout: int, *, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def evaluate(model: nn.Module, split: Split, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (put in eval mode) on a labelled split, in [0, 1]."""
    if split.labels is None:
        raise ValueError("evaluate needs a split with labels")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            logits = model(torch.from_numpy(split.inputs[start : start + batch_size]))
            correct += int((logits.argmax(1).numpy() == split.labels[start : start + batch_size]).sum())
    return correct / len(split)


def train(
    model: nn.Module,
    splits: DataSplits,
    epochs: int = TEACHER_EPOCHS,
    lr: float = TEACHER_LR,
    seed: int = TEACHER_SEED,
    *,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> float:
    """Train `model` in place on `splits.train` with Adam + one-cycle LR; return test accuracy in [0, 1].

    Contract: seeded (`torch.manual_seed(seed)` and a seeded generator for shuffling and augmentation;
    no dropout): the same call in the same process gives bit-identical weights; across processes
    multi-threaded CPU kernels may differ in the last bits (the shipped teacher's settings gave 98.7% to
    99.5% test accuracy over runs). Label smoothing 0.05; random ±2-pixel shifts as augmentation; the
    learning rate follows a one-cycle schedule peaking at `lr`. The model is left in eval mode.
    Raises ValueError without a labelled train split or with epochs < 1.
    """
    if splits.train is None or splits.train.labels is None:
        raise ValueError("train needs a labelled train split")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(splits.train.inputs)
    labels = torch.from_numpy(splits.train.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(inputs) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), batch_size):
            idx = order[start : start + batch_size]
            batch = _shift(inputs[idx], generator)
            optimizer.zero_grad()
            loss = loss_fn(model(batch), labels[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(inputs):.4f}")
    return evaluate(model, splits.test)


def _shift(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Roll the whole batch by one random (dy, dx) in [-max_shift, max_shift] (background is uniform)."""
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def load_teacher() -> nn.Module:
    """The shipped, trained `DigitsCNN(1.0)` teacher in eval mode (weights read with weights_only=True)."""
    model = DigitsCNN(1.0)
    state = torch.load(TEACHER_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def builtin_paths(cache_dir: Path) -> tuple[Path, Path]:
    """The teacher as ONNX and the digits `.npz` under `cache_dir`, built on first use; returns both paths.

    Contract: the ONNX file (`export_onnx`: self-contained, opset 18, dynamic batch, numerically
    checked) and the `.npz` are rebuilt when missing or when the recorded key no longer matches; the key
    is the sha256 of the shipped weights (for the ONNX file) or the split settings (for the `.npz`),
    kept in a ``.sha`` file beside each output, so new weights invalidate the cache. Each output is
    written atomically.
    """
    from coordinator.convert.onnx_export import export_onnx

    cache_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = cache_dir / _ONNX_NAME
    npz_path = cache_dir / _NPZ_NAME
    onnx_key = _sha256(TEACHER_WEIGHTS)
    npz_key = hashlib.sha256(repr((SPLIT_SIZES, SPLIT_SEED, IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD)).encode()).hexdigest()

    def fresh(path: Path, key: str) -> bool:
        stamp = path.with_name(path.name + ".sha")
        return path.is_file() and stamp.is_file() and stamp.read_text().strip() == key

    def stamp(path: Path, key: str) -> None:
        path.with_name(path.name + ".sha").write_text(key + "\n")

    if not fresh(onnx_path, onnx_key):
        example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        export_onnx(load_teacher(), example, onnx_path)
        stamp(onnx_path, onnx_key)
    if not fresh(npz_path, npz_key):
        make_digits_npz(npz_path)
        stamp(npz_path, npz_key)
    return onnx_path, npz_path
