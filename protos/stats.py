"""Latency statistics shared by agent and coordinator: nearest-rank percentiles, a distribution-free
confidence interval of the median, and the summary both sides report.

Standard library only, so it runs on any device without numpy. Both sides import this one module so that
a number an agent reports and one the coordinator recomputes from the raw samples agree exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

#: Largest n whose median-CI ranks come from the exact binomial distribution (exact integer arithmetic);
#: above it the normal approximation is used, which at this size gives the same ranks to within one.
EXACT_CI_MAX_N = 5000

Number = int | float


def _ceil(x: float) -> int:
    # q * n / 100 and 100 / (100 - q) carry float noise (100 / (100 - 99.9) == 1000.0000000005); rounding
    # to 9 decimals first keeps ranks that are mathematically integers exact.
    return math.ceil(round(x, 9))


def _require_sorted(samples: Sequence[Number]) -> None:
    if len(samples) == 0:
        raise ValueError("no samples: a statistic needs at least one")
    # Silently wrong statistics from unsorted input are worse than an O(n) check.
    if any(a > b for a, b in itertools.pairwise(samples)):
        raise ValueError("samples must be sorted ascending (sort them, or use summarize())")


def _nearest_rank(s: Sequence[Number], q: float) -> float:
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(s[max(1, _ceil(q * len(s) / 100.0)) - 1])


def _median(s: Sequence[Number]) -> float:
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile_nearest_rank(sorted_samples: Sequence[Number], q: float) -> float:
    """The q-th percentile by the nearest-rank definition: the sample of 1-based rank ceil(q/100 * n).

    Always one of the samples (no interpolation). `q` is in [0, 100]; q = 0 returns the minimum (rank
    clamped to 1), q = 100 the maximum. Raises ValueError on empty or unsorted input or q out of range.
    """
    _require_sorted(sorted_samples)
    return _nearest_rank(sorted_samples, q)


def min_samples_for_percentile(q: float) -> int:
    """Fewest samples from which percentile `q` (0 <= q < 100) is reported: ceil(100 / (100 - q)).

    With fewer, n * (100 - q) / 100 < 1, so the nearest rank is n and the "percentile" is just the
    maximum. Hence the project rule: no p99 from fewer than 100 samples (p95: 20, p90: 10).
    """
    if not 0.0 <= q < 100.0:
        raise ValueError(f"percentile q must be in [0, 100), got {q}")
    return max(1, _ceil(100.0 / (100.0 - q)))


@dataclass(frozen=True)
class MedianCI:
    """A confidence interval [low, high] = [X_(lower_rank), X_(upper_rank)] of the population median.

    `confidence_achieved` is P(X_(lower_rank) <= median <= X_(upper_rank)) for continuous data (exact for
    n <= EXACT_CI_MAX_N, normal approximation above); with ties it is a lower bound. `reached` is False
    only when n is too small for any interval to reach `confidence` (n < 6 at 95%): then the interval is
    (min, max) and `confidence_achieved` says how much it does cover.
    """

    low: float
    high: float
    lower_rank: int
    upper_rank: int
    confidence: float
    confidence_achieved: float
    reached: bool


@functools.lru_cache(maxsize=256)
def _median_ci_ranks(n: int, confidence: float) -> tuple[int, float, bool]:
    """(r, achieved, reached): the interval is ranks r and n + 1 - r (1-based), symmetric by design."""
    if n > EXACT_CI_MAX_N:
        sigma = math.sqrt(n) / 2
        raw = math.floor(n / 2 - NormalDist().inv_cdf((1 + confidence) / 2) * sigma)
        r = max(1, raw)
        # Continuity-corrected P(r <= B <= n - r); floor/ceil in the ranks make it >= confidence.
        achieved = 1 - 2 * NormalDist(n / 2, sigma).cdf(r - 0.5)
        return r, achieved, raw >= 1
    # B ~ Binomial(n, 1/2) counts samples below the median; the interval of ranks (r, n + 1 - r) covers
    # it with probability 1 - 2 P(B <= r - 1). Take the largest r that keeps that >= confidence, compared
    # in exact integers (counts over 2**n) so the choice has no rounding error.
    num, den = confidence.as_integer_ratio()
    total = 1 << n
    cum, term, r, cum_r = 0, 1, 0, 0  # term = comb(n, i), cum = sum of comb(n, 0..i)
    for i in range(n):
        cum += term
        if (total - 2 * cum) * den < num * total:
            break
        r, cum_r = i + 1, cum
        term = term * (n - i) // (i + 1)
    if r == 0:  # Not even (min, max) reaches it: report (min, max) and what it covers.
        return 1, (total - 2) / total, False
    return r, (total - 2 * cum_r) / total, True


def median_ci(sorted_samples: Sequence[Number], confidence: float = 0.95) -> MedianCI:
    """Distribution-free confidence interval of the median from order statistics.

    Method: Conover, Practical Nonparametric Statistics (3rd ed., 1999), section 3.2, confidence interval
    for a quantile, with p = 0.5 and symmetric ranks; exact binomial ranks for n <= EXACT_CI_MAX_N, the
    large-sample ranks r = floor(n/2 - z sqrt(n)/2), s = ceil(1 + n/2 + z sqrt(n)/2) above. Requires
    0 < confidence < 1 and sorted, non-empty input (ValueError otherwise).
    """
    _require_sorted(sorted_samples)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(sorted_samples)
    r, achieved, reached = _median_ci_ranks(n, confidence)
    low, high = sorted_samples[r - 1], sorted_samples[n - r]
    return MedianCI(float(low), float(high), r, n + 1 - r, confidence, achieved, reached)


def relative_ci_halfwidth(sorted_samples: Sequence[Number], confidence: float = 0.95) -> float:
    """Half the median CI's width over |median|: the agent's adaptive stop rule is "stop once <= tolerance".

    math.inf when the median is 0 or the interval cannot reach `confidence` yet (too few samples), so
    that the rule never stops early. Same input contract as median_ci().
    """
    ci = median_ci(sorted_samples, confidence)
    median = abs(_median(sorted_samples))
    if not ci.reached or median == 0.0:
        return math.inf
    return (ci.high - ci.low) / 2 / median


@dataclass(frozen=True)
class LatencySummary:
    """Summary of one run's latencies; every value in nanoseconds except n and cv.

    `median` is the usual median (mean of the middle two for even n); p50..p99 are nearest-rank and
    always actual samples. A tail percentile is None below min_samples_for_percentile(q): p90 needs 10
    samples, p95 20, p99 100. `stdev` is the sample standard deviation (0.0 for n = 1), `cv` = stdev /
    mean (0.0 when both are 0, inf when only the mean is). `median_ci_*` is the 95% median_ci();
    `median_ci_reached` False means it is just (min, max).
    """

    n: int
    min: float
    max: float
    mean: float
    stdev: float
    cv: float
    median: float
    p50: float
    p90: float | None
    p95: float | None
    p99: float | None
    median_ci_low: float
    median_ci_high: float
    median_ci_reached: bool


def summarize(samples_ns: Sequence[int]) -> LatencySummary:
    """Summarize latencies in any order (a sorted copy is taken). ValueError when empty."""
    s = sorted(samples_ns)
    if not s:
        raise ValueError("no latency samples to summarize")
    n = len(s)
    # fsum and two passes: naive sums of 10^6 nanosecond values lose digits and the one-pass variance
    # formula cancels catastrophically when the spread is small next to the mean.
    mean = math.fsum(s) / n
    stdev = math.sqrt(math.fsum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    cv = stdev / mean if mean != 0.0 else (0.0 if stdev == 0.0 else math.inf)

    def tail(q: float) -> float | None:
        return _nearest_rank(s, q) if n >= min_samples_for_percentile(q) else None

    ci = median_ci(s)
    return LatencySummary(
        n=n,
        min=float(s[0]),
        max=float(s[-1]),
        mean=mean,
        stdev=stdev,
        cv=cv,
        median=_median(s),
        p50=_nearest_rank(s, 50),
        p90=tail(90),
        p95=tail(95),
        p99=tail(99),
        median_ci_low=ci.low,
        median_ci_high=ci.high,
        median_ci_reached=ci.reached,
    )


def throughput_per_s(median_ns: float, batch_size: int) -> float:
    """Samples per second at the median latency: batch_size * 1e9 / median_ns.

    ValueError when median_ns <= 0 (a clock too coarse to time one inference) or batch_size < 1.
    """
    if median_ns <= 0:
        raise ValueError(f"median latency must be > 0 ns to give a throughput, got {median_ns}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size * 1e9 / median_ns
