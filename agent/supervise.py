"""Watching one running job: its limits are enforced until every process of the job is gone.

The supervisor reads the job's event pipe (agent/watch.py: bounded, defensive), samples the memory and
process count of the whole job every WATCH_INTERVAL_S (agent/sandbox/tree.py: cgroup members, the process
tree and the agent's subreaper adoptees, so a double-forked or `setsid` process is counted too), and kills
the whole job on cancel, deadline, memory, process count or a protocol violation. End of file on the pipe
ends nothing: only the job process's exit does, and whatever it leaves behind is killed in a `finally`.
Then it turns what happened into a BenchmarkResult, with the sandbox controls that were in force.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.jobprocess import JobProcess
from agent.jobspec import decode
from agent.sandbox import policy
from agent.sandbox.cgroup import JobCgroup
from agent.sandbox.tree import JobTree
from agent.types import BenchmarkJob, BenchmarkResult, BenchmarkStatus, JobPhase, Provenance
from agent.watch import EventReader

if TYPE_CHECKING:
    from agent.runner import JobRunner

WATCH_INTERVAL_S = policy.WATCH_INTERVAL_MS / 1000
#: How long the agent waits for a killed job's processes to be gone before it reports the job anyway.
KILL_GRACE_S = 5.0
DIAGNOSTICS_CHARS = 4000
Progress = Callable[[JobPhase, int, str], None]


def mb(n: int) -> str:
    """Bytes as whole MiB, for messages."""
    return f"{n / 2**20:.0f} MiB"


def failed_result(
    job: BenchmarkJob, status: BenchmarkStatus, message: str, started: int, diagnostics: str
) -> BenchmarkResult:
    return BenchmarkResult(
        job_id=job.job_id,
        status=status,
        message=message,
        started_at_ns=started,
        finished_at_ns=time.time_ns(),
        diagnostics=diagnostics,
        provenance=Provenance.for_job(job),
    )


def signal_name(number: int) -> str:
    """A signal's name, including the real-time ones Python's enum does not list (SIGRTMIN+3)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        low, high = getattr(signal, "SIGRTMIN", 34), getattr(signal, "SIGRTMAX", 64)
        if low <= number <= high:
            return f"SIGRTMIN+{number - low}"
        return f"signal {number}"


class Supervisor:
    """Watches one job process until every process of the job is gone, enforcing its limits all along."""

    def __init__(
        self,
        runner: JobRunner,
        job: BenchmarkJob,
        child: JobProcess,
        cgroup: JobCgroup | None,
        progress: Progress,
        cancel: threading.Event,
        started: int,
    ) -> None:
        self.runner, self.job, self.child, self.cgroup = runner, job, child, cgroup
        self.cancel, self.started = cancel, started
        self.wall_ns, self.mem_limit, self.notes = runner.limits(job)
        reaper = runner.reaper
        self.tree = JobTree(child.proc.pid, cgroup, reaper.adopted if reaper.enabled else None)
        self.kernel_limits = cgroup.limit(self.mem_limit, policy.PIDS_MAX) if cgroup else []
        self.reader = EventReader(child.event_fd, progress, max_line_bytes=runner.config.max_event_line_bytes)
        self.killed_for: str | None = None

    def _check(self, deadline: float) -> str | None:
        if self.cancel.is_set():
            return "cancel"
        if time.monotonic() > deadline:
            return "timeout"
        rss, count = self.tree.sample()
        if self.mem_limit and rss > self.mem_limit:
            return "memory"
        if self.cgroup is not None and "memory.max" in self.kernel_limits and self.cgroup.oom_kills():
            return "memory"
        if count > self.runner.config.max_processes:
            return "processes"
        if self.reader.error:
            return "protocol"
        return None

    def watch(self) -> BenchmarkResult:
        proc = self.child.proc
        deadline = time.monotonic() + self.wall_ns / 1e9
        killed_at = 0.0
        try:
            while True:
                self.reader.pump(WATCH_INTERVAL_S)
                exited = proc.poll() is not None
                if self.killed_for is None and not exited:
                    self.killed_for = self._check(deadline)
                    if self.killed_for:
                        killed_at = time.monotonic()
                        self.tree.kill()
                if exited:
                    break
                if self.killed_for and time.monotonic() - killed_at > KILL_GRACE_S:
                    break  # reported now; the finally below keeps killing
                if self.killed_for:
                    self.tree.kill()
        finally:
            # Whatever the job left behind (lingering children, escaped daemons) goes with it.
            self.tree.kill()
            self.runner.reaper.reap()
            self.reader.drain(1.0)
            self.reader.close()
            self.child.kill()
        return self._result(proc.wait(timeout=KILL_GRACE_S))

    def _result(self, code: int) -> BenchmarkResult:
        result = self._classify(code)
        sandbox = self.reader.sandbox or {}
        enforced: dict[object, object] = sandbox["enforced"] if isinstance(sandbox.get("enforced"), dict) else {}
        missing: dict[object, object] = sandbox["missing"] if isinstance(sandbox.get("missing"), dict) else {}
        controls = self.runner.sandbox.controls(
            {str(k): str(v)[:300] for k, v in enforced.items()} if self.reader.sandbox else {},
            {str(k): str(v)[:300] for k, v in missing.items()},
        )
        if self.cgroup is None and self.runner.sandbox.cgroups is not None:
            controls = tuple(
                dataclasses.replace(c, detail=c.detail + " (job cgroup could not be created)")
                if c.name == "processes" else c
                for c in controls
            )
        message = "; ".join([m for m in (result.message, *self.notes) if m])
        provenance = dataclasses.replace(result.provenance, sandbox=controls)
        return dataclasses.replace(result, message=message, provenance=provenance)

    def _classify(self, code: int) -> BenchmarkResult:
        job, reader = self.job, self.reader
        log_path = self.child.log_path

        def failed(status: BenchmarkStatus, message: str) -> BenchmarkResult:
            tail = log_path.read_text(errors="replace")[-DIAGNOSTICS_CHARS:] if log_path.exists() else ""
            return failed_result(job, status, message, self.started, tail)

        phase = reader.phase.value.replace("_", " ")
        if self.killed_for == "cancel":
            return failed(BenchmarkStatus.CANCELLED, f"cancelled by the client during {phase}")
        if self.killed_for == "timeout":
            return failed(
                BenchmarkStatus.TIMEOUT,
                f"job exceeded its wall-time limit of {self.wall_ns / 1e9:g} s during {phase} and was killed; "
                "raise the job's time limit or lower its max duration",
            )
        if self.killed_for == "memory":
            how = "the kernel's cgroup limit" if self.cgroup and self.cgroup.oom_kills() else "the agent's watchdog"
            return failed(
                BenchmarkStatus.OUT_OF_MEMORY,
                f"job's processes reached {mb(self.tree.peak_rss)} RSS during {phase}, over its memory limit "
                f"of {mb(self.mem_limit)}, and were killed by {how}; raise the job's memory limit or use a "
                "smaller model or batch",
            )
        if self.killed_for == "processes":
            return failed(
                BenchmarkStatus.FAILED,
                f"job started more than {self.runner.config.max_processes} processes during {phase} and was killed "
                "(a model has no reason to start processes; the agent's --max-job-processes)",
            )
        if self.killed_for == "protocol":
            return failed(BenchmarkStatus.FAILED, f"{reader.error} during {phase}; the job was killed")
        if reader.result is not None:
            try:
                return decode(BenchmarkResult, reader.result)
            except Exception as exc:  # whatever the job sent, it is only a malformed result
                return failed(BenchmarkStatus.FAILED, f"job process sent a malformed result: {str(exc)[:300]}")
        if code < 0:
            name = signal_name(-code)
            why = {
                "SIGKILL": "killed from outside the agent (the kernel's out-of-memory killer does this)",
                "SIGSEGV": "the runtime crashed (segmentation fault)",
                "SIGABRT": "the runtime aborted",
                "SIGBUS": "the runtime crashed (bus error)",
            }.get(name, "terminated by a signal")
            return failed(BenchmarkStatus.FAILED, f"job process died from {name} during {phase}: {why}")
        return failed(
            BenchmarkStatus.FAILED,
            f"job process exited with code {code} during {phase} without a result; see diagnostics",
        )
