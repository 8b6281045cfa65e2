"""Tests of protos.stats: nearest-rank percentiles, the median CI, the summary and the stop rule."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import stats
from protos.stats import (
    EXACT_CI_MAX_N,
    LatencySummary,
    median_ci,
    min_samples_for_percentile,
    percentile_nearest_rank,
    relative_ci_halfwidth,
    summarize,
    throughput_per_s,
)

samples_st = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300).map(sorted)
q_st = st.floats(min_value=0.0, max_value=100.0)


def reference_rank(n: int, confidence: float) -> int:
    """Largest r with 1 - 2 P(B <= r - 1) >= confidence for B ~ Binomial(n, 1/2); 0 when none is."""
    best, cum, term = 0, 0, 1
    for r in range(1, (n + 1) // 2 + 1):
        cum += term  # cum = sum of comb(n, 0..r-1)
        term = term * (n - r + 1) // r
        if (2**n - 2 * cum) / 2**n >= confidence:
            best = r
    return best


# ------------------------------------------------------------------ percentiles


@pytest.mark.parametrize(("q", "expected"), [(0, 1), (10, 1), (11, 2), (50, 5), (51, 6), (90, 9), (95, 10), (100, 10)])
def test_nearest_rank_one_to_ten(q: float, expected: float) -> None:
    assert percentile_nearest_rank(list(range(1, 11)), q) == expected


@pytest.mark.parametrize(("q", "expected"), [(5, 15), (30, 20), (40, 20), (50, 35), (100, 50)])
def test_nearest_rank_textbook_example(q: float, expected: float) -> None:
    assert percentile_nearest_rank([15, 20, 35, 40, 50], q) == expected


def test_nearest_rank_has_no_float_noise_at_exact_ranks() -> None:
    # 99.9 * 1000 / 100 is 999.0000000000001 in floats; the rank must still be 999, not 1000.
    assert percentile_nearest_rank(list(range(1, 1001)), 99.9) == 999
    assert percentile_nearest_rank(list(range(1, 21)), 95) == 19


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_rejects_q_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile_nearest_rank([1, 2, 3], q)


def test_percentile_rejects_empty_and_unsorted() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile_nearest_rank([], 50)
    with pytest.raises(ValueError, match="sorted"):
        percentile_nearest_rank([3, 1, 2], 50)


@given(samples_st, q_st, q_st)
def test_percentile_is_a_sample_within_range_and_monotone_in_q(s: list[int], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile_nearest_rank(s, lo), percentile_nearest_rank(s, hi)
    assert s[0] <= p_lo <= p_hi <= s[-1]
    assert p_lo in s


@pytest.mark.parametrize(("q", "n"), [(0, 1), (50, 2), (90, 10), (95, 20), (99, 100), (99.9, 1000)])
def test_min_samples_for_percentile(q: float, n: int) -> None:
    assert min_samples_for_percentile(q) == n


def test_min_samples_rejects_p100() -> None:
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        min_samples_for_percentile(100)


@given(st.integers(min_value=1, max_value=2000), st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]))
def test_min_samples_rule_is_where_percentile_stops_being_the_max(n: int, q: float) -> None:
    s = list(range(n))
    assert (percentile_nearest_rank(s, q) < s[-1]) == (n >= min_samples_for_percentile(q))


# ------------------------------------------------------------------ median CI


@pytest.mark.parametrize(("n", "ranks"), [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33))])
def test_median_ci_ranks_match_published_tables(n: int, ranks: tuple[int, int]) -> None:
    ci = median_ci(list(range(1, n + 1)))
    assert (ci.lower_rank, ci.upper_rank) == ranks
    assert (ci.low, ci.high) == ranks  # Samples 1..n: the value is the rank.
    assert ci.reached and ci.confidence_achieved >= 0.95


def test_median_ci_exact_coverage_value() -> None:
    ci = median_ci(list(range(10)))
    assert ci.confidence_achieved == 1 - 2 * (1 + 10) / 2**10


@pytest.mark.parametrize("n", [1, 2, 5])
def test_median_ci_too_few_samples_is_min_max_and_says_so(n: int) -> None:
    s = [10 * i for i in range(n)]
    ci = median_ci(s)
    assert (ci.low, ci.high) == (s[0], s[-1])
    assert not ci.reached
    assert ci.confidence_achieved == pytest.approx(1 - 2 / 2**n)
    assert relative_ci_halfwidth(s) == math.inf


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_median_ci_rank_is_the_largest_reaching_confidence(confidence: float) -> None:
    for n in range(1, 120):
        ci = median_ci(list(range(n)), confidence)
        r = reference_rank(n, confidence)
        assert ci.reached == (r > 0)
        assert ci.lower_rank == max(r, 1)
        assert ci.upper_rank == n + 1 - ci.lower_rank


def test_normal_approximation_agrees_with_exact_at_the_switch() -> None:
    for n in (EXACT_CI_MAX_N, EXACT_CI_MAX_N + 1, EXACT_CI_MAX_N + 2):
        ci = median_ci(list(range(n)))
        assert ci.reached
        assert abs(ci.lower_rank - reference_rank(n, 0.95)) <= 1
        assert ci.lower_rank + ci.upper_rank == n + 1
        assert ci.confidence_achieved == pytest.approx(0.95, abs=0.005)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5])
def test_median_ci_rejects_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        median_ci([1, 2, 3], confidence)


@given(samples_st)
def test_median_ci_is_ordered_and_contains_the_median(s: list[int]) -> None:
    ci = median_ci(s)
    assert s[0] <= ci.low <= statistics.median(s) <= ci.high <= s[-1]
    assert ci.low in s and ci.high in s


def test_median_ci_coverage_by_simulation() -> None:
    rng = random.Random(20240601)
    true_median = math.log(2)  # Exponential(1).
    trials = 2000
    covered = 0
    for _ in range(trials):
        ci = median_ci(sorted(rng.expovariate(1.0) for _ in range(50)))
        covered += ci.low <= true_median <= ci.high
    # Exact coverage at n = 50 is 0.967; the band is ~4 standard errors wide on either side, and its top
    # catches an interval that is needlessly wide (e.g. always (min, max)).
    assert 0.93 <= covered / trials <= 0.99


# ------------------------------------------------------------------ stop rule, summary, throughput


def test_relative_ci_halfwidth_known_value() -> None:
    assert relative_ci_halfwidth(list(range(1, 11))) == pytest.approx((9 - 2) / 2 / 5.5)


def test_relative_ci_halfwidth_is_inf_for_zero_median() -> None:
    assert relative_ci_halfwidth([0] * 50) == math.inf


def test_relative_ci_halfwidth_shrinks_with_more_samples() -> None:
    rng = random.Random(7)
    small = sorted(rng.gauss(1000, 50) for _ in range(50))
    large = sorted(rng.gauss(1000, 50) for _ in range(5000))
    assert relative_ci_halfwidth(large) < relative_ci_halfwidth(small) < 0.1


def test_summarize_one_to_hundred_shuffled() -> None:
    s = list(range(1, 101))
    random.Random(3).shuffle(s)
    summary = summarize(s)
    assert isinstance(summary, LatencySummary)
    assert (summary.n, summary.min, summary.max) == (100, 1, 100)
    assert summary.mean == 50.5 and summary.median == 50.5
    assert (summary.p50, summary.p90, summary.p95, summary.p99) == (50, 90, 95, 99)
    assert summary.stdev == pytest.approx(statistics.stdev(s))
    assert summary.cv == pytest.approx(statistics.stdev(s) / 50.5)
    ci = median_ci(sorted(s))
    assert (summary.median_ci_low, summary.median_ci_high) == (ci.low, ci.high)
    assert summary.median_ci_reached


@pytest.mark.parametrize(("field", "q"), [("p90", 90), ("p95", 95), ("p99", 99)])
def test_summarize_withholds_tail_percentiles_from_too_few_samples(field: str, q: float) -> None:
    needed = min_samples_for_percentile(q)
    assert getattr(summarize(list(range(needed - 1))), field) is None
    assert getattr(summarize(list(range(needed))), field) is not None


def test_no_p99_from_fewer_than_100_samples() -> None:
    assert summarize([5] * 99).p99 is None
    assert summarize([5] * 100).p99 == 5


def test_summarize_single_sample() -> None:
    summary = summarize([42])
    assert (summary.stdev, summary.cv, summary.median, summary.p50) == (0.0, 0.0, 42, 42)
    assert not summary.median_ci_reached
    assert summary.p90 is None


def test_summarize_zero_latencies_give_zero_cv() -> None:
    assert summarize([0, 0, 0]).cv == 0.0


def test_summarize_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no latency samples"):
        summarize([])


def test_summarize_large_run_is_accurate() -> None:
    # Large nanosecond values with a tiny spread: the case a one-pass variance gets wrong.
    s = [10**12 + (i % 3) for i in range(30_000)]
    summary = summarize(s)
    assert summary.stdev == pytest.approx(statistics.pstdev([0, 1, 2]) * math.sqrt(30_000 / 29_999))
    assert summary.mean == 10**12 + 1


def test_throughput() -> None:
    assert throughput_per_s(1_000_000, 8) == pytest.approx(8000.0)
    with pytest.raises(ValueError, match="> 0 ns"):
        throughput_per_s(0, 1)
    with pytest.raises(ValueError, match="batch_size"):
        throughput_per_s(1000, 0)


def test_ci_ranks_are_cached_for_the_repeated_stop_rule() -> None:
    stats._median_ci_ranks.cache_clear()
    for _ in range(3):
        median_ci(list(range(1000)))
    assert stats._median_ci_ranks.cache_info().hits == 2
