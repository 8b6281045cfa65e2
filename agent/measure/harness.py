"""The measurement procedure of one job, run inside the job's own process.

Order: environment sample → (dataset) → RSS before load → load (timed) → RSS after load → first inference
(timed) → warm-up → steady-state loop (raw samples) → peak RSS → accuracy pass → environment sample.
Memory comes from kernel counters read at phase boundaries, never from a poller during the timed loop;
progress is reported between iterations at most every PROGRESS_INTERVAL_NS, never inside a timed call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.measure.accuracy import AccuracyAccumulator
from agent.measure.environment import sample_environment
from agent.measure.inputs import (
    MAX_TIMING_BATCHES,
    Feeds,
    check_batch,
    dataset_batches,
    generated_batches,
    load_dataset,
)
from agent.measure.memory import current_rss_bytes, peak_rss_bytes
from agent.measure.plan import StopRule
from agent.runtimes import load_backend
from agent.runtimes.base import Session
from agent.types import (
    AccuracyReport,
    BenchmarkJob,
    EnvironmentSample,
    JobPhase,
    MemoryReport,
    TensorInfo,
    TimingReport,
)

PROGRESS_INTERVAL_NS = 500_000_000
Emit = Callable[[JobPhase, int, str], None]


@dataclass
class Measured:
    """What the harness got so far; on failure, the phases that completed are still reported."""

    phase: JobPhase = JobPhase.STARTING
    timing: TimingReport | None = None
    memory: MemoryReport | None = None
    accuracy: AccuracyReport | None = None
    runtime_version: str = ""
    providers: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    before: EnvironmentSample = field(default_factory=EnvironmentSample)
    after: EnvironmentSample = field(default_factory=EnvironmentSample)
    notes: list[str] = field(default_factory=list)


def run(job: BenchmarkJob, model_path: Path, dataset_path: Path | None, emit: Emit, out: Measured) -> None:
    """Measure `job`, filling `out` as phases complete. Raises the runtime's errors for the caller to map."""
    out.before = sample_environment()
    backend = load_backend(job.runtime.name)
    info = backend.probe()
    out.runtime_version = info.version

    out.phase = JobPhase.LOADING
    emit(JobPhase.LOADING, 0, f"loading with {job.runtime.name} {info.version}")
    # Backends that compile for a shape (OpenVINO, LiteRT, TensorRT) learn the job's batch before load, so the
    # compile is load time, not first-inference time; a job's own "batch" option wins.
    runtime = job.runtime
    if not runtime.option("batch"):
        runtime = dataclasses.replace(runtime, options=(*runtime.options, ("batch", str(job.inputs.batch_size or 1))))
    backend.prepare(model_path, runtime)
    rss_before = current_rss_bytes()
    t0 = time.perf_counter_ns()
    session = backend.load(model_path, runtime)
    load_ns = time.perf_counter_ns() - t0
    rss_after = current_rss_bytes()
    out.inputs, out.outputs = tuple(session.inputs), tuple(session.outputs)
    out.providers = tuple(session.execution_providers())
    out.details = dict(session.details())

    dataset = load_dataset(dataset_path, session.inputs) if dataset_path else None
    batch = job.inputs.batch_size
    if dataset is not None:
        timing_batches = [f for f, _ in dataset_batches(dataset, batch)][:MAX_TIMING_BATCHES]
    else:
        timing_batches = generated_batches(session.inputs, batch, job.inputs.num_batches, job.inputs.seed)
    for feeds in timing_batches:
        check_batch(session.inputs, feeds)

    out.phase = JobPhase.FIRST_INFERENCE
    emit(JobPhase.FIRST_INFERENCE, 0, "")
    t0 = time.perf_counter_ns()
    session.run(timing_batches[0])
    first_ns = time.perf_counter_ns() - t0

    out.phase = JobPhase.WARMUP
    emit(JobPhase.WARMUP, 0, "")
    warm_n, warm_ns = _warmup(session, timing_batches, job)

    out.phase = JobPhase.MEASURING
    emit(JobPhase.MEASURING, 0, "")
    samples, wall_ns, reason = _steady_state(session, timing_batches, job, emit)
    out.timing = TimingReport(
        load_ns=load_ns,
        first_inference_ns=first_ns,
        warmup_iterations=warm_n,
        warmup_ns=warm_ns,
        latencies_ns=tuple(samples),
        steady_wall_ns=wall_ns,
        stop_reason=reason,
    )
    if job.memory_pass:
        out.memory = MemoryReport(rss_before, rss_after, peak_rss_bytes())

    if job.accuracy_pass:
        out.phase = JobPhase.ACCURACY
        if dataset is None:
            out.notes.append("accuracy pass skipped: the job's inputs are generated, not a dataset")
        elif dataset.labels is None and dataset.reference is None:
            out.notes.append("accuracy pass skipped: the dataset has neither 'labels' nor 'reference_outputs'")
        else:
            emit(JobPhase.ACCURACY, 0, f"{dataset.size} samples")
            acc = AccuracyAccumulator()
            for feeds, sl in dataset_batches(dataset, batch):
                outputs = session.run(feeds)
                labels = dataset.labels[sl] if dataset.labels is not None else None
                reference = dataset.reference[sl] if dataset.reference is not None else None
                acc.add(outputs[0], labels=labels, reference=reference)
            out.accuracy = acc.report()
    session.close()
    out.after = sample_environment()


def _warmup(session: Session, batches: list[Feeds], job: BenchmarkJob) -> tuple[int, int]:
    plan = job.plan
    n = 0
    start = time.perf_counter_ns()
    while n < plan.warmup_iterations or time.perf_counter_ns() - start < plan.warmup_duration_ns:
        session.run(batches[n % len(batches)])
        n += 1
        if time.perf_counter_ns() - start > plan.max_duration_ns:  # a warm-up never outlives the run's bound
            break
    return n, time.perf_counter_ns() - start


def _steady_state(session: Session, batches: list[Feeds], job: BenchmarkJob, emit: Emit):  # type: ignore[no-untyped-def]
    rule = StopRule(job.plan)
    samples: list[int] = []
    append = samples.append
    run_model = session.run
    clock = time.perf_counter_ns
    nb = len(batches)
    start = clock()
    next_progress = start + PROGRESS_INTERVAL_NS
    i = 0
    while True:
        feeds = batches[i % nb]
        t0 = clock()
        run_model(feeds)
        t1 = clock()
        append(t1 - t0)
        i += 1
        reason = rule.check(t1 - start, samples)
        if reason is not None:
            return samples, clock() - start, reason
        if t1 >= next_progress:
            emit(JobPhase.MEASURING, i, "")
            next_progress = clock() + PROGRESS_INTERVAL_NS
