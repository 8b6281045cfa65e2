"""Tests of agent.jobs.JobManager: event order, queueing, idempotent re-submission, cancel, persistence,
the queue bound and disk faults."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.jobs import RESULTS_IN_MEMORY, JobConflict, JobManager, QueueFull, Subscription, iterate
from agent.runner import JobFiles
from agent.types import (
    BenchmarkJob,
    BenchmarkResult,
    BenchmarkStatus,
    JobEvent,
    JobPhase,
    JobState,
    ModelFormat,
    ModelRef,
    RuntimeConfig,
    StopReason,
    TimingReport,
)

pytestmark = pytest.mark.timeout(20)

SHA = "ab" * 32
#: The fake runner never opens the files, so they need not exist.
FILES = JobFiles(model=Path("model.onnx"), dataset=None)
WAIT_S = 10.0


def job(job_id: str, runtime: str = "null") -> BenchmarkJob:
    return BenchmarkJob(job_id=job_id, model=ModelRef(SHA, ModelFormat.NULL), runtime=RuntimeConfig(runtime))


def succeeded(job_id: str) -> BenchmarkResult:
    return BenchmarkResult(
        job_id=job_id,
        status=BenchmarkStatus.SUCCEEDED,
        timing=TimingReport(latencies_ns=(3, 1, 2), stop_reason=StopReason.MINIMUMS_MET),
    )


class FakeRun:
    """A `run` callable: reports LOADING, waits while its job is held, reports MEASURING, returns a result.

    A held job returns CANCELLED as soon as its cancel event is set, as the real runner does.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}
        self.fail: set[str] = set()

    def hold(self, job_id: str) -> threading.Event:
        self.started[job_id] = threading.Event()
        self.gates[job_id] = threading.Event()
        return self.gates[job_id]

    def wait_started(self, job_id: str) -> None:
        assert self.started[job_id].wait(WAIT_S), f"{job_id} never started"

    def __call__(
        self,
        job: BenchmarkJob,
        files: JobFiles,
        progress: Callable[[JobPhase, int, str], None],
        cancel: threading.Event,
    ) -> BenchmarkResult:
        assert files == FILES
        self.calls.append(job.job_id)
        progress(JobPhase.LOADING, 0, "loading the model")
        if job.job_id in self.started:
            self.started[job.job_id].set()
            deadline = time.monotonic() + WAIT_S
            while not self.gates[job.job_id].wait(0.01) and time.monotonic() < deadline:
                if cancel.is_set():
                    return BenchmarkResult(job.job_id, BenchmarkStatus.CANCELLED, message="cancelled while running")
        if job.job_id in self.fail:
            raise RuntimeError("boom")
        progress(JobPhase.MEASURING, 5, "")
        return succeeded(job.job_id)


class Releases:
    """Counts calls of each job's `release` callback."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, job_id: str) -> Callable[[], None]:
        def release() -> None:
            self.counts[job_id] += 1

        return release


@pytest.fixture
def fake() -> FakeRun:
    return FakeRun()


@pytest.fixture
def managers() -> Iterator[list[JobManager]]:
    """Managers made in a test, shut down at its end so no worker thread outlives it."""
    made: list[JobManager] = []
    yield made
    for m in made:
        m.shutdown(timeout=WAIT_S)


@pytest.fixture
def make(tmp_path: Path, managers: list[JobManager]) -> Callable[..., JobManager]:
    def make(run: FakeRun, *, max_kept: int = 1000, results: Path | None = None, **kwargs: object) -> JobManager:
        m = JobManager(results or tmp_path / "results", run, max_kept=max_kept, **kwargs)  # type: ignore[arg-type]
        managers.append(m)
        return m

    return make


def collect(sub: Subscription, timeout: float = WAIT_S) -> list[JobEvent]:
    """Every event up to the result; fails instead of hanging if the result never comes."""
    deadline = time.monotonic() + timeout
    events = list(iterate(sub, alive=lambda: time.monotonic() < deadline, poll_s=0.01))
    assert events, "no events"
    assert events[-1].result is not None, f"no result within {timeout} s: {events}"
    return events


def first_events(sub: Subscription, n: int) -> list[JobEvent]:
    events = []
    for _ in range(n):
        event = sub.next(timeout=WAIT_S)
        assert event is not None, f"only {len(events)} events arrived: {events}"
        events.append(event)
    return events


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


# ------------------------------------------------------------------ events


def test_event_order_of_one_job(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    m = make(fake)
    events = collect(m.submit(job("a"), FILES))
    assert events[0] == JobEvent("a", accepted_queue_position=0)
    assert [e.phase for e in events[1:-1]] == [
        JobPhase.QUEUED,
        JobPhase.STARTING,
        JobPhase.LOADING,
        JobPhase.MEASURING,
        JobPhase.FINISHED,
    ]
    assert events[1].queue_position == 0
    assert events[3].message == "loading the model"
    assert events[4].iterations_done == 5
    assert events[-1].result == succeeded("a")
    assert all(e.job_id == "a" for e in events)
    assert m.get("a") == (JobState.FINISHED, succeeded("a"))
    assert fake.calls == ["a"]


def test_second_job_waits_in_the_queue(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate = fake.hold("a")
    m = make(fake)
    sub_a = m.submit(job("a"), FILES)
    fake.wait_started("a")
    sub_b = m.submit(job("b"), FILES)
    accepted, queued = first_events(sub_b, 2)
    assert accepted.accepted_queue_position == 1
    assert not accepted.reattached
    assert queued.phase == JobPhase.QUEUED
    assert queued.queue_position == 1
    assert "1 job(s) ahead" in queued.message
    assert m.get("b") == (JobState.QUEUED, None)
    assert m.get("a") == (JobState.RUNNING, None)
    assert m.queue_length() == 2

    gate.set()
    assert collect(sub_a)[-1].result == succeeded("a")
    rest = collect(sub_b)
    assert [e.phase for e in rest[:2]] == [JobPhase.STARTING, JobPhase.LOADING]
    assert rest[-1].result == succeeded("b")
    assert fake.calls == ["a", "b"]
    assert m.queue_length() == 0


def test_queue_positions_move_up(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate_a = fake.hold("a")
    m = make(fake)
    m.submit(job("a"), FILES)
    fake.wait_started("a")
    m.submit(job("b"), FILES)
    sub_c = m.submit(job("c"), FILES)
    accepted, queued = first_events(sub_c, 2)
    assert accepted.accepted_queue_position == 2
    assert queued.queue_position == 2
    m.cancel("b")
    (moved,) = first_events(sub_c, 1)
    assert (moved.phase, moved.queue_position) == (JobPhase.QUEUED, 1)
    gate_a.set()
    assert collect(sub_c)[-1].result == succeeded("c")


# ------------------------------------------------------------------ idempotency


def test_resubmit_while_running_reattaches(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate = fake.hold("a")
    m = make(fake)
    first = m.submit(job("a"), FILES)
    fake.wait_started("a")
    wait_until(lambda: m.get("a")[0] == JobState.RUNNING)
    again = m.submit(job("a"), FILES)
    accepted, last = first_events(again, 2)
    assert accepted.reattached
    assert accepted.accepted_queue_position == 0
    assert last.phase == JobPhase.LOADING  # the latest progress is replayed at once
    gate.set()
    assert collect(first)[-1].result == succeeded("a")
    events = collect(again)
    assert events[-1].result == succeeded("a")
    assert events[-2].phase == JobPhase.FINISHED
    assert fake.calls == ["a"]


def test_resubmit_while_queued_reattaches(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate = fake.hold("a")
    m = make(fake)
    m.submit(job("a"), FILES)
    fake.wait_started("a")
    m.submit(job("b"), FILES)
    again = m.submit(job("b"), FILES)
    (accepted,) = first_events(again, 1)
    assert accepted.reattached
    assert accepted.accepted_queue_position == 1
    gate.set()
    events = collect(again)
    assert JobPhase.STARTING in [e.phase for e in events]
    assert events[-1].result == succeeded("b")
    assert fake.calls == ["a", "b"]


def test_resubmit_after_finish_replays_the_result(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    m = make(fake)
    collect(m.submit(job("a"), FILES))
    events = collect(m.submit(job("a"), FILES))
    assert len(events) == 2
    assert events[0].reattached
    assert events[1].result == succeeded("a")
    assert fake.calls == ["a"]


def test_same_id_with_different_contents_is_a_conflict(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    releases = Releases()
    m = make(fake)
    collect(m.submit(job("a"), FILES, release=releases("a")))
    with pytest.raises(JobConflict, match="'a' was already used for a different job"):
        m.submit(job("a", runtime="onnxruntime"), FILES, release=releases("a-conflict"))
    assert releases.counts == {"a": 1, "a-conflict": 1}
    assert fake.calls == ["a"]


def test_conflict_is_detected_while_running(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate = fake.hold("a")
    m = make(fake)
    sub = m.submit(job("a"), FILES)
    fake.wait_started("a")
    with pytest.raises(JobConflict):
        m.submit(job("a", runtime="onnxruntime"), FILES)
    gate.set()
    assert collect(sub)[-1].result == succeeded("a")


# ------------------------------------------------------------------ cancel


def test_cancel_queued_job(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    gate = fake.hold("a")
    m = make(fake)
    m.submit(job("a"), FILES)
    fake.wait_started("a")
    sub_b = m.submit(job("b"), FILES)
    assert m.cancel("b") == (JobState.FINISHED, True)
    events = collect(sub_b)
    result = events[-1].result
    assert result is not None
    assert result.status == BenchmarkStatus.CANCELLED
    assert "while queued" in result.message
    assert events[-2].phase == JobPhase.FINISHED
    assert m.get("b") == (JobState.FINISHED, result)
    assert m.cancel("b") == (JobState.FINISHED, False)  # nothing left to cancel
    gate.set()
    wait_until(lambda: m.get("a")[0] == JobState.FINISHED)
    assert fake.calls == ["a"]


def test_cancel_running_job_sets_its_cancel_event(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    fake.hold("a")
    m = make(fake)
    sub = m.submit(job("a"), FILES)
    fake.wait_started("a")
    assert m.cancel("a") == (JobState.RUNNING, True)
    result = collect(sub)[-1].result
    assert result is not None
    assert result.status == BenchmarkStatus.CANCELLED
    assert m.get("a")[0] == JobState.FINISHED


def test_cancel_unknown_job(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    m = make(fake)
    assert m.cancel("nope") == (JobState.UNKNOWN, False)
    assert m.get("nope") == (JobState.UNKNOWN, None)


# ------------------------------------------------------------------ results on disk


def test_results_survive_a_restart(fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path) -> None:
    m = make(fake)
    collect(m.submit(job("a"), FILES))
    m.shutdown()

    restarted_run = FakeRun()
    restarted = make(restarted_run)
    assert restarted.get("a") == (JobState.FINISHED, succeeded("a"))
    # Re-submitting after the restart replays the stored result instead of running the job again.
    events = collect(restarted.submit(job("a"), FILES))
    assert events[0].reattached
    assert events[-1].result == succeeded("a")
    with pytest.raises(JobConflict):
        restarted.submit(job("a", runtime="onnxruntime"), FILES)
    assert restarted_run.calls == []


def test_damaged_result_file_is_forgotten(fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path) -> None:
    m = make(fake)
    collect(m.submit(job("a"), FILES))
    m.shutdown()
    (path,) = (tmp_path / "results").glob("*.json")
    path.write_text('{"fingerprint": "x", "job": {"job_id": 1}}')
    restarted_run = FakeRun()
    restarted = make(restarted_run)
    assert restarted.get("a") == (JobState.UNKNOWN, None)
    assert not path.exists()
    assert collect(restarted.submit(job("a"), FILES))[-1].result == succeeded("a")
    assert restarted_run.calls == ["a"]


def test_max_kept_bounds_memory_and_files(fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path) -> None:
    m = make(fake, max_kept=2)
    results = tmp_path / "results"
    seen: set[Path] = set()
    for i, name in enumerate(("j1", "j2", "j3", "j4")):
        collect(m.submit(job(name), FILES))
        # Give each result file its own second, so that kernels with coarse file timestamps do not tie
        # jobs that finish within the same tick.
        (new,) = set(results.glob("*.json")) - seen
        stamp = time.time() - 100 + i
        os.utime(new, (stamp, stamp))
        seen.add(new)
    assert len(list(results.glob("*.json"))) == 2
    assert m.get("j1") == (JobState.UNKNOWN, None)
    assert m.get("j2") == (JobState.UNKNOWN, None)
    assert m.get("j3") == (JobState.FINISHED, succeeded("j3"))
    assert m.get("j4") == (JobState.FINISHED, succeeded("j4"))
    m.shutdown()

    restarted = make(FakeRun(), max_kept=2)
    assert [restarted.get(n)[0] for n in ("j1", "j2", "j3", "j4")] == [
        JobState.UNKNOWN,
        JobState.UNKNOWN,
        JobState.FINISHED,
        JobState.FINISHED,
    ]


def test_newest_result_is_kept_when_the_clock_steps_back(
    fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path
) -> None:
    m = make(fake, max_kept=1)
    collect(m.submit(job("old"), FILES))
    # The result of "old" was written while the clock ran an hour ahead (a device without a real-time
    # clock, corrected by NTP afterwards).
    (old_file,) = (tmp_path / "results").glob("*.json")
    ahead = time.time() + 3600
    os.utime(old_file, (ahead, ahead))
    collect(m.submit(job("new"), FILES))
    m.shutdown()
    restarted = make(FakeRun(), max_kept=1)
    assert restarted.get("new") == (JobState.FINISHED, succeeded("new"))


# ------------------------------------------------------------------ failures and shutdown


def test_exception_in_run_fails_the_job_and_the_queue_goes_on(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    fake.fail.add("bad")
    m = make(fake)
    bad = collect(m.submit(job("bad"), FILES))[-1].result
    assert bad is not None
    assert bad.status == BenchmarkStatus.FAILED
    assert "RuntimeError: boom" in bad.message
    assert m.get("bad") == (JobState.FINISHED, bad)
    assert collect(m.submit(job("good"), FILES))[-1].result == succeeded("good")


def test_shutdown_cancels_queued_and_running_jobs(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    releases = Releases()
    fake.hold("a")
    m = make(fake)
    sub_a = m.submit(job("a"), FILES, release=releases("a"))
    fake.wait_started("a")
    subs = [m.submit(job(n), FILES, release=releases(n)) for n in ("b", "c")]
    m.shutdown(timeout=WAIT_S)
    running = collect(sub_a)[-1].result
    assert running is not None
    assert running.status == BenchmarkStatus.CANCELLED
    for sub in subs:
        result = collect(sub)[-1].result
        assert result is not None
        assert result.status == BenchmarkStatus.CANCELLED
        assert "shut down" in result.message
    assert fake.calls == ["a"]
    assert releases.counts == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(RuntimeError, match="shutting down"):
        m.submit(job("late"), FILES, release=releases("late"))
    assert releases.counts["late"] == 1


def test_release_is_called_exactly_once_per_job(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    releases = Releases()
    fake.fail.add("fails")
    gate = fake.hold("held")
    m = make(fake)
    held = m.submit(job("held"), FILES, release=releases("held"))
    fake.wait_started("held")
    reattach = m.submit(job("held"), FILES, release=releases("held-again"))
    queued = m.submit(job("queued"), FILES, release=releases("queued"))
    m.cancel("queued")
    fails = m.submit(job("fails"), FILES, release=releases("fails"))
    ok = m.submit(job("ok"), FILES, release=releases("ok"))
    # A re-attaching submission holds nothing: its release is called at once.
    assert releases.counts == {"held-again": 1, "queued": 1}
    gate.set()
    for sub in (held, reattach, queued, fails, ok):
        collect(sub)
    wait_until(lambda: m.queue_length() == 0)
    collect(m.submit(job("ok"), FILES, release=releases("ok-again")))
    m.shutdown()
    assert releases.counts == {"held": 1, "held-again": 1, "queued": 1, "fails": 1, "ok": 1, "ok-again": 1}


# ------------------------------------------------------------------ bounds and disk faults


def test_queue_is_bounded(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    """Past `max_queued` waiting jobs a new job is refused (its artifacts released at once); re-attaching
    to a known job still works, and room comes back as the queue drains."""
    releases = Releases()
    gate = fake.hold("running")
    m = make(fake, max_queued=2)
    m.submit(job("running"), FILES)
    fake.wait_started("running")
    m.submit(job("q1"), FILES)
    m.submit(job("q2"), FILES)
    with pytest.raises(QueueFull, match=r"queue full: 2 jobs already wait .* limit is 2 \(--max-queued-jobs\)"):
        m.submit(job("q3"), FILES, release=releases("q3"))
    assert releases.counts == {"q3": 1}
    (accepted,) = first_events(m.submit(job("q1"), FILES), 1)
    assert accepted.reattached
    gate.set()
    wait_until(lambda: m.queue_length() == 0)
    assert collect(m.submit(job("q3"), FILES))[-1].result == succeeded("q3")


def test_result_that_cannot_be_saved_is_published_from_memory(
    fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path
) -> None:
    """A write error while keeping a result (ENOSPC, EIO, EROFS; here ENOTDIR) used to kill the worker
    thread: the result never reached its stream and every later job stayed QUEUED. Now the result is
    published and kept in memory with a note first in its diagnostics, the fault is reported, and the
    queue goes on; once the folder is back, results are saved again."""
    faults: list[OSError] = []
    results = tmp_path / "results"
    m = make(fake, results=results, on_disk_error=faults.append)
    shutil.rmtree(results)
    results.write_text("a file where the results folder was")

    first = collect(m.submit(job("a"), FILES))[-1].result
    assert first is not None and first.status == BenchmarkStatus.SUCCEEDED
    assert first.diagnostics.startswith("agent: this result could not be saved on the agent's disk (ENOTDIR")
    assert "kept in memory only" in first.diagnostics
    assert faults and all(isinstance(f, OSError) for f in faults)
    assert m.get("a") == (JobState.FINISHED, first)
    assert collect(m.submit(job("b"), FILES))[-1].result is not None  # the worker is alive

    results.unlink()
    results.mkdir()
    assert collect(m.submit(job("c"), FILES))[-1].result == succeeded("c")
    assert len(list(results.glob("*.json"))) == 1


def test_a_failing_release_does_not_stop_the_queue(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    def broken_release() -> None:
        raise RuntimeError("release failed")

    m = make(fake)
    assert collect(m.submit(job("a"), FILES, release=broken_release))[-1].result == succeeded("a")
    assert collect(m.submit(job("b"), FILES))[-1].result == succeeded("b")


def test_runner_os_error_is_a_failed_result_and_a_disk_fault(make: Callable[..., JobManager]) -> None:
    faults: list[OSError] = []

    def run(*args: object) -> BenchmarkResult:
        raise OSError(28, "No space left on device")

    m = make(run, on_disk_error=faults.append)  # type: ignore[arg-type]
    result = collect(m.submit(job("a"), FILES))[-1].result
    assert result is not None and result.status == BenchmarkStatus.FAILED
    assert "No space left on device" in result.message
    assert [f.errno for f in faults] == [28]


def test_wake_ends_a_stream_at_once(fake: FakeRun, make: Callable[..., JobManager]) -> None:
    """A stream whose client went away ends when woken, not at the next poll (which frees its thread)."""
    gate = fake.hold("a")
    m = make(fake)
    sub = m.submit(job("a"), FILES)
    fake.wait_started("a")
    alive = threading.Event()
    alive.set()
    ended = threading.Event()

    def stream() -> None:
        for _ in iterate(sub, alive.is_set, poll_s=30):
            pass
        ended.set()

    threading.Thread(target=stream, daemon=True).start()
    time.sleep(0.1)
    alive.clear()
    sub.wake()
    assert ended.wait(2), "the stream waited for its 30 s poll"
    gate.set()


def test_only_the_newest_results_are_held_in_memory(
    fake: FakeRun, make: Callable[..., JobManager], tmp_path: Path
) -> None:
    """Kept results can be large (raw samples): only the newest RESULTS_IN_MEMORY stay in memory, the
    others are read back from their files. Deleting every file shows which ones memory still holds."""
    m = make(fake)
    names = [f"j{i}" for i in range(RESULTS_IN_MEMORY + 8)]
    for name in names:
        collect(m.submit(job(name), FILES))
    assert m.get(names[0]) == (JobState.FINISHED, succeeded(names[0]))  # read back from its file
    for path in (tmp_path / "results").glob("*.json"):
        path.unlink()
    states = [m.get(name)[0] for name in names]
    assert states == [JobState.UNKNOWN] * 8 + [JobState.FINISHED] * RESULTS_IN_MEMORY
