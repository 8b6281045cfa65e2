"""Accuracy of a model's outputs: top-k against labels, and fidelity against a reference model's outputs.

Everything is computed in float64 whatever the output dtype (fp16, int8, ...): the point is to measure
small differences, which low-precision arithmetic would blur. The first axis of every array is the
sample (batch) axis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.types import AccuracyReport

#: snr_db is clamped to [-SNR_CAP_DB, SNR_CAP_DB]: outputs identical to the reference (zero error) would
#: otherwise be +inf, which JSON cannot carry and which no comparison needs (200 dB is far beyond the
#: ~150 dB that float32 rounding alone leaves); a zero reference with nonzero error gives -SNR_CAP_DB.
SNR_CAP_DB = 200.0

_F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Fidelity:
    """How closely outputs follow reference outputs of the same shape.

    top1_agreement: fraction of samples whose argmax (over the flattened per-sample values) matches.
    cosine_similarity: mean over samples of the cosine of the flattened per-sample vectors; a pair of
    zero vectors counts 1.0, one zero vector against a nonzero one 0.0.
    max_abs_error: max |outputs - reference| over all elements.
    snr_db: 10 log10(sum(reference^2) / sum((outputs - reference)^2)), clamped to +-SNR_CAP_DB.
    NaN in the outputs propagates into max_abs_error and snr_db rather than being hidden.
    """

    top1_agreement: float
    cosine_similarity: float
    max_abs_error: float
    snr_db: float


def _per_sample(array: npt.NDArray[Any], name: str) -> _F64:
    """`array` as float64 of shape (N, -1): one flattened row per sample."""
    if array.ndim < 1:
        raise ValueError(f"{name} needs a leading sample axis, got a scalar of shape {array.shape}")
    # An explicit row length, not -1: numpy cannot infer -1 for an empty batch.
    return np.asarray(array, dtype=np.float64).reshape(array.shape[0], math.prod(array.shape[1:]))


def _check_labels(scores: _F64, labels: npt.NDArray[Any], shape: tuple[int, ...]) -> None:
    n, classes = scores.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match outputs shape {shape}: expected ({n},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"labels must be in [0, {classes}) for {classes} classes, got [{labels.min()}, {labels.max()}]"
        )


def _topk_hits(scores: _F64, labels: npt.NDArray[Any], k: int) -> int:
    # A label is in the top k when fewer than k classes score strictly higher: ties go in the sample's
    # favour, so the result does not depend on argsort's arbitrary order among equal scores. A NaN label
    # score is a miss (comparisons with NaN are all False, which would otherwise count as a hit).
    label_scores = scores[np.arange(scores.shape[0]), labels]
    above = np.count_nonzero(scores > label_scores[:, None], axis=1)
    return int(np.count_nonzero((above < min(k, scores.shape[1])) & ~np.isnan(label_scores)))


def topk_accuracy(logits: npt.NDArray[Any], labels: npt.NDArray[Any], k: int) -> float:
    """Fraction of samples whose label is among the k highest scores (ties count as hits).

    `logits` is (N, C), `labels` (N,) integer class indices in [0, C); with C < k, k = C is used.
    ValueError on other shapes (the message gives both), non-integer or out-of-range labels, N = 0, k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
    scores = np.asarray(logits, dtype=np.float64)
    _check_labels(scores, labels, logits.shape)
    n = int(scores.shape[0])
    if n == 0:
        raise ValueError("no samples: top-k accuracy of an empty batch is undefined")
    return _topk_hits(scores, labels, k) / n


@dataclass
class _FidelitySums:
    """Additive pieces of Fidelity, so batches can be combined before the final division."""

    samples: int = 0
    agree: int = 0
    cosine_sum: float = 0.0
    max_abs: float = 0.0
    signal: float = 0.0
    noise: float = 0.0

    def add(self, out: _F64, ref: _F64) -> None:
        if out.shape[0] == 0:
            return
        err = out - ref
        out_norm = np.linalg.norm(out, axis=1, keepdims=True)
        ref_norm = np.linalg.norm(ref, axis=1, keepdims=True)
        # Normalise before the dot product (not dot / (|a| |b|)): the product of two small norms can
        # underflow to 0 even when neither is 0. A zero vector stays zero (divided by 1).
        unit_out = out / np.where(out_norm > 0, out_norm, 1.0)
        unit_ref = ref / np.where(ref_norm > 0, ref_norm, 1.0)
        cosine = np.clip(np.sum(unit_out * unit_ref, axis=1), -1.0, 1.0)
        both_zero = (out_norm[:, 0] == 0) & (ref_norm[:, 0] == 0)
        cosine = np.where(both_zero, 1.0, cosine)
        self.samples += out.shape[0]
        if out.shape[1]:
            self.agree += int(np.count_nonzero(np.argmax(out, axis=1) == np.argmax(ref, axis=1)))
            batch_max = float(np.max(np.abs(err)))
            # max() would drop a NaN depending on argument order; keep it visible.
            self.max_abs = batch_max if math.isnan(batch_max) else max(self.max_abs, batch_max)
        else:  # Zero values per sample: nothing can disagree.
            self.agree += out.shape[0]
        self.cosine_sum += float(np.sum(cosine))
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(err * err))

    def finish(self) -> Fidelity:
        ratio = math.inf if self.noise == 0.0 else self.signal / self.noise
        if math.isnan(ratio):
            snr = math.nan
        elif ratio == 0.0:  # Zero reference (or an underflowed ratio): log10 would raise.
            snr = -SNR_CAP_DB
        else:
            snr = min(SNR_CAP_DB, max(-SNR_CAP_DB, 10.0 * math.log10(ratio)))
        n = max(self.samples, 1)
        return Fidelity(self.agree / n, self.cosine_sum / n, self.max_abs, snr)


def _check_same_shape(outputs: npt.NDArray[Any], reference: npt.NDArray[Any]) -> None:
    if outputs.shape != reference.shape:
        raise ValueError(f"outputs shape {outputs.shape} differs from reference shape {reference.shape}")


def fidelity(outputs: npt.NDArray[Any], reference: npt.NDArray[Any]) -> Fidelity:
    """Fidelity of `outputs` to `reference` (same shape, leading sample axis, N >= 1); see Fidelity.

    Arrays of rank other than 2 are flattened per sample to (N, -1) first. ValueError when the shapes
    differ (the message gives both), on a scalar, or on N = 0.
    """
    _check_same_shape(outputs, reference)
    out, ref = _per_sample(outputs, "outputs"), _per_sample(reference, "reference")
    if out.shape[0] == 0:
        raise ValueError("no samples: fidelity of an empty batch is undefined")
    sums = _FidelitySums()
    sums.add(out, ref)
    return sums.finish()


class AccuracyAccumulator:
    """Accuracy over batches fed one at a time, for a harness that never holds the whole data set.

    Each add() takes one batch of the model's first output (leading axis = samples) and, optionally, the
    batch's labels and the reference model's outputs for it. Labels (and likewise reference) must come
    with every batch or with none: a total over only some batches would be silently misleading. Totals
    equal those of one call over the concatenated batches: top-1/top-5 and top1_agreement are fractions
    of all samples, cosine_similarity a mean over all samples, max_abs_error the overall max, and snr_db
    is taken from the summed signal and error energies (not a mean of per-batch decibels).
    """

    def __init__(self) -> None:
        self._samples = 0
        self._has_labels: bool | None = None  # Fixed by the first add().
        self._has_reference: bool | None = None
        self._top1 = 0
        self._top5 = 0
        self._fidelity = _FidelitySums()

    def add(
        self,
        outputs: npt.NDArray[Any],
        labels: npt.NDArray[Any] | None = None,
        reference: npt.NDArray[Any] | None = None,
    ) -> None:
        """Add one batch. Outputs of rank != 2 are flattened per sample to (N, -1) scores.

        ValueError (leaving the totals unchanged) on a shape mismatch, bad labels, or when the batch has
        labels / reference and earlier ones did not, or the other way round.
        """
        has_labels, has_reference = labels is not None, reference is not None
        if self._has_labels is not None and (has_labels, has_reference) != (
            self._has_labels,
            self._has_reference,
        ):
            raise ValueError(
                f"batch has labels={has_labels}, reference={has_reference} but earlier batches had "
                f"labels={self._has_labels}, reference={self._has_reference}; give them for all or none"
            )
        # Validate everything before counting anything, so a rejected batch leaves no partial trace.
        out = _per_sample(outputs, "outputs")
        if labels is not None:
            _check_labels(out, labels, outputs.shape)
        ref = None
        if reference is not None:
            _check_same_shape(outputs, reference)
            ref = _per_sample(reference, "reference")
        self._has_labels, self._has_reference = has_labels, has_reference
        self._samples += out.shape[0]
        if labels is not None and out.shape[0]:
            self._top1 += _topk_hits(out, labels, 1)
            self._top5 += _topk_hits(out, labels, 5)
        if ref is not None:
            self._fidelity.add(out, ref)

    def report(self) -> AccuracyReport:
        """The totals so far; fractions are 0.0 (and has_* False) while no batch has been added."""
        n = max(self._samples, 1)
        report = AccuracyReport(
            samples=self._samples,
            has_labels=bool(self._has_labels),
            top1=self._top1 / n if self._has_labels else 0.0,
            top5=self._top5 / n if self._has_labels else 0.0,
            has_reference=bool(self._has_reference),
        )
        if not self._has_reference or self._samples == 0:
            return report
        fid = self._fidelity.finish()
        return dataclasses.replace(
            report,
            top1_agreement=fid.top1_agreement,
            cosine_similarity=fid.cosine_similarity,
            max_abs_error=fid.max_abs_error,
            snr_db=fid.snr_db,
        )
