"""Tests of agent.measure.accuracy: top-k, fidelity to a reference, and batch-wise accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.measure.accuracy import SNR_CAP_DB, AccuracyAccumulator, Fidelity, fidelity, topk_accuracy
from agent.types import AccuracyReport

LOGITS = np.array(
    [
        [0.1, 0.7, 0.2, 0.0],  # label 1: top-1 hit
        [0.5, 0.1, 0.3, 0.1],  # label 2: second place, top-2 hit
        [0.1, 0.2, 0.3, 0.4],  # label 0: last place
    ],
    dtype=np.float32,
)
LABELS = np.array([1, 2, 0])


# ------------------------------------------------------------------ top-k


@pytest.mark.parametrize(("k", "expected"), [(1, 1 / 3), (2, 2 / 3), (3, 2 / 3), (4, 1.0), (5, 1.0)])
def test_topk_hand_computed(k: int, expected: float) -> None:
    assert topk_accuracy(LOGITS, LABELS, k) == pytest.approx(expected)


def test_topk_ties_count_as_hits() -> None:
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([1]), 1) == 1.0


def test_topk_nan_label_score_is_a_miss() -> None:
    assert topk_accuracy(np.array([[math.nan, 0.0, 1.0]]), np.array([0]), 3) == 0.0


def test_topk_label_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"labels shape \(2,\) does not match outputs shape \(3, 4\)"):
        topk_accuracy(LOGITS, LABELS[:2], 1)


@pytest.mark.parametrize(
    ("logits", "labels", "k", "message"),
    [
        (LOGITS[0], LABELS, 1, r"2-D \(N, C\), got shape \(4,\)"),
        (LOGITS, LABELS, 0, "k must be >= 1"),
        (LOGITS, LABELS.astype(np.float32), 1, "integers"),
        (LOGITS, np.array([1, 2, 4]), 1, r"\[0, 4\)"),
        (LOGITS, np.array([1, -1, 0]), 1, r"\[0, 4\)"),
        (LOGITS[:0], LABELS[:0], 1, "no samples"),
    ],
)
def test_topk_rejects_bad_input(logits: np.ndarray, labels: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topk_accuracy(logits, labels, k)


# ------------------------------------------------------------------ fidelity


def test_fidelity_identical_is_perfect_with_capped_snr() -> None:
    result = fidelity(LOGITS, LOGITS.copy())
    assert result == Fidelity(1.0, result.cosine_similarity, 0.0, SNR_CAP_DB)
    assert result.cosine_similarity == pytest.approx(1.0)


def test_fidelity_hand_computed() -> None:
    out = np.array([[1.0, 0.0], [0.0, 1.0]])
    ref = np.array([[1.0, 0.0], [1.0, 0.0]])
    # Agreement 1 of 2; cosines 1 and 0; signal 2, noise 1 + 1 = 2, so 0 dB.
    assert fidelity(out, ref) == Fidelity(0.5, 0.5, 1.0, 0.0)


def test_fidelity_snr_value() -> None:
    result = fidelity(np.array([[3.0, 4.1]]), np.array([[3.0, 4.0]]))
    assert result.snr_db == pytest.approx(10 * math.log10(25 / 0.01))
    assert result.max_abs_error == pytest.approx(0.1)
    assert result.cosine_similarity == pytest.approx((9 + 16.4) / (5 * math.hypot(3, 4.1)))


def test_fidelity_zero_vectors() -> None:
    zeros, ones = np.zeros((1, 3)), np.ones((1, 3))
    assert fidelity(zeros, zeros).cosine_similarity == 1.0
    assert fidelity(zeros, ones).cosine_similarity == 0.0
    assert fidelity(ones, zeros).snr_db == -SNR_CAP_DB


def test_fidelity_flattens_higher_rank_per_sample() -> None:
    out = np.zeros((2, 2, 2), dtype=np.float16)
    out[0, 1, 1] = 1.0  # Sample 0's argmax is flat index 3, sample 1's is 0 (all zero).
    ref = np.zeros((2, 2, 2), dtype=np.float16)
    ref[0, 1, 1] = 2.0
    ref[1, 0, 1] = 1.0  # Sample 1's argmax is flat index 1: disagrees.
    result = fidelity(out, ref)
    assert result.top1_agreement == 0.5
    assert result.cosine_similarity == 0.5  # 1.0 (parallel) and 0.0 (zero against nonzero).


def test_fidelity_computes_in_float64() -> None:
    # Squares of 300 overflow float16 (max 65504): computed in the input dtype the SNR would be inf / nan.
    out = np.full((2, 4), 300.0, dtype=np.float16)
    ref = out + np.float16(1.0)
    assert fidelity(out, ref).snr_db == pytest.approx(20 * math.log10(301))


def test_fidelity_nan_is_visible() -> None:
    result = fidelity(np.array([[math.nan, 1.0]]), np.array([[0.0, 1.0]]))
    assert math.isnan(result.max_abs_error) and math.isnan(result.snr_db)


def test_fidelity_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"outputs shape \(3, 4\) differs from reference shape \(3, 5\)"):
        fidelity(LOGITS, np.zeros((3, 5)))


def test_fidelity_rejects_scalars_and_empty() -> None:
    with pytest.raises(ValueError, match="leading sample axis"):
        fidelity(np.array(1.0), np.array(1.0))
    with pytest.raises(ValueError, match="no samples"):
        fidelity(np.zeros((0, 3)), np.zeros((0, 3)))


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=8), st.integers(0, 2**32 - 1))
def test_fidelity_bounds(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out, ref = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    result = fidelity(out, ref)
    assert 0.0 <= result.top1_agreement <= 1.0
    assert -1.0 <= result.cosine_similarity <= 1.0
    assert -SNR_CAP_DB <= result.snr_db <= SNR_CAP_DB
    assert result.max_abs_error == pytest.approx(np.max(np.abs(out - ref)))


# ------------------------------------------------------------------ accumulator


@pytest.mark.parametrize("splits", [[30], [7, 0, 13, 10], [1] * 30])
def test_accumulator_matches_one_shot(splits: list[int]) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=30)
    reference = logits + rng.normal(scale=0.1, size=logits.shape)
    acc = AccuracyAccumulator()
    start = 0
    for size in splits:
        stop = start + size
        acc.add(logits[start:stop], labels[start:stop], reference[start:stop])
        start = stop
    report = acc.report()
    whole = fidelity(logits, reference)
    assert isinstance(report, AccuracyReport)
    assert report.samples == 30 and report.has_labels and report.has_reference
    assert report.top1 == pytest.approx(topk_accuracy(logits, labels, 1))
    assert report.top5 == pytest.approx(topk_accuracy(logits, labels, 5))
    assert report.top1_agreement == pytest.approx(whole.top1_agreement)
    assert report.cosine_similarity == pytest.approx(whole.cosine_similarity)
    assert report.max_abs_error == pytest.approx(whole.max_abs_error)
    assert report.snr_db == pytest.approx(whole.snr_db)


def test_accumulator_labels_only_and_few_classes() -> None:
    acc = AccuracyAccumulator()
    acc.add(LOGITS[:, None, :], LABELS)  # (N, 1, C) is flattened to (N, C) scores.
    assert acc.report() == AccuracyReport(samples=3, has_labels=True, top1=1 / 3, top5=1.0)


def test_accumulator_empty_report() -> None:
    assert AccuracyAccumulator().report() == AccuracyReport()


def test_accumulator_reference_only() -> None:
    acc = AccuracyAccumulator()
    acc.add(LOGITS, reference=LOGITS)
    report = acc.report()
    assert not report.has_labels and report.top1 == 0.0
    assert report.has_reference and report.snr_db == SNR_CAP_DB and report.top1_agreement == 1.0


def test_accumulator_rejects_mixed_batches_and_keeps_totals() -> None:
    acc = AccuracyAccumulator()
    acc.add(LOGITS, LABELS)
    before = acc.report()
    with pytest.raises(ValueError, match="for all or none"):
        acc.add(LOGITS)
    with pytest.raises(ValueError, match="for all or none"):
        acc.add(LOGITS, LABELS, LOGITS)
    with pytest.raises(ValueError, match=r"labels shape \(2,\) does not match outputs shape \(3, 4\)"):
        acc.add(LOGITS, LABELS[:2])
    assert acc.report() == before


def test_accumulator_reference_shape_mismatch() -> None:
    acc = AccuracyAccumulator()
    with pytest.raises(ValueError, match=r"outputs shape \(3, 4\) differs from reference shape \(3, 2, 2\)"):
        acc.add(LOGITS, reference=LOGITS.reshape(3, 2, 2))
    assert acc.report() == AccuracyReport()
