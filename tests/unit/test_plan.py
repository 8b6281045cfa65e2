"""Tests of agent.measure.plan.StopRule: minimums, maximums, and the adaptive CI target."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from agent.measure.plan import StopRule
from agent.types import MeasurementPlan, StopReason

MS = 1_000_000
S = 1_000_000_000


BASE = MeasurementPlan(
    min_iterations=100, min_duration_ns=1 * S, max_duration_ns=30 * S, max_iterations=10_000, target_relative_ci=0.0
)


def plan(**overrides: Any) -> MeasurementPlan:
    return dataclasses.replace(BASE, **overrides)


def run(rule: StopRule, samples: list[int], ns_per_iteration: int) -> tuple[StopReason, int]:
    """Feed the rule one sample at a time, as the timing loop does; returns why and when it stopped."""
    for n in range(1, len(samples) + 1):
        reason = rule.check(n * ns_per_iteration, samples[:n])
        if reason is not None:
            return reason, n
    raise AssertionError("the rule never stopped")


def test_minimum_iterations_alone_do_not_stop() -> None:
    rule = StopRule(plan(min_iterations=100, min_duration_ns=1 * S))
    assert rule.check(S // 2, [1] * 500) is None


def test_minimum_duration_alone_does_not_stop() -> None:
    rule = StopRule(plan(min_iterations=100, min_duration_ns=1 * S))
    assert rule.check(5 * S, [1] * 99) is None


def test_both_minimums_stop() -> None:
    rule = StopRule(plan(min_iterations=100, min_duration_ns=1 * S))
    assert rule.check(1 * S, [1] * 100) == StopReason.MINIMUMS_MET


def test_fast_model_runs_until_the_minimum_duration() -> None:
    # 1 ms per iteration: 100 iterations are done after 0.1 s, but the minimum duration is 1 s.
    reason, n = run(StopRule(plan()), [MS] * 5_000, MS)
    assert (reason, n) == (StopReason.MINIMUMS_MET, 1_000)


def test_slow_model_runs_until_the_minimum_iterations() -> None:
    # 100 ms per iteration: 1 s passes after 10 iterations, but 100 are required.
    reason, n = run(StopRule(plan()), [100 * MS] * 5_000, 100 * MS)
    assert (reason, n) == (StopReason.MINIMUMS_MET, 100)


def test_max_duration_stops_before_the_minimum_iterations() -> None:
    rule = StopRule(plan(min_iterations=1_000, max_duration_ns=2 * S))
    assert rule.check(2 * S - 1, [S] * 10) is None
    assert rule.check(2 * S, [S] * 10) == StopReason.MAX_DURATION


def test_max_iterations_stops_before_the_minimum_duration() -> None:
    rule = StopRule(plan(min_duration_ns=10 * S, max_iterations=500))
    assert rule.check(S, [1] * 499) is None
    assert rule.check(S, [1] * 500) == StopReason.MAX_ITERATIONS


def test_max_iterations_wins_over_max_duration_when_both_are_reached() -> None:
    rule = StopRule(plan(max_duration_ns=2 * S, max_iterations=500))
    assert rule.check(3 * S, [1] * 500) == StopReason.MAX_ITERATIONS


def test_adaptive_target_converges_on_tight_samples() -> None:
    rng = random.Random(1)
    samples = [10 * MS + rng.randint(-1_000, 1_000) for _ in range(10_000)]
    rule = StopRule(plan(target_relative_ci=0.01, min_duration_ns=0))
    reason, n = run(rule, samples, 10 * MS)
    assert reason == StopReason.CI_CONVERGED
    assert n == 100  # the first checkpoint: the minimum iterations
    assert rule.last_relative_ci is not None
    assert rule.last_relative_ci <= 0.01


def test_adaptive_target_keeps_going_on_noisy_samples_until_the_maximum() -> None:
    rng = random.Random(2)
    samples = [rng.randint(1 * MS, 100 * MS) for _ in range(3_000)]
    rule = StopRule(plan(target_relative_ci=0.001, min_duration_ns=0, max_iterations=2_000))
    reason, n = run(rule, samples, MS)
    assert (reason, n) == (StopReason.MAX_ITERATIONS, 2_000)
    assert rule.last_relative_ci is not None
    assert rule.last_relative_ci > 0.001


def test_adaptive_target_on_noisy_samples_stops_at_max_duration() -> None:
    rng = random.Random(3)
    samples = [rng.randint(1 * MS, 100 * MS) for _ in range(3_000)]
    rule = StopRule(plan(target_relative_ci=0.001, min_duration_ns=0, max_duration_ns=1 * S))
    reason, n = run(rule, samples, MS)
    assert (reason, n) == (StopReason.MAX_DURATION, 1_000)


def test_adaptive_target_still_needs_the_minimums() -> None:
    rule = StopRule(plan(target_relative_ci=0.5, min_iterations=100, min_duration_ns=1 * S))
    assert rule.check(S // 2, [MS] * 200) is None
    assert rule.last_relative_ci is None  # no CI computed before the minimums are met


def test_ci_is_checked_only_at_checkpoints() -> None:
    rule = StopRule(plan(target_relative_ci=0.01, min_iterations=100, min_duration_ns=0))
    rng = random.Random(4)
    noisy = [rng.randint(1, 1_000_000) for _ in range(200)]
    tight = [MS] * 200
    # Before the first checkpoint (the minimum iterations) nothing is computed.
    assert rule.check(S, noisy[:99]) is None
    assert rule.last_relative_ci is None
    # Checkpoint at 100: noisy, so no stop; the next checkpoint is 10 samples later.
    assert rule.check(S, noisy[:100]) is None
    at_100 = rule.last_relative_ci
    assert at_100 is not None
    assert at_100 > 0.01
    # Samples that would converge are not looked at between checkpoints.
    for n in range(101, 110):
        assert rule.check(S, tight[:n]) is None
        assert rule.last_relative_ci == at_100
    assert rule.check(S, tight[:110]) == StopReason.CI_CONVERGED
    assert rule.last_relative_ci == 0.0


def test_checkpoints_are_spaced_by_ten_percent_of_the_count() -> None:
    rule = StopRule(plan(target_relative_ci=0.01, min_iterations=1_000, min_duration_ns=0))
    rng = random.Random(5)
    noisy = [rng.randint(1, 1_000_000) for _ in range(1_200)]
    assert rule.check(S, noisy[:1_000]) is None
    first = rule.last_relative_ci
    for n in range(1_001, 1_100):
        assert rule.check(S, noisy[:n]) is None
        assert rule.last_relative_ci == first
    assert rule.check(S, noisy[:1_100]) is None
    assert rule.last_relative_ci != first
