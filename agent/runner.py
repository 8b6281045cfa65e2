"""Runs one job in a fresh child process and turns whatever happens to it into a BenchmarkResult.

The child is started by exec (`python -m agent.child`) in its own process group, never forked from the
gRPC server. The parent enforces the job's wall-time and memory limits (RSS watched every
WATCH_INTERVAL_S from the kernel's counters: overshoot is bounded by what the job allocates in that
time) and cancellation, by killing the whole process group. A crash, hang or OOM is a result, not an
exception: the agent keeps serving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

import agent
from agent.jobprocess import JobProcess, JobProcessPool
from agent.jobspec import decode, to_jsonable
from agent.types import BenchmarkJob, BenchmarkResult, BenchmarkStatus, JobPhase, ModelFormat, Provenance

WATCH_INTERVAL_S = 0.02
#: How often the whole process tree (not only the child) is summed: scanning /proc costs more.
TREE_SCAN_INTERVAL_S = 0.5
DIAGNOSTICS_CHARS = 4000
MODEL_SUFFIX = {
    ModelFormat.ONNX: ".onnx",
    ModelFormat.OPENVINO_IR: ".xml",
    ModelFormat.TFLITE: ".tflite",
    ModelFormat.COREML: ".mlpackage.zip",
    ModelFormat.TORCH_EXPORT: ".pt2",
    ModelFormat.NULL: ".json",
}

Progress = Callable[[JobPhase, int, str], None]


@dataclass(frozen=True)
class JobFiles:
    model: Path
    dataset: Path | None
    companions: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class RunnerConfig:
    device_id: str
    default_wall_time_ns: int = 600 * 10**9
    default_memory_bytes: int = 0
    python: str = sys.executable
    cpu_affinity: tuple[int, ...] = ()
    #: Keep one job process started ahead of need (see agent/jobprocess.py).
    prestart: bool = True
    #: Hard ceilings no job can raise its own limits past (0 = no ceiling).
    max_wall_time_ns: int = 0
    max_memory_bytes: int = 0
    #: Job sandbox: "auto" (whatever the OS allows, recorded in each result), "required" (refuse jobs the
    #: sandbox cannot fully contain) or "off".
    sandbox: str = "auto"
    #: A delegated cgroup v2 folder for job cgroups (None = the agent's own cgroup, when writable).
    cgroup_root: Path | None = None
    #: Files a job must never read (token, TLS key and certificate, config file): hidden in its sandbox.
    secret_paths: tuple[Path, ...] = ()


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class JobRunner:
    def __init__(self, jobs_dir: Path, config: RunnerConfig) -> None:
        self.jobs_dir = jobs_dir
        self.config = config
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self._pool = JobProcessPool(jobs_dir, prestart=config.prestart, python=config.python)
        self._pool.refill()

    def close(self) -> None:
        """Stop the spare job process (at agent shutdown)."""
        self._pool.close()

    def _prepare(self, job: BenchmarkJob, files: JobFiles) -> tuple[Path, Path]:
        """A private folder with the model (and companions under their declared names) linked in."""
        folder = self.jobs_dir / hashlib.sha256(job.job_id.encode()).hexdigest()[:24]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model = folder / f"model{MODEL_SUFFIX[job.model.format]}"
        _link(files.model, model)
        for name, path in files.companions:
            _link(path, folder / name)  # names were validated: plain file names only
        return folder, model

    def run(self, job: BenchmarkJob, files: JobFiles, progress: Progress, cancel: threading.Event) -> BenchmarkResult:
        started = time.time_ns()
        folder, model = self._prepare(job, files)
        try:
            result = self._run_child(job, folder, model, files.dataset, progress, cancel, started)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self._pool.refill()  # the next job's process starts now, while nothing is measuring
        prov = dataclasses.replace(result.provenance, device_id=self.config.device_id, agent_version=agent.__version__)
        return dataclasses.replace(result, provenance=prov)

    def _run_child(
        self,
        job: BenchmarkJob,
        folder: Path,
        model: Path,
        dataset: Path | None,
        progress: Progress,
        cancel: threading.Event,
        started: int,
    ) -> BenchmarkResult:
        envelope = {
            "cpu_affinity": list(self.config.cpu_affinity),
            "job": to_jsonable(job),
            "model_path": str(model),
            "dataset_path": str(dataset) if dataset else None,
        }
        child = self._pool.take()
        try:
            assert child.proc.stdin is not None
            try:
                child.proc.stdin.write(json.dumps(envelope).encode())
                child.proc.stdin.close()
            except BrokenPipeError:
                pass  # the child died at start; its exit status tells why
            return self._watch_child(job, child, progress, cancel, started)
        finally:
            child.log_path.unlink(missing_ok=True)

    def _watch_child(
        self, job: BenchmarkJob, child: JobProcess, progress: Progress, cancel: threading.Event, started: int
    ) -> BenchmarkResult:
        wall_ns = job.limits.wall_time_ns or self.config.default_wall_time_ns
        mem_limit = job.limits.memory_bytes or self.config.default_memory_bytes
        proc, read_fd, log_path = child.proc, child.event_fd, child.log_path
        watch = _Watch(proc, read_fd, progress)
        deadline = time.monotonic() + wall_ns / 1e9
        killed_for: str | None = None
        while not watch.eof and proc.poll() is None:
            watch.pump(WATCH_INTERVAL_S)
            if cancel.is_set():
                killed_for = "cancel"
            elif time.monotonic() > deadline:
                killed_for = "timeout"
            elif mem_limit and watch.rss() > mem_limit:
                killed_for = "memory"
            if killed_for:
                child.kill()
                break
        code = proc.wait()
        watch.close()
        child.kill()  # anything the job left behind in its group goes too

        def failed(status: BenchmarkStatus, message: str) -> BenchmarkResult:
            tail = log_path.read_text(errors="replace")[-DIAGNOSTICS_CHARS:] if log_path.exists() else ""
            return BenchmarkResult(
                job_id=job.job_id,
                status=status,
                message=message,
                started_at_ns=started,
                finished_at_ns=time.time_ns(),
                diagnostics=tail,
                provenance=Provenance(
                    runtime_name=job.runtime.name,
                    model_sha256=job.model.sha256,
                    dataset_sha256=job.inputs.dataset_sha256,
                    batch_size=job.inputs.batch_size,
                    intra_op_threads=job.runtime.intra_op_threads,
                    inter_op_threads=job.runtime.inter_op_threads,
                    precision_hint=job.runtime.precision_hint,
                ),
            )

        phase = watch.phase.value.replace("_", " ")
        if killed_for == "cancel":
            return failed(BenchmarkStatus.CANCELLED, f"cancelled by the client during {phase}")
        if killed_for == "timeout":
            return failed(
                BenchmarkStatus.TIMEOUT,
                f"job exceeded its wall-time limit of {wall_ns / 1e9:g} s during {phase} and was killed; "
                "raise the job's time limit or lower its max duration",
            )
        if killed_for == "memory":
            return failed(
                BenchmarkStatus.OUT_OF_MEMORY,
                f"job process reached {_mb(watch.peak_rss)} RSS during {phase}, over its memory limit "
                f"of {_mb(mem_limit)}, and was killed; raise the job's memory limit or use a smaller "
                "model or batch",
            )
        if watch.result is not None:
            try:
                return decode(BenchmarkResult, watch.result)
            except (ValueError, TypeError, KeyError) as exc:
                return failed(BenchmarkStatus.FAILED, f"job process sent a malformed result: {exc}")
        if code < 0:
            name = signal.Signals(-code).name
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


class _Watch:
    """Reads the child's event pipe and watches its memory, from the agent's job thread."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int, progress: Progress) -> None:
        self._proc = psutil.Process(proc.pid)
        self._fd = fd
        self._sel = selectors.DefaultSelector()
        self._sel.register(fd, selectors.EVENT_READ)
        self._buf = b""
        self._progress = progress
        self._last_tree_scan = 0.0
        self._children_rss = 0
        self.eof = False
        self.phase = JobPhase.STARTING
        self.result: dict[str, object] | None = None
        self.peak_rss = 0

    def pump(self, timeout: float) -> None:
        if not self._sel.select(timeout):
            return
        data = os.read(self._fd, 1 << 20)
        if not data:
            self.eof = True
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            if event.get("kind") == "result":
                self.result = event["result"]
            elif event.get("kind") == "progress":
                self.phase = JobPhase(event["phase"])
                self._progress(self.phase, int(event.get("iterations", 0)), str(event.get("message", ""))[:500])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a garbled line is ignored; a missing result is reported as such

    def rss(self) -> int:
        """RSS of the job's process tree (children summed at most every TREE_SCAN_INTERVAL_S)."""
        try:
            own = int(self._proc.memory_info().rss)
            now = time.monotonic()
            if now - self._last_tree_scan > TREE_SCAN_INTERVAL_S:
                self._last_tree_scan = now
                self._children_rss = sum(int(c.memory_info().rss) for c in self._proc.children(recursive=True))
        except psutil.Error:
            return 0
        total = own + self._children_rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    def close(self) -> None:
        # Drain what is left (the result line may arrive just before EOF).
        while not self.eof:
            self.pump(0.5)
            if not self._sel.select(0):
                break
        self._sel.close()
        os.close(self._fd)
