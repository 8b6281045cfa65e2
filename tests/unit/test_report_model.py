"""Tests of coordinator.report.model: statistics, validity, comparisons, Pareto fronts, recommendations."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from coordinator.report import SCHEMA_VERSION, build_report
from coordinator.report._analysis import pareto_front
from coordinator.report.schema import Cell, Report
from coordinator.types import JobRecord, JobStatus, MeasurementSettings, ResultData, RunData
from protos import stats
from tests.unit.test_report_data import FAIL_MESSAGE, SKIP_MESSAGE, make_run


@pytest.fixture(scope="module")
def run() -> RunData:
    return make_run()


@pytest.fixture(scope="module")
def report(run: RunData) -> Report:
    return build_report(run)


def cell(report: Report, device: str, variant: str, runtime: str) -> Cell:
    return next(c for c in report.cells if (c.device, c.variant, c.runtime) == (device, variant, runtime))


def with_job(run: RunData, device: str, variant: str, runtime: str, **changes: object) -> RunData:
    """`run` with one job's result changed (ResultData fields)."""
    jobs = []
    for job in run.jobs:
        if (job.device, job.variant, job.runtime) == (device, variant, runtime):
            assert job.result is not None
            jobs.append(replace(job, result=replace(job.result, **changes)))  # type: ignore[arg-type]
        else:
            jobs.append(job)
    return replace(run, jobs=tuple(jobs))


def test_one_cell_per_job_in_spec_order(run: RunData, report: Report) -> None:
    assert len(report.cells) == len(run.jobs) == 12
    assert [c.device for c in report.cells[:6]] == ["rpi5"] * 6
    assert [(c.variant, c.runtime) for c in report.cells[:2]] == [("fp32", "onnxruntime"), ("fp32", "tflite")]
    assert report.schema_version == SCHEMA_VERSION == 3


def test_latency_statistics_are_exactly_protos_stats(run: RunData, report: Report) -> None:
    checked = 0
    for job in run.jobs:
        if job.result is None or not job.result.latencies_ns:
            continue
        s = stats.summarize(job.result.latencies_ns)
        lat = cell(report, job.device, job.variant, job.runtime).latency
        assert (lat.n, lat.median_ns, lat.p50_ns, lat.p90_ns, lat.p95_ns, lat.p99_ns) == (
            s.n,
            s.median,
            s.p50,
            s.p90,
            s.p95,
            s.p99,
        )
        assert (lat.mean_ns, lat.stdev_ns, lat.cv, lat.min_ns, lat.max_ns) == (s.mean, s.stdev, s.cv, s.min, s.max)
        assert (lat.median_ci_low_ns, lat.median_ci_high_ns) == (s.median_ci_low, s.median_ci_high)
        assert lat.throughput_per_s == stats.throughput_per_s(s.median, 1)
        checked += 1
    assert checked == 10


def test_p99_withheld_below_100_samples(report: Report) -> None:
    c = cell(report, "jetson", "int8", "onnxruntime")
    assert c.latency.n == 40 and c.latency.p90_ns is not None and c.latency.p99_ns is None
    assert "few samples: n=40 < 100 (no p99)" in c.flags
    assert c.verdict == "VALID"


def test_speedup_of_a_variant_twice_as_fast(run: RunData, report: Report) -> None:
    c = cell(report, "rpi5", "int8", "onnxruntime")
    cmp = c.comparison
    assert cmp.speedup == pytest.approx(2.0, rel=0.01)
    assert cmp.speedup is not None and cmp.speedup_ci_low is not None and cmp.speedup_ci_high is not None
    assert cmp.speedup_ci_low <= 2.0 <= cmp.speedup_ci_high
    assert cmp.speedup_ci_low <= cmp.speedup <= cmp.speedup_ci_high
    assert cmp.speedup_ci_confidence == 0.95
    # The documented construction: each median CI at sqrt(0.95), then base_low/high and base_high/low.
    base = cell(report, "rpi5", "fp32", "onnxruntime")
    jobs = {(j.device, j.variant, j.runtime): j for j in run.jobs}
    samples = {k: sorted(jobs[k].result.latencies_ns) for k in jobs if k[0] == "rpi5" and k[2] == "onnxruntime"}  # type: ignore[union-attr]
    ci = stats.median_ci(samples[("rpi5", "int8", "onnxruntime")], math.sqrt(0.95))
    base_ci = stats.median_ci(samples[("rpi5", "fp32", "onnxruntime")], math.sqrt(0.95))
    assert cmp.speedup_ci_low == base_ci.low / ci.high and cmp.speedup_ci_high == base_ci.high / ci.low
    assert cmp.speedup == base.latency.median_ns / c.latency.median_ns  # type: ignore[operator]
    assert base.comparison.is_baseline and base.comparison.speedup == 1.0


def test_memory_ratio_and_model_attributable_memory(report: Report) -> None:
    c = cell(report, "rpi5", "int8", "onnxruntime")
    mib = 2**20
    assert c.memory.peak_rss_bytes == 105 * mib and c.memory.model_memory_bytes == 45 * mib
    assert c.comparison.memory_ratio == pytest.approx(105 / 180)
    assert c.model.size_bytes == 25 * mib and c.model.compressed_bytes is None
    assert cell(report, "rpi5", "pruned", "onnxruntime").model.compressed_bytes == 40 * mib


def test_accuracy_drop_uses_labels_when_present(report: Report) -> None:
    cmp = cell(report, "rpi5", "int8", "onnxruntime").comparison
    assert cmp.accuracy_drop == pytest.approx(0.003) and cmp.accuracy_basis == "labels_top1"


def test_accuracy_drop_falls_back_to_reference_agreement(run: RunData) -> None:
    changed = with_job(run, "rpi5", "int8", "onnxruntime", top1=None, top5=None, top1_agreement=0.97)
    cmp = cell(build_report(changed), "rpi5", "int8", "onnxruntime").comparison
    # The fixture's baseline agreement is 1.0 (its own reference).
    assert cmp.accuracy_basis == "reference_top1_agreement" and cmp.accuracy_drop == pytest.approx(0.03)


def test_recommendation_respects_the_accuracy_budget(report: Report) -> None:
    rpi5 = report.devices[0]
    assert rpi5.recommendation is not None
    assert (rpi5.recommendation.variant, rpi5.recommendation.runtime) == ("int8", "onnxruntime")
    # pruned/onnxruntime is faster but drops 6 pp: passed over, and the reason says so.
    assert "pruned/onnxruntime (accuracy drop 6.0 pp > 1.0 pp)" in rpi5.recommendation_reason
    assert cell(report, "rpi5", "int8", "onnxruntime").recommended
    assert not cell(report, "rpi5", "pruned", "onnxruntime").recommended
    assert report.cross_device[0].variant == "int8" and report.cross_device[1].device == "jetson"


def test_a_larger_budget_recommends_the_faster_variant(run: RunData) -> None:
    rec = build_report(run, max_accuracy_drop=0.1).devices[0].recommendation
    assert rec is not None and rec.variant == "pruned"


def test_the_baseline_always_qualifies(run: RunData) -> None:
    summary = build_report(run, max_accuracy_drop=0.0).devices[0]
    assert summary.recommendation is not None
    assert (summary.recommendation.variant, summary.recommendation.runtime) == ("fp32", "onnxruntime")
    assert "baseline" in summary.recommendation_reason and "int8/onnxruntime" in summary.recommendation_reason


def test_pareto_front_on_a_hand_example() -> None:
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.0, 0.7), (0.5, 0.4), (4.0, 0.9), (5.0, 0.9), (0.5, 0.3)]
    assert pareto_front(points) == [True, True, False, True, True, True, False, False]
    assert pareto_front([]) == [] and pareto_front([(1.0, 0.1)]) == [True]


def test_device_pareto_front(report: Report) -> None:
    rpi5 = report.devices[0]
    assert rpi5.pareto_metric == "top1"
    assert [(r.variant, r.runtime) for r in rpi5.pareto_front] == [
        ("pruned", "onnxruntime"),
        ("int8", "onnxruntime"),
        ("fp32", "onnxruntime"),
    ]
    on_front = {(c.variant, c.runtime) for c in report.cells_of("rpi5") if c.on_pareto_front}
    assert on_front == {(r.variant, r.runtime) for r in rpi5.pareto_front}


def test_failed_and_skipped_cells_stay_with_their_reason(report: Report) -> None:
    failed = cell(report, "rpi5", "pruned", "tflite")
    assert failed.status == "failed" and failed.message == FAIL_MESSAGE and failed.verdict == "INVALID"
    assert failed.invalid_reasons == (f"failed: {FAIL_MESSAGE}",)
    assert failed.comparison.speedup is None and "did not succeed" in failed.comparison.note
    skipped = cell(report, "jetson", "int8", "tflite")
    assert skipped.status == "skipped" and skipped.message == SKIP_MESSAGE and skipped.latency.n == 0


def test_unstable_and_throttled_cells_are_flagged_but_valid(report: Report) -> None:
    unstable = cell(report, "rpi5", "int8", "tflite")
    assert any(f.startswith("unstable: CV ") and f.endswith("% > 10%") for f in unstable.flags)
    throttled = cell(report, "jetson", "pruned", "onnxruntime")
    assert "throttling suspected: CPU 2.4→1.8 GHz, 55→71 °C" in throttled.flags
    assert unstable.verdict == throttled.verdict == "VALID"
    assert throttled.provenance.before.cpu_frequency_hz == 2_400_000_000
    assert throttled.provenance.runtime_details == (("graph_optimization_level", "ORT_ENABLE_ALL"),)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"latencies_ns": (5_000_000,) * 7}, "too few samples: n=7 < 10 (no p90)"),
        ({"latencies_ns": (0,) * 200}, "zero latency"),
        ({"provenance": {"model_sha256": "f" * 64}}, "wrong model"),
        ({"provenance": {"batch_size": 8}}, "batch mismatch: ran batch 8, requested 1"),
    ],
)
def test_hard_problems_make_a_cell_invalid(run: RunData, changes: dict[str, object], reason: str) -> None:
    c = cell(build_report(with_job(run, "rpi5", "int8", "onnxruntime", **changes)), "rpi5", "int8", "onnxruntime")
    assert c.verdict == "INVALID" and any(r.startswith(reason) for r in c.invalid_reasons), c.invalid_reasons


def test_not_converged_at_max_duration_is_flagged(run: RunData) -> None:
    strict = replace(run, spec=replace(run.spec, settings=MeasurementSettings(target_relative_ci=0.0001)))
    changed = with_job(strict, "rpi5", "int8", "tflite", stop_reason="max_duration")
    c = cell(build_report(changed), "rpi5", "int8", "tflite")
    assert any(f.startswith("did not converge: stopped at max duration") for f in c.flags), c.flags


def test_a_failed_baseline_leaves_comparisons_empty_with_a_reason(run: RunData) -> None:
    jobs = tuple(
        replace(j, status=JobStatus.FAILED, message="out of memory", result=None)
        if (j.device, j.variant, j.runtime) == ("rpi5", "fp32", "onnxruntime")
        else j
        for j in run.jobs
    )
    c = cell(build_report(replace(run, jobs=jobs)), "rpi5", "int8", "onnxruntime")
    assert c.comparison.speedup is None and c.comparison.accuracy_drop is None
    assert "baseline fp32 did not succeed (failed: out of memory)" in c.comparison.note


def test_untrusted_provenance_of_the_wrong_shape_is_ignored(run: RunData) -> None:
    garbage = {
        "device_id": 5,
        "execution_providers": "CPU",
        "intra_op_threads": "four",
        "batch_size": True,
        "before": ["not", "a", "dict"],
        "after": {"cpu_frequency_hz": "-1", "temperature_millicelsius": 3.5, "load_average_1m": "NaN"},
        "runtime_details": None,
    }
    c = cell(
        build_report(with_job(run, "rpi5", "int8", "onnxruntime", provenance=garbage, top1=math.nan)),
        "rpi5",
        "int8",
        "onnxruntime",
    )
    p = c.provenance
    assert p.device_id == "" and p.execution_providers == () and p.intra_op_threads is None
    assert p.batch_size is None and p.before.cpu_frequency_hz is None and p.after.cpu_frequency_hz is None
    assert p.after.load_average_1m is None and c.accuracy.top1 is None


def test_report_is_json_ready_and_deterministic(run: RunData, report: Report) -> None:
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["schema_version"] == 3
    assert build_report(run) == report


def test_invalid_thresholds_are_rejected(run: RunData) -> None:
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        build_report(run, max_accuracy_drop=-0.1)
    with pytest.raises(ValueError, match="cv_threshold"):
        build_report(run, cv_threshold=0.0)


def test_duplicate_records_of_a_cell_keep_the_latest_attempt(run: RunData) -> None:
    first = run.jobs[0]
    retry = replace(first, job_id="retry", attempt=2)
    report = build_report(replace(run, jobs=(*run.jobs, retry)))
    assert len(report.cells) == 12 and report.cells[0].job_id == "retry"


def test_fifty_cells_of_ten_thousand_samples_in_under_a_second(run: RunData) -> None:
    rng = np.random.default_rng(3)
    devices, variants, runtimes = tuple(f"d{i}" for i in range(5)), ("fp32", "a", "b", "c", "e"), ("x", "y")
    jobs = [
        JobRecord(
            f"{d}{v}{r}",
            "r",
            d,
            v,
            r,
            JobStatus.SUCCEEDED,
            result=ResultData(
                JobStatus.SUCCEEDED,
                latencies_ns=tuple(int(x) for x in 1e7 * np.exp(rng.normal(0, 0.05, 10_000))),
                top1=0.7,
            ),
        )
        for d in devices
        for v in variants
        for r in runtimes
    ]
    big = RunData(replace(run.spec, devices=devices, variants=variants, runtimes=runtimes), (), (), tuple(jobs))
    # CPU time, not wall time: the budget is about the work done, and a busy shared machine stretches wall time.
    start = time.process_time()
    built = build_report(big)
    elapsed = time.process_time() - start
    assert len(built.cells) == 50
    assert elapsed < 1.0, elapsed


def test_seed_table_puts_claims_beside_measurements(report: Report) -> None:
    rows = report.seed_table
    techniques = {r.technique for r in rows}
    assert "architecture search" in techniques  # always listed, with why it was not measured
    assert all(r.note == "not implemented in edgebench" for r in rows if r.technique == "architecture search")
    assert all(r.claimed_size and r.claimed_speedup and r.claimed_accuracy_kept for r in rows)
    measured = [r for r in rows if r.variant and r.speedup is not None]
    for r in measured:
        cell = next(c for c in report.cells if (c.device, c.runtime, c.variant) == (r.device, r.runtime, r.variant))
        assert r.speedup == cell.comparison.speedup
