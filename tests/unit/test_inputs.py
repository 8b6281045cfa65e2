"""Tests of agent.measure.inputs: .npz datasets, batch checks, dataset and generated batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.measure.inputs import Dataset, check_batch, dataset_batches, generated_batches, load_dataset
from agent.runtimes.base import InputMismatch
from agent.types import TensorInfo

IMAGE = TensorInfo("image", (-1, 3, 4, 4), "float32")
MASK = TensorInfo("mask", (-1, 4), "int64")


def save(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "data.npz"
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def images(n: int) -> np.ndarray:
    return np.arange(n * 48, dtype=np.float32).reshape(n, 3, 4, 4)


# ------------------------------------------------------------------ load_dataset


def test_single_input_under_inputs(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 1, 0])
    reference = np.ones((5, 10), dtype=np.float32)
    ds = load_dataset(save(tmp_path, inputs=images(5), labels=labels, reference_outputs=reference), [IMAGE])
    assert ds.size == 5
    np.testing.assert_array_equal(ds.inputs["image"], images(5))
    assert ds.labels is not None
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.reference is not None
    assert ds.reference.shape == (5, 10)


def test_labels_and_reference_are_optional(tmp_path: Path) -> None:
    ds = load_dataset(save(tmp_path, inputs=images(2)), [IMAGE])
    assert ds.labels is None
    assert ds.reference is None


def test_two_inputs_by_name(tmp_path: Path) -> None:
    mask = np.zeros((6, 4), dtype=np.int64)
    ds = load_dataset(save(tmp_path, **{"inputs/image": images(6), "inputs/mask": mask}), [IMAGE, MASK])
    assert set(ds.inputs) == {"image", "mask"}
    assert ds.size == 6
    np.testing.assert_array_equal(ds.inputs["mask"], mask)


def test_named_key_is_preferred_for_a_single_input(tmp_path: Path) -> None:
    ds = load_dataset(save(tmp_path, inputs=images(2), **{"inputs/image": images(3)}), [IMAGE])
    assert ds.size == 3


def test_missing_key_names_the_needed_key(tmp_path: Path) -> None:
    with pytest.raises(InputMismatch, match=r"input 'image' needs 'inputs'") as info:
        load_dataset(save(tmp_path, data=images(2)), [IMAGE])
    assert "['data']" in str(info.value)


def test_missing_key_for_two_inputs_names_both_keys(tmp_path: Path) -> None:
    # With two inputs, a bare `inputs` is ambiguous: per-input keys are needed.
    with pytest.raises(InputMismatch, match=r"needs 'inputs/image', 'inputs/mask'"):
        load_dataset(save(tmp_path, inputs=images(2)), [IMAGE, MASK])
    with pytest.raises(InputMismatch, match=r"input 'mask' needs 'inputs/image', 'inputs/mask'"):
        load_dataset(save(tmp_path, **{"inputs/image": images(2)}), [IMAGE, MASK])


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(InputMismatch, match="without pickled objects"):
        load_dataset(save(tmp_path, inputs=objects), [IMAGE])


def test_not_an_npz_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(InputMismatch, match=r"not a readable \.npz"):
        load_dataset(path, [IMAGE])


def test_inputs_of_different_lengths_are_refused(tmp_path: Path) -> None:
    arrays = {"inputs/image": images(3), "inputs/mask": np.zeros((2, 4), dtype=np.int64)}
    with pytest.raises(InputMismatch, match="share a non-empty first"):
        load_dataset(save(tmp_path, **arrays), [IMAGE, MASK])


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputMismatch, match="non-empty"):
        load_dataset(save(tmp_path, inputs=images(0)), [IMAGE])
    with pytest.raises(InputMismatch, match="non-empty"):
        load_dataset(save(tmp_path, inputs=np.float32(1.0)), [IMAGE])


@pytest.mark.parametrize(
    ("labels", "given"),
    [
        (np.array([0, 1, 2]), r"int64\[3\]"),
        (np.zeros((4, 1), dtype=np.int64), r"int64\[4, 1\]"),
        (np.array([0.0, 1.0, 2.0, 3.0]), r"float64\[4\]"),
        (np.array([True, False, True, False]), r"bool\[4\]"),
    ],
)
def test_labels_of_wrong_shape_or_dtype_are_refused(tmp_path: Path, labels: np.ndarray, given: str) -> None:
    with pytest.raises(InputMismatch, match=r"'labels' must be integers shaped \(4,\), got " + given):
        load_dataset(save(tmp_path, inputs=images(4), labels=labels), [IMAGE])


def test_reference_with_wrong_row_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputMismatch, match=r"'reference_outputs' must have 4 rows, got shape \[3, 10\]"):
        load_dataset(save(tmp_path, inputs=images(4), reference_outputs=np.ones((3, 10))), [IMAGE])


# ------------------------------------------------------------------ check_batch


def test_check_batch_accepts_a_fitting_batch() -> None:
    check_batch([IMAGE, MASK], {"image": images(2), "mask": np.zeros((2, 4), dtype=np.int64)})


def test_check_batch_dtype_mismatch() -> None:
    with pytest.raises(InputMismatch) as info:
        check_batch([IMAGE], {"image": images(2).astype(np.float64)})
    message = str(info.value)
    assert "model input 'image' expects float32[?, 3, 4, 4]" in message
    assert "the batch is float64[2, 3, 4, 4]" in message
    assert "dtype float64 instead of float32" in message


def test_check_batch_rank_mismatch() -> None:
    with pytest.raises(InputMismatch) as info:
        check_batch([IMAGE], {"image": np.zeros((2, 48), dtype=np.float32)})
    message = str(info.value)
    assert "'image' expects float32[?, 3, 4, 4]" in message
    assert "float32[2, 48]" in message
    assert "2 dimensions instead of 4" in message


def test_check_batch_fixed_axis_mismatch() -> None:
    fixed = TensorInfo("image", (1, 3, 4, 4), "float32")
    with pytest.raises(InputMismatch) as info:
        check_batch([fixed], {"image": np.zeros((8, 3, 5, 4), dtype=np.float32)})
    message = str(info.value)
    assert "'image' expects float32[1, 3, 4, 4]" in message
    assert "float32[8, 3, 5, 4]" in message
    assert "axis 0 is 8, the model fixes it at 1" in message
    assert "axis 2 is 5, the model fixes it at 4" in message
    assert "batch size" in message


def test_check_batch_names_the_offending_input() -> None:
    with pytest.raises(InputMismatch, match="model input 'mask'"):
        check_batch([IMAGE, MASK], {"image": images(2), "mask": np.zeros((2, 5), dtype=np.int64)})


# ------------------------------------------------------------------ dataset_batches


def test_dataset_batches_drop_the_partial_trailing_batch() -> None:
    ds = Dataset({"image": images(10)}, labels=np.arange(10), reference=None)
    batches = list(dataset_batches(ds, 4))
    assert [sl for _, sl in batches] == [slice(0, 4), slice(4, 8)]
    for feeds, sl in batches:
        assert feeds["image"].shape == (4, 3, 4, 4)
        np.testing.assert_array_equal(feeds["image"], images(10)[sl])


def test_dataset_batches_exact_multiple_and_whole_dataset() -> None:
    ds = Dataset({"image": images(6)}, labels=None, reference=None)
    assert len(list(dataset_batches(ds, 3))) == 2
    assert len(list(dataset_batches(ds, 6))) == 1


def test_dataset_batches_cut_every_input_alike() -> None:
    ds = Dataset({"image": images(4), "mask": np.arange(16).reshape(4, 4)}, labels=None, reference=None)
    feeds, sl = list(dataset_batches(ds, 2))[1]
    assert sl == slice(2, 4)
    np.testing.assert_array_equal(feeds["mask"], np.arange(8, 16).reshape(2, 4))


def test_dataset_batches_error_when_batch_exceeds_the_dataset() -> None:
    ds = Dataset({"image": images(3)}, labels=None, reference=None)
    with pytest.raises(InputMismatch, match="batch size 4 is larger than the dataset's 3 samples"):
        list(dataset_batches(ds, 4))


# ------------------------------------------------------------------ generated_batches


def test_generated_batches_shapes_and_dtypes() -> None:
    flags = TensorInfo("flags", (-1, 2), "bool")
    batches = generated_batches([IMAGE, MASK, flags], batch_size=5, num_batches=3, seed=0)
    assert len(batches) == 3
    for feeds in batches:
        assert feeds["image"].shape == (5, 3, 4, 4)
        assert feeds["image"].dtype == np.float32
        assert feeds["mask"].shape == (5, 4)
        assert feeds["mask"].dtype == np.int64
        assert feeds["flags"].shape == (5, 2)
        assert feeds["flags"].dtype == np.bool_
        check_batch([IMAGE, MASK, flags], feeds)


def test_generated_batches_follow_the_requested_batch_size_even_on_a_fixed_axis() -> None:
    # A fixed-batch model asked for another batch size is reported by check_batch, not silently measured
    # at its own batch size.
    fixed = TensorInfo("image", (1, 3, 4, 4), "float16")
    (feeds,) = generated_batches([fixed], batch_size=8, num_batches=1, seed=0)
    assert feeds["image"].shape == (8, 3, 4, 4)
    assert feeds["image"].dtype == np.float16
    with pytest.raises(InputMismatch, match="axis 0 is 8, the model fixes it at 1"):
        check_batch([fixed], feeds)
    (feeds,) = generated_batches([fixed], batch_size=1, num_batches=1, seed=0)
    check_batch([fixed], feeds)


def test_generated_batches_are_deterministic_by_seed() -> None:
    a = generated_batches([IMAGE, MASK], 2, 3, seed=42)
    b = generated_batches([IMAGE, MASK], 2, 3, seed=42)
    c = generated_batches([IMAGE, MASK], 2, 3, seed=43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # The batches of one run differ from each other, so the timing loop does not reuse one buffer.
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_generated_batches_refuse_a_free_non_batch_axis() -> None:
    text = TensorInfo("tokens", (-1, -1), "int64")
    with pytest.raises(InputMismatch, match=r"'tokens' \(int64\[\?, \?\]\) has a free dimension at axis 1") as info:
        generated_batches([text], 1, 1, seed=0)
    assert "send a dataset instead" in str(info.value)


def test_generated_batches_refuse_an_unsupported_dtype() -> None:
    with pytest.raises(InputMismatch, match="cannot generate random data of dtype str"):
        generated_batches([TensorInfo("s", (1,), "str")], 1, 1, seed=0)
