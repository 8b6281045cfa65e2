"""The agent's job queue: one job measures at a time; results are kept (bounded, on disk) by job id.

Idempotency: a job id that is queued, running or finished is never run again; submitting it again (for
example by a coordinator whose stream broke) re-attaches to it, and a finished job's result is replayed.
The same id with different contents is a conflict. Results survive an agent restart (files in the work
directory), bounded to `max_kept` newest; only the newest RESULTS_IN_MEMORY of them are also held in memory
(a result can carry a million raw samples), the others are read back from their files when asked for.
At most `max_queued` jobs wait behind the running one.

Faults: nothing stops the worker thread. A result that cannot be written to disk (disk full, I/O error,
read-only filesystem) is still published and kept in memory, says so in its diagnostics, and is reported
through `on_disk_error` so the agent can turn its health NOT_SERVING until the disk recovers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.jobspec import decode, to_jsonable
from agent.runner import JobFiles
from agent.types import BenchmarkJob, BenchmarkResult, BenchmarkStatus, JobEvent, JobPhase, JobState

log = logging.getLogger(__name__)

#: Finished results also held in memory, newest first; the other kept ones are read from disk on demand.
RESULTS_IN_MEMORY = 32

RunFn = Callable[[BenchmarkJob, JobFiles, Callable[[JobPhase, int, str], None], threading.Event], BenchmarkResult]


class JobConflict(Exception):
    """The job id is known with different contents."""


class QueueFull(Exception):
    """`max_queued` jobs already wait; the message names the limit and its flag."""


def fingerprint(job: BenchmarkJob) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(job), sort_keys=True).encode()).hexdigest()


@dataclass
class _Record:
    job: BenchmarkJob
    fingerprint: str
    files: JobFiles | None
    state: JobState
    release: Callable[[], None] = lambda: None
    last_progress: JobEvent | None = None
    result: BenchmarkResult | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: False when the result could not be written: then memory holds the only copy and keeps it.
    saved: bool = True
    #: None in a subscriber queue is a wake-up (its stream ended), not an event.
    subscribers: list[queue.Queue[JobEvent | None]] = field(default_factory=list)


class Subscription:
    """The events of one job for one stream; iterate with a timeout so the caller can notice a dead client."""

    def __init__(self, manager: JobManager, job_id: str, q: queue.Queue[JobEvent | None]) -> None:
        self._manager = manager
        self.job_id = job_id
        self._q = q

    def next(self, timeout: float) -> JobEvent | None:
        """The next event, or None after `timeout` or a `wake()`."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self) -> None:
        """Make a waiting `next` return None now (e.g. when the stream's client went away)."""
        self._q.put(None)

    def close(self) -> None:
        self._manager._unsubscribe(self.job_id, self._q)


class JobManager:
    def __init__(
        self,
        results_dir: Path,
        run: RunFn,
        *,
        max_kept: int = 1000,
        max_queued: int = 64,
        on_disk_error: Callable[[OSError], None] = lambda exc: None,
    ) -> None:
        """`on_disk_error` is called (with the lock held: it must be quick and must not call back) whenever
        writing or deleting a result file fails, or the runner raises an OSError."""
        self._dir = results_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._run = run
        self._max_kept = max_kept
        self._max_queued = max_queued
        self._on_disk_error = on_disk_error
        self._lock = threading.Condition()
        #: Queued, running and (some) finished jobs; finished ones may be evicted to their files.
        self._records: OrderedDict[str, _Record] = OrderedDict()
        #: Ids of kept finished results, oldest first: what `max_kept` bounds (their files go with them).
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._stopping = False
        self._trim_disk()
        self._worker = threading.Thread(target=self._work, name="edgebench-jobs", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public

    def submit(self, job: BenchmarkJob, files: JobFiles, release: Callable[[], None] = lambda: None) -> Subscription:
        """Queue `job` (or re-attach to it if its id is known). `release` is called once it is finished, or at
        once if the job is not queued (re-attached, conflict, queue full, shutting down).

        Raises JobConflict, QueueFull, or RuntimeError when shutting down."""
        fp = fingerprint(job)
        q: queue.Queue[JobEvent | None] = queue.Queue()
        with self._lock:
            rec = self._lookup(job.job_id)
            if rec is not None:
                release()
                if rec.fingerprint != fp:
                    raise JobConflict(
                        f"job id {job.job_id!r} was already used for a different job; use a new id per job"
                    )
                q.put(JobEvent(job.job_id, accepted_queue_position=self._position(job.job_id), reattached=True))
                if rec.result is not None:
                    q.put(JobEvent(job.job_id, result=rec.result))
                else:
                    if rec.last_progress is not None:
                        q.put(rec.last_progress)
                    rec.subscribers.append(q)
                return Subscription(self, job.job_id, q)
            if self._stopping:
                release()
                raise RuntimeError("agent is shutting down")
            if len(self._queue) >= self._max_queued:
                release()
                raise QueueFull(
                    f"queue full: {len(self._queue)} jobs already wait on this agent, the limit is "
                    f"{self._max_queued} (--max-queued-jobs); retry once some have finished, or raise the limit"
                )
            rec = _Record(job, fp, files, JobState.QUEUED, release=release, subscribers=[q])
            self._records[job.job_id] = rec
            self._queue.append(job.job_id)
            pos = self._position(job.job_id)
            q.put(JobEvent(job.job_id, accepted_queue_position=pos))
            # Published (not just queued) so a client that re-attaches later gets the queued state too.
            self._publish(
                rec,
                JobEvent(
                    job.job_id,
                    phase=JobPhase.QUEUED,
                    queue_position=pos,
                    message=f"{pos} job(s) ahead on this device" if pos else "",
                ),
            )
            self._lock.notify_all()
        return Subscription(self, job.job_id, q)

    def get(self, job_id: str) -> tuple[JobState, BenchmarkResult | None]:
        with self._lock:
            rec = self._lookup(job_id)
            if rec is None:
                return JobState.UNKNOWN, None
            return rec.state, rec.result

    def cancel(self, job_id: str) -> tuple[JobState, bool]:
        with self._lock:
            rec = self._lookup(job_id)
            if rec is None:
                return JobState.UNKNOWN, False
            if rec.state == JobState.FINISHED:
                return JobState.FINISHED, False
            if rec.state == JobState.QUEUED:
                self._queue.remove(job_id)
                self._finish(rec, self._cancelled(rec.job, "cancelled by the client while queued"))
                self._broadcast_positions()
                return JobState.FINISHED, True
            rec.cancel.set()
            return JobState.RUNNING, True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel queued and running ones (their results say so), wait for the worker."""
        with self._lock:
            self._stopping = True
            for job_id in list(self._queue):
                self._finish(self._records[job_id], self._cancelled(self._records[job_id].job, "agent shut down"))
            self._queue.clear()
            if self._running:
                self._records[self._running].cancel.set()
            self._lock.notify_all()
        self._worker.join(timeout)

    def queue_length(self) -> int:
        with self._lock:
            return len(self._queue) + (1 if self._running else 0)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _cancelled(job: BenchmarkJob, message: str) -> BenchmarkResult:
        return BenchmarkResult(job_id=job.job_id, status=BenchmarkStatus.CANCELLED, message=message)

    def _position(self, job_id: str) -> int:
        ahead = 1 if self._running and self._running != job_id else 0
        try:
            return ahead + list(self._queue).index(job_id)
        except ValueError:
            return 0

    def _broadcast_positions(self) -> None:
        for pos, job_id in enumerate(self._queue, start=1 if self._running else 0):
            self._publish(
                self._records[job_id],
                JobEvent(
                    job_id,
                    phase=JobPhase.QUEUED,
                    queue_position=pos,
                    message=f"{pos} job(s) ahead on this device",
                ),
            )

    def _publish(self, rec: _Record, event: JobEvent) -> None:
        if event.phase is not None:
            rec.last_progress = event
        for q in rec.subscribers:
            q.put(event)

    def _unsubscribe(self, job_id: str, q: queue.Queue[JobEvent | None]) -> None:
        with self._lock:
            rec = self._records.get(job_id)
            if rec is not None and q in rec.subscribers:
                rec.subscribers.remove(q)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue:
                    return
                job_id = self._queue.popleft()
                rec = self._records[job_id]
                rec.state = JobState.RUNNING
                self._running = job_id
                self._broadcast_positions()
                self._publish(rec, JobEvent(job_id, phase=JobPhase.STARTING))
            result = self._run_one(rec)
            with self._lock:
                self._running = None
                try:
                    self._finish(rec, result)
                except Exception:  # nothing may stop the queue; _finish already published what it could
                    log.exception("agent error while finishing job %s", job_id)

    def _run_one(self, rec: _Record) -> BenchmarkResult:
        def progress(phase: JobPhase, iterations: int, message: str) -> None:
            with self._lock:
                self._publish(rec, JobEvent(rec.job.job_id, phase=phase, iterations_done=iterations, message=message))

        try:
            if rec.files is None:
                raise RuntimeError("job has no files")
            return self._run(rec.job, rec.files, progress, rec.cancel)
        except Exception as exc:  # a bug in the runner, or a disk fault, must not kill the queue
            if isinstance(exc, OSError):
                with self._lock:
                    self._on_disk_error(exc)
            return BenchmarkResult(
                job_id=rec.job.job_id,
                status=BenchmarkStatus.FAILED,
                message=f"agent error while running the job: {type(exc).__name__}: {exc}",
            )

    def _finish(self, rec: _Record, result: BenchmarkResult) -> None:
        """Record the final result (memory and disk), tell every subscriber, release artifacts. Holds lock.

        The subscribers hear the result even when it cannot be written to disk: then it is kept in memory
        only, and its diagnostics say so first."""
        try:
            self._persist(rec.job, rec.fingerprint, result)
        except OSError as exc:
            self._on_disk_error(exc)
            result = dataclasses.replace(result, diagnostics=_unsaved_note(exc) + result.diagnostics)
            rec.saved = False
        self._kept[rec.job.job_id] = None
        self._kept.move_to_end(rec.job.job_id)
        rec.result = result
        rec.state = JobState.FINISHED
        rec.files = None
        self._publish(rec, JobEvent(rec.job.job_id, phase=JobPhase.FINISHED))
        self._publish(rec, JobEvent(rec.job.job_id, result=result))
        rec.subscribers.clear()
        try:
            rec.release()
        finally:
            self._trim()

    def _result_path(self, job_id: str) -> Path:
        return self._dir / f"{hashlib.sha256(job_id.encode()).hexdigest()[:32]}.json"

    def _persist(self, job: BenchmarkJob, fp: str, result: BenchmarkResult) -> None:
        path = self._result_path(job.job_id)
        tmp = path.with_suffix(".tmp")
        data = {"fingerprint": fp, "job": to_jsonable(job), "result": to_jsonable(result)}
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError:
            # A partial file on a full disk is worth nothing and holds the space the next result needs.
            for stale in (tmp, path):
                with contextlib.suppress(OSError):
                    stale.unlink(missing_ok=True)
            raise

    def _lookup(self, job_id: str) -> _Record | None:
        rec = self._records.get(job_id)
        if rec is not None:
            return rec
        path = self._result_path(job_id)
        try:
            if not path.exists():
                return None
            text = path.read_text()
        except OSError as exc:  # an unreadable disk: the job is unknown rather than the call failing
            self._on_disk_error(exc)
            return None
        try:
            data = json.loads(text)
            rec = _Record(
                decode(BenchmarkJob, data["job"]),
                data["fingerprint"],
                None,
                JobState.FINISHED,
                result=decode(BenchmarkResult, data["result"]),
            )
        except (ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # a damaged file is worth less than a rerun
            return None
        self._records[job_id] = rec
        self._kept[job_id] = None
        self._trim()
        return rec

    def _trim(self) -> None:
        """Keep the newest `max_kept` finished results, in the order they finished (not by mtime, which a
        clock step on a device without a real-time clock could reorder); a dropped result's file goes with
        it. Of those, hold at most RESULTS_IN_MEMORY in memory, plus any that could not be saved."""
        while len(self._kept) > self._max_kept:
            job_id, _ = self._kept.popitem(last=False)
            self._records.pop(job_id, None)
            try:
                self._result_path(job_id).unlink(missing_ok=True)
            except OSError as exc:
                self._on_disk_error(exc)
        in_memory = [k for k in self._kept if k in self._records]
        excess = len(in_memory) - RESULTS_IN_MEMORY
        for job_id in in_memory:
            if excess <= 0:
                break
            if self._records[job_id].saved:
                del self._records[job_id]
                excess -= 1

    def _trim_disk(self) -> None:
        """At start-up only: files left by earlier runs, beyond the bound, oldest first."""
        files = sorted(self._dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for path in files[: max(0, len(files) - self._max_kept)]:
            path.unlink(missing_ok=True)


def _unsaved_note(exc: OSError) -> str:
    why = errno.errorcode.get(exc.errno or 0, "")
    return (
        f"agent: this result could not be saved on the agent's disk ({why + ': ' if why else ''}"
        f"{exc.strerror or exc}); it is kept in memory only and is lost if the agent restarts. "
        "Free space on (or repair) the agent's work directory.\n"
    )


def iterate(sub: Subscription, alive: Callable[[], bool], poll_s: float = 0.5) -> Iterator[JobEvent]:
    """Yield a subscription's events until the result, or until `alive()` turns false (client gone).

    `alive` is checked every `poll_s` and after every `Subscription.wake()`, so a stream whose client
    went away ends within `poll_s` at most, at once when its end wakes the subscription."""
    try:
        while alive():
            event = sub.next(poll_s)
            if event is None:
                continue
            yield event
            if event.result is not None:
                return
    finally:
        sub.close()
