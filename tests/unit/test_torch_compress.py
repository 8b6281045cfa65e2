"""Tests of the torch compression techniques (unstructured pruning, channel pruning, distillation) and the
shared training helpers, on a tiny CNN family and an easy synthetic 8×8 four-class task (seconds on CPU)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.compress import distill, prune_channels, prune_unstructured
from coordinator.compress.base import DataSplits, NotApplicable, RecipeError, Split
from coordinator.compress.train import distillation_loss, evaluate, fit

CLASSES = 4


class TinyCNN(nn.Module):
    """Two convolutions and a linear classifier; `width` scales the channel counts (a model family)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2 = max(1, round(8 * width)), max(1, round(16 * width))
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(c2 * 2 * 2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x).flatten(1))
        return out


class NoWidthCNN(nn.Module):
    """A CNN whose class takes no width: distillation cannot build a student from it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def make_split(n: int, seed: int) -> Split:
    """8×8 images; class k lights up quadrant k, plus Gaussian noise — learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=n)
    images = rng.normal(0.0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        images[i, 0, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 1.0
    return Split(images, labels.astype(np.int64))


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return DataSplits(test=make_split(128, 1), train=make_split(256, 0))


@pytest.fixture(scope="module")
def trained(data: DataSplits) -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN()
    assert data.train is not None
    fit(model, data.train, epochs=4, lr=1e-2, seed=0)
    assert evaluate(model, data.test) > 0.9
    return model


def quiet(_: str) -> None:
    pass


def no_train(data: DataSplits) -> DataSplits:
    return DataSplits(test=data.test)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- the distillation loss ----------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def test_distillation_loss_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)) * 3, rng.normal(size=(5, 3)) * 3
    y = np.array([0, 1, 2, 1, 0])
    temperature, alpha = 3.0, 0.6
    p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
    kl = float(np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(s))  # batch mean of KL(teacher || student)
    ce = float(-np.mean(np.log(_softmax(s)[np.arange(5), y])))
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    got = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # Soft targets, not the teacher's argmax: teachers with the same argmax but other confidences differ.
    flatter = distillation_loss(torch.tensor(s), torch.tensor(t) / 4, torch.tensor(y), temperature, 1.0)
    sharper = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature, 1.0)
    assert not math.isclose(flatter.item(), sharper.item(), rel_tol=1e-3)
    # alpha = 0 is plain cross-entropy.
    plain = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature, 0.0)
    assert plain.item() == pytest.approx(ce, rel=1e-9)


def test_distillation_loss_gradient_has_the_t_squared_scaling() -> None:
    rng = np.random.default_rng(1)
    s0, t = rng.normal(size=(4, 5)), torch.tensor(rng.normal(size=(4, 5)))
    y = torch.tensor([0, 1, 2, 3])

    def soft_grad(temperature: float) -> np.ndarray:
        s = torch.tensor(s0, requires_grad=True)
        distillation_loss(s, t, y, temperature, 1.0).backward()  # type: ignore[no-untyped-call]
        assert s.grad is not None
        grad: np.ndarray = s.grad.numpy()
        return grad

    for temperature in (1.0, 4.0):  # exact: d/ds = T * (softmax(s/T) - softmax(t/T)) / N
        expected = temperature * (_softmax(s0 / temperature) - _softmax(t.numpy() / temperature)) / 4
        np.testing.assert_allclose(soft_grad(temperature), expected, rtol=1e-9, atol=1e-12)
    # With T², the soft-target gradient keeps its size as T grows (without it, it would shrink ~4x here).
    ratio = np.linalg.norm(soft_grad(20.0)) / np.linalg.norm(soft_grad(10.0))
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_fit_is_deterministic_and_leaves_global_rng(data: DataSplits) -> None:
    assert data.train is not None
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        model = TinyCNN(0.5)
        state = torch.random.get_rng_state()
        fit(model, data.train, epochs=1, lr=1e-2, seed=7)
        assert torch.equal(torch.random.get_rng_state(), state)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


# ---- unstructured pruning -----------------------------------------------------------------------------------


def test_prune_half_of_the_weights(trained: TinyCNN, data: DataSplits) -> None:
    before = weights(trained)
    model, report = prune_unstructured.TECHNIQUE.apply(trained, data, {"amount": "0.5"}, quiet)
    notes = report.notes
    assert report.technique == "prune"
    assert notes["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert notes["zip_bytes_after"] < notes["zip_bytes_before"]
    assert notes["dense_bytes"] == sum(p.numel() * 4 for p in trained.parameters())
    assert notes["saved_bytes_after"] == pytest.approx(notes["saved_bytes_before"], rel=0.02)
    assert "no speed" in notes["speed"]
    assert not any("orig" in k or "mask" in k for k in model.state_dict())  # made permanent
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # input untouched


def test_prune_per_layer_with_finetune_keeps_the_zeros(trained: TinyCNN, data: DataSplits) -> None:
    params = {"amount": "0.5", "scope": "layer", "finetune": "1", "lr": "0.01"}
    model, report = prune_unstructured.TECHNIQUE.apply(trained, data, params, quiet)
    for layer in prune_unstructured.prunable_layers(model):
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        zeros = float((weight == 0).float().mean())
        assert zeros == pytest.approx(0.5, abs=0.02)
    assert report.notes["accuracy_finetuned"] > 0.8


@pytest.mark.parametrize("amount", ["0", "1.0", "1", "-0.2", "1.5"])
def test_prune_ratio_outside_open_interval(trained: TinyCNN, data: DataSplits, amount: str) -> None:
    for technique in (prune_unstructured.TECHNIQUE, prune_channels.TECHNIQUE):
        with pytest.raises(RecipeError, match=r"\(0, 1\)"):
            technique.apply(trained, data, {"amount": amount}, quiet)


def test_prune_without_layers_is_not_applicable(data: DataSplits) -> None:
    with pytest.raises(NotApplicable, match="no convolution or linear"):
        prune_unstructured.TECHNIQUE.apply(nn.Sequential(nn.Flatten()), data, {}, quiet)


def test_prune_finetune_needs_a_training_split(trained: TinyCNN, data: DataSplits) -> None:
    with pytest.raises(RecipeError, match="add train_inputs/train_labels"):
        prune_unstructured.TECHNIQUE.apply(trained, no_train(data), {"finetune": "1"}, quiet)


# ---- channel pruning ----------------------------------------------------------------------------------------


def test_channel_pruning_halves_macs_and_recovers(trained: TinyCNN, data: DataSplits) -> None:
    model, report = prune_channels.TECHNIQUE.apply(trained, data, {"amount": "0.5", "lr": "0.01"}, quiet)
    notes = report.notes
    assert report.technique == "channels"
    assert notes["macs_after"] <= 0.55 * notes["macs_before"]
    assert notes["params_after"] < notes["params_before"]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in trained.parameters())
    assert model.classifier.out_features == CLASSES  # the output layer keeps its outputs
    assert model(torch.from_numpy(data.test.inputs[:3])).shape == (3, CLASSES)
    assert notes["accuracy_finetuned"] > 0.9
    assert trained.features[0].out_channels == 8  # input untouched


def test_channel_pruning_with_distillation(trained: TinyCNN, data: DataSplits) -> None:
    params = {"amount": "0.5", "finetune": "1", "kd": "true", "lr": "0.01"}
    _, report = prune_channels.TECHNIQUE.apply(trained, data, params, quiet)
    assert report.notes["kd"] is True
    assert 0.0 <= report.notes["accuracy_finetuned"] <= 1.0


def test_channel_pruning_without_finetune_needs_no_training_split(trained: TinyCNN, data: DataSplits) -> None:
    _, report = prune_channels.TECHNIQUE.apply(trained, no_train(data), {"finetune": "0"}, quiet)
    assert "accuracy_finetuned" not in report.notes
    with pytest.raises(RecipeError, match="add train_inputs/train_labels"):
        prune_channels.TECHNIQUE.apply(trained, no_train(data), {}, quiet)


def test_channel_pruning_of_an_mlp_is_not_applicable(data: DataSplits) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    with pytest.raises(NotApplicable, match="no prunable convolutions"):
        prune_channels.TECHNIQUE.apply(mlp, data, {"amount": "0.5"}, quiet)


# ---- distillation -------------------------------------------------------------------------------------------


def test_distill_into_half_width(trained: TinyCNN, data: DataSplits) -> None:
    before = weights(trained)
    student, report = distill.TECHNIQUE.apply(trained, data, {"width": "0.5", "epochs": "2", "lr": "0.01"}, quiet)
    notes = report.notes
    assert isinstance(student, TinyCNN)
    assert notes["student_params"] == sum(p.numel() for p in student.parameters())
    assert notes["student_params"] < notes["teacher_params"] / 2
    for key in ("teacher_accuracy", "student_kd_accuracy", "student_no_kd_accuracy"):
        assert 0.0 <= notes[key] <= 1.0
    assert notes["kd_gain"] == pytest.approx(notes["student_kd_accuracy"] - notes["student_no_kd_accuracy"])
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # teacher untouched


def test_distill_needs_a_training_split(trained: TinyCNN, data: DataSplits) -> None:
    with pytest.raises(RecipeError, match="needs a training split: add train_inputs/train_labels"):
        distill.TECHNIQUE.apply(trained, no_train(data), {}, quiet)


def test_distill_without_a_width_parameter_is_not_applicable(data: DataSplits) -> None:
    with pytest.raises(NotApplicable, match="no width parameter; pass student=module:factory"):
        distill.TECHNIQUE.apply(NoWidthCNN(), data, {}, quiet)


def test_distill_into_a_user_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: DataSplits) -> None:
    (tmp_path / "edgebench_test_students.py").write_text(
        "from torch import nn\n"
        "def small():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))\n"
        "def wrong():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = copy.deepcopy(NoWidthCNN())
    student, report = distill.TECHNIQUE.apply(
        teacher, data, {"student": "edgebench_test_students:small", "epochs": "1"}, quiet
    )
    assert isinstance(student, nn.Sequential)
    assert report.notes["student_params"] == 64 * 4 + 4
    with pytest.raises(RecipeError, match="output shape"):
        distill.TECHNIQUE.apply(teacher, data, {"student": "edgebench_test_students:wrong", "epochs": "1"}, quiet)
    with pytest.raises(RecipeError, match=r"package\.module:factory"):
        distill.TECHNIQUE.apply(teacher, data, {"student": "no_colon"}, quiet)


@pytest.mark.parametrize("width", ["0", "1.5"])
def test_distill_width_range(trained: TinyCNN, data: DataSplits, width: str) -> None:
    with pytest.raises(RecipeError, match=r"width=.* must be in \(0, 1\]"):
        distill.TECHNIQUE.apply(trained, data, {"width": width}, quiet)
