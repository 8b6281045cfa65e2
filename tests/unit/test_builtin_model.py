"""Tests of `coordinator.models.builtin`: the digits data set, the DigitsCNN family and the shipped teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from coordinator.compress.base import DataSplits, Split, load_splits  # noqa: E402
from coordinator.models.builtin import (  # noqa: E402
    IMAGE_SIZE,
    NUM_CLASSES,
    SPLIT_SIZES,
    TEACHER_WEIGHTS,
    DigitsCNN,
    builtin_paths,
    digits_splits,
    evaluate,
    load_teacher,
    make_digits_npz,
    split_indices,
    train,
)


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    return digits_splits()


def test_split_indices_are_disjoint_stratified_and_cover_everything() -> None:
    train_idx, calibration_idx, test_idx = split_indices()
    assert (len(train_idx), len(calibration_idx), len(test_idx)) == SPLIT_SIZES
    everything = np.concatenate([train_idx, calibration_idx, test_idx])
    assert len(np.unique(everything)) == len(everything) == sum(SPLIT_SIZES) == 1797
    again = split_indices()
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_idx, calibration_idx, test_idx), strict=True))


def test_splits_are_stratified(splits: DataSplits) -> None:
    assert splits.train is not None and splits.calibration is not None
    all_labels = np.concatenate(
        [s.labels for s in (splits.train, splits.calibration, splits.test) if s.labels is not None]
    )
    overall = np.bincount(all_labels, minlength=NUM_CLASSES) / len(all_labels)
    for split in (splits.train, splits.calibration, splits.test):
        assert split.labels is not None
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        assert np.all(np.abs(counts - overall * len(split)) <= 1.5), counts  # within a sample of exact


def test_npz_keys_shapes_and_dtypes(tmp_path: Path) -> None:
    path = make_digits_npz(tmp_path / "sub" / "digits.npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n_train, n_calibration, n_test = SPLIT_SIZES
    expected = {
        "inputs": (n_test, 1, IMAGE_SIZE, IMAGE_SIZE),
        "labels": (n_test,),
        "train_inputs": (n_train, 1, IMAGE_SIZE, IMAGE_SIZE),
        "train_labels": (n_train,),
        "calibration_inputs": (n_calibration, 1, IMAGE_SIZE, IMAGE_SIZE),
        "calibration_labels": (n_calibration,),
    }
    assert {k: v.shape for k, v in arrays.items()} == expected
    for key, value in arrays.items():
        assert value.dtype == (np.int64 if key.endswith("labels") else np.float32), key
    assert abs(float(arrays["train_inputs"].mean())) < 0.2 and 0.7 < float(arrays["train_inputs"].std()) < 1.3
    loaded = load_splits(path)
    assert loaded.train is not None and loaded.calibration is not None
    assert len(loaded.test) == n_test and len(loaded.train) == n_train and len(loaded.calibration) == n_calibration


def test_width_scales_the_family() -> None:
    def params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    teacher, student = DigitsCNN(1.0), DigitsCNN(0.5)
    assert params(student) < params(teacher) / 3
    x = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert student.eval()(x).shape == teacher.eval()(x).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="width"):
        DigitsCNN(0.0)


def test_shipped_teacher_is_small_and_accurate(splits: DataSplits) -> None:
    assert TEACHER_WEIGHTS.stat().st_size < 3 * 1024 * 1024
    teacher = load_teacher()
    assert not teacher.training
    assert evaluate(teacher, splits.test) >= 0.95


def test_builtin_paths_export_matches_torch_and_is_cached(tmp_path: Path, splits: DataSplits) -> None:
    onnx_path, npz_path = builtin_paths(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [onnx_path.name, onnx_path.name + ".sha", npz_path.name, npz_path.name + ".sha"]
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = splits.test.inputs
    (logits,) = session.run(["logits"], {"input": inputs})
    with torch.no_grad():
        expected = load_teacher()(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)
    assert splits.test.labels is not None
    assert float(np.mean(logits.argmax(1) == splits.test.labels)) >= 0.95
    (single,) = session.run(["logits"], {"input": inputs[:1]})
    assert single.shape == (1, NUM_CLASSES)

    stamps = {p: p.stat().st_mtime_ns for p in (onnx_path, npz_path)}
    assert builtin_paths(tmp_path) == (onnx_path, npz_path)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # cached: nothing rewritten
    stamp = tmp_path / (onnx_path.name + ".sha")
    stamp.write_text("stale\n")  # e.g. new shipped weights: the ONNX file is rebuilt
    builtin_paths(tmp_path)
    assert stamp.read_text() != "stale\n" and onnx_path.is_file()


def _head(split: Split, n: int) -> Split:
    return Split(split.inputs[:n], None if split.labels is None else split.labels[:n])


def test_one_epoch_training_smoke_is_deterministic(splits: DataSplits) -> None:
    """Two 1-epoch runs of a narrow student on 128 images (~1 s on an idle 2-core machine) agree bit for bit."""
    assert splits.train is not None
    small = DataSplits(test=_head(splits.test, 64), train=_head(splits.train, 128))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsCNN(0.25)
        accuracy = train(model, small, epochs=1, lr=3e-3, seed=0)
        models.append(model)
    assert 0.0 <= accuracy <= 1.0 and not models[0].training
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, models[1].state_dict()[name]), name
