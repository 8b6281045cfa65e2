"""Shared training helpers for the torch techniques: evaluation, (distillation) fine-tuning, parameter parsing.

Contracts:
- `evaluate` returns top-1 accuracy in [0, 1] on a labelled split; it never changes the model's weights and
  restores its train/eval mode.
- `fit` trains in place with Adam on mini-batches drawn from the split's numpy arrays. It is deterministic
  for a given `seed` (shuffling and any random layers draw from torch's RNG seeded inside a forked RNG state,
  so the caller's global RNG is left as it was); it leaves `torch.get_num_threads()` unchanged and returns
  the model in eval mode. With a `teacher` it minimises `distillation_loss`; the teacher is never updated.
- `distillation_loss` is the standard Hinton et al. (2015) loss:
  ``alpha * T² * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``,
  KL averaged over the batch. The T² factor keeps the soft-target gradients on the same scale as the hard
  ones when T changes (their magnitude otherwise shrinks as 1/T²).

torch is imported here at module level: only torch techniques import this module.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coordinator.compress.base import DataSplits, Log, RecipeError, Split

__all__ = [
    "count_params",
    "distillation_loss",
    "evaluate",
    "example_input",
    "fit",
    "param_bool",
    "param_int",
    "require_train",
    "state_dict_sizes",
    "to_tensor",
]


def _quiet(_: str) -> None:
    """A log that drops its messages."""


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor for model inputs (copies only when the dtype or layout needs it)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _labels(split: Split, what: str) -> torch.Tensor:
    if split.labels is None:
        raise RecipeError(f"{what} needs labels: the split has inputs but no labels")
    return torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.int64))


def example_input(data: DataSplits) -> torch.Tensor:
    """One sample of the evaluation split as a batch of one (for tracing, op counting, shape checks)."""
    if len(data.test) == 0:
        raise RecipeError("the dataset's 'inputs' array is empty: an example input is needed")
    return to_tensor(data.test.inputs[:1])


def require_train(data: DataSplits, technique: str) -> Split:
    """The labelled training split, or `RecipeError` saying how to provide one."""
    if data.train is None:
        raise RecipeError(f"{technique} needs a training split: add train_inputs/train_labels to the dataset")
    if data.train.labels is None:
        raise RecipeError(f"{technique} needs training labels: add train_labels to the dataset")
    return data.train


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def state_dict_sizes(model: nn.Module) -> tuple[int, int]:
    """(dense bytes, zlib-compressed bytes) of the model's state_dict as `torch.save` writes it.

    The dense size is what a dense runtime stores and loads; the compressed size is what zeros buy on disk.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return len(raw), len(zlib.compress(raw, 6))


def param_int(params: Mapping[str, str], key: str, default: int, *, low: int, high: int) -> int:
    """Read an integer parameter in [low, high]; `RecipeError` naming it otherwise."""
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RecipeError(f"parameter {key}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise RecipeError(f"parameter {key}={raw} is outside [{low}, {high}]")
    return value


def param_bool(params: Mapping[str, str], key: str, default: bool) -> bool:
    """Read a true/false parameter (true/false, yes/no, 1/0, on/off; case-insensitive)."""
    raw = params.get(key)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise RecipeError(f"parameter {key}={raw!r} must be true or false")


@torch.no_grad()
def _logits(model: nn.Module, inputs: np.ndarray, batch_size: int) -> torch.Tensor:
    outputs = [model(to_tensor(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)]
    return torch.cat(outputs)


def evaluate(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on a labelled split, in eval mode (the previous mode is restored).

    Raises `RecipeError` if the split has no labels; returns 0.0 for an empty split.
    """
    labels = _labels(split, "evaluation")
    if len(split) == 0:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        predictions = _logits(model, split.inputs, batch_size).argmax(dim=1)
    finally:
        model.train(was_training)
    return float((predictions == labels).float().mean().item())


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton knowledge-distillation loss (scalar tensor, differentiable w.r.t. the student logits).

    ``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)`` with the KL averaged
    over the batch ("batchmean"); the teacher logits are detached. `temperature` > 0, `alpha` in [0, 1].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits.detach() / t, dim=1), reduction="batchmean"
    ) * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def fit(
    model: nn.Module,
    train: Split,
    *,
    epochs: int,
    lr: float,
    seed: int,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    log: Log | None = None,
    batch_size: int = 64,
) -> list[float]:
    """Train `model` in place for `epochs` passes over `train`; return the mean loss of each epoch.

    Plain cross-entropy without a teacher; `distillation_loss(temperature, alpha)` with one (the teacher runs
    in eval mode under no_grad and is not modified). Adam(lr), shuffled mini-batches of `batch_size`, order
    and random layers seeded by `seed` inside a forked RNG state. Raises `RecipeError` if the split has no
    labels. The model is left in eval mode.
    """
    log = log or _quiet
    labels = _labels(train, "training")
    inputs = train.inputs
    n = len(train)
    losses: list[float] = []
    if epochs <= 0 or n == 0:
        model.eval()
        return losses
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        try:
            for epoch in range(epochs):
                order = torch.randperm(n, generator=generator).numpy()
                total = 0.0
                for start in range(0, n, batch_size):
                    index = order[start : start + batch_size]
                    x = to_tensor(inputs[index])
                    y = labels[torch.from_numpy(index)]
                    out = model(x)
                    if teacher is None:
                        loss = F.cross_entropy(out, y)
                    else:
                        with torch.no_grad():
                            target = teacher(x)
                        loss = distillation_loss(out, target, y, temperature, alpha)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
                    total += float(loss.item()) * len(index)
                losses.append(total / n)
                log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
        finally:
            model.eval()
            if teacher is not None:
                teacher.train(teacher_was_training)
    return losses
