"""The steady-state stop rule, as a pure object: feed it the elapsed time and sample count, it says stop.

Rule (after LoadGen): stop once BOTH the minimum duration and the minimum iteration count are reached,
unless an adaptive tolerance is set, in which case keep going until the 95% CI of the median is within
`target_relative_ci` of the median; always stop at the maximum duration or maximum iteration count.
The CI check sorts the samples, so it runs only at checkpoints spaced ~10% of the count apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.types import MeasurementPlan, StopReason


class StopRule:
    def __init__(self, plan: MeasurementPlan) -> None:
        self.plan = plan
        self._next_check = max(plan.min_iterations, 10)
        self.last_relative_ci: float | None = None

    def check(self, elapsed_ns: int, samples: Sequence[int]) -> StopReason | None:
        """Call after every iteration with the steady-state wall time so far and the samples."""
        n = len(samples)
        plan = self.plan
        if n >= plan.max_iterations:
            return StopReason.MAX_ITERATIONS
        if elapsed_ns >= plan.max_duration_ns:
            return StopReason.MAX_DURATION
        if n < plan.min_iterations or elapsed_ns < plan.min_duration_ns:
            return None
        if plan.target_relative_ci <= 0:
            return StopReason.MINIMUMS_MET
        if n < self._next_check:
            return None
        self._next_check = n + max(10, n // 10)
        from protos.stats import relative_ci_halfwidth  # only adaptive runs pay for the import

        self.last_relative_ci = relative_ci_halfwidth(sorted(samples))
        if self.last_relative_ci <= plan.target_relative_ci:
            return StopReason.CI_CONVERGED
        return None
