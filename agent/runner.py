"""Runs one job in a fresh, sandboxed child process and turns whatever happens to it into a BenchmarkResult.

The child is started by exec (`python -m agent.child`), never forked from the gRPC server, and contains
itself (agent/sandbox: namespaces, hidden agent files, read-only filesystem, no privileges) before it
opens the model. The agent, from outside, puts it in a cgroup where it can and enforces the job's
wall-time, memory and process-count limits and cancellation until every process of the job is gone
(agent/sandbox/tree.py finds them even after they double-fork or leave the process group), and kills
them all in a `finally`. A crash, hang, OOM or hostile exit is a result, not an exception: the agent keeps
serving. The effective limits are the job's own, capped by the agent's ceilings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import agent
from agent import jobprocess
from agent.blobfiles import link_or_copy
from agent.jobprocess import JobProcess, JobProcessPool
from agent.jobspec import to_jsonable
from agent.sandbox import policy
from agent.sandbox.cgroup import JobCgroup
from agent.sandbox.tree import JobTree, Subreaper
from agent.supervise import Supervisor, mb
from agent.types import BenchmarkJob, BenchmarkResult, JobPhase, ModelFormat
from agent.watch import MAX_LINE_BYTES

MODEL_SUFFIX = {
    ModelFormat.ONNX: ".onnx",
    ModelFormat.OPENVINO_IR: ".xml",
    ModelFormat.TFLITE: ".tflite",
    ModelFormat.COREML: ".mlpackage.zip",
    ModelFormat.TORCH_EXPORT: ".pt2",
    ModelFormat.NULL: ".json",
}
#: Folders below the jobs folder that outlive a job and that jobs may write (TensorRT's engine cache).
SHARED_JOB_DIRS = ("tensorrt-engines",)
DATASET_NAME = ".dataset.npz"

Progress = Callable[[JobPhase, int, str], None]


@dataclass(frozen=True)
class JobFiles:
    """A job's stored artifacts: the model, an optional dataset, companions under their declared names.

    `verify`, when set, is called with each of these paths after they were linked into the job's folder and
    before the job starts; it raises (an ArtifactError saying what to do) if a stored file no longer holds the
    bytes its digest names, so a job never runs, nor names in its provenance, bytes other than those.
    """

    model: Path
    dataset: Path | None
    companions: tuple[tuple[str, Path], ...] = ()
    verify: Callable[[Path], None] | None = None
    #: Around the removal of the job's folder (see ArtifactStore.links_removed).
    links_removed: Callable[[list[Path]], AbstractContextManager[None]] | None = None


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
    #: Let jobs ask the null runtime for hostile behaviours (agent.runtimes.faults): tests of the sandbox only.
    fault_injection: bool = False
    #: Bounds on what one job process may do: processes at once, length of one event line.
    max_processes: int = policy.MAX_JOB_PROCESSES
    max_event_line_bytes: int = MAX_LINE_BYTES


class JobRunner:
    def __init__(self, jobs_dir: Path, config: RunnerConfig) -> None:
        self.jobs_dir = jobs_dir
        self.config = config
        jobs_dir.mkdir(parents=True, exist_ok=True)
        for name in SHARED_JOB_DIRS:
            (jobs_dir / name).mkdir(exist_ok=True)
        self.reaper = Subreaper(lambda: jobprocess.STARTED)
        self.sandbox = policy.prepare(
            config.sandbox,
            jobs_dir,
            config.cgroup_root,
            "subreaper: orphaned processes are re-parented to the agent" if self.reaper.enabled else "",
            config.max_processes,
        )
        self._pool = JobProcessPool(
            jobs_dir, prestart=config.prestart, python=config.python, sandbox=self.sandbox.features
        )
        self._pool.refill()

    def close(self) -> None:
        """Stop the spare job process and remove the job cgroups (at agent shutdown)."""
        self._pool.close()
        self.sandbox.close()

    def _prepare(self, job: BenchmarkJob, files: JobFiles) -> tuple[Path, Path]:
        """A private folder with the model (and companions under their declared names) linked in.

        Each stored file the job reads is verified (`files.verify`) after linking, which is when a hard link
        changed its ctime anyway. Raises (and removes the folder) if a file is gone, changed or collides.
        """
        folder = self.jobs_dir / hashlib.sha256(job.job_id.encode()).hexdigest()[:24]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model = folder / f"model{MODEL_SUFFIX[job.model.format]}"
        # Names were validated: plain, distinct and never the model's own, case-insensitively. The dataset
        # goes in too (the sandbox hides the rest of the work directory); companion names cannot start with a
        # dot, so its name never collides with one.
        placed = [(files.model, model), *((path, folder / name) for name, path in files.companions)]
        if files.dataset is not None:
            placed.append((files.dataset, folder / DATASET_NAME))
        try:
            for src, dst in placed:
                try:
                    link_or_copy(src, dst)  # never writes through an existing file
                except FileNotFoundError:
                    if files.verify is not None:
                        files.verify(src)  # raises an error that says why the artifact is gone
                    raise
            if files.verify is not None:
                for path in dict.fromkeys(src for src, _ in placed):
                    files.verify(path)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder, model

    def limits(self, job: BenchmarkJob) -> tuple[int, int, list[str]]:
        """(wall-time ns, memory bytes, notes): the job's own limits or the agent's defaults, capped by the
        agent's ceilings (a note says when a job asked for more than a ceiling allows)."""
        c = self.config
        wall = job.limits.wall_time_ns or c.default_wall_time_ns
        memory = job.limits.memory_bytes or c.default_memory_bytes
        notes = []
        if c.max_wall_time_ns and wall > c.max_wall_time_ns:
            notes.append(
                f"wall-time limit capped at the agent's ceiling of {c.max_wall_time_ns / 1e9:g} s "
                f"(asked {wall / 1e9:g} s; --max-job-timeout-s on the agent)"
            )
            wall = c.max_wall_time_ns
        if c.max_memory_bytes and (memory == 0 or memory > c.max_memory_bytes):
            if memory:
                notes.append(
                    f"memory limit capped at the agent's ceiling of {mb(c.max_memory_bytes)} "
                    f"(asked {mb(memory)}; --max-job-memory-mb on the agent)"
                )
            memory = c.max_memory_bytes
        return wall, memory, notes

    def run(self, job: BenchmarkJob, files: JobFiles, progress: Progress, cancel: threading.Event) -> BenchmarkResult:
        started = time.time_ns()
        folder, model = self._prepare(job, files)
        dataset = folder / DATASET_NAME if files.dataset is not None else None
        try:
            result = self._run_child(job, folder, model, dataset, progress, cancel, started)
        finally:
            used = [files.model, *(path for _, path in files.companions), *([files.dataset] if files.dataset else [])]
            with files.links_removed(used) if files.links_removed else contextlib.nullcontext():
                shutil.rmtree(folder, ignore_errors=True)
            self._pool.refill()  # the next job's process starts now, while nothing is measuring
        prov = dataclasses.replace(result.provenance, device_id=self.config.device_id, agent_version=agent.__version__)
        return dataclasses.replace(result, provenance=prov)

    def _envelope(self, job: BenchmarkJob, folder: Path, model: Path, dataset: Path | None) -> bytes:
        return json.dumps(
            {
                "cpu_affinity": list(self.config.cpu_affinity),
                "job": to_jsonable(job),
                "model_path": str(model),
                "dataset_path": str(dataset) if dataset else None,
                "job_folder": str(folder),
                "workdir": str(self.jobs_dir.parent),
                "secrets": [str(p) for p in self.config.secret_paths],
                "shared_dirs": [str(self.jobs_dir / name) for name in SHARED_JOB_DIRS],
                "fault_injection": self.config.fault_injection,
            }
        ).encode()

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
        child = self._pool.take()
        cgroup = self._job_cgroup(child)
        try:
            assert child.proc.stdin is not None
            try:
                child.proc.stdin.write(self._envelope(job, folder, model, dataset))
                child.proc.stdin.close()
            except BrokenPipeError:
                pass  # the child died at start; its exit status tells why
            return Supervisor(self, job, child, cgroup, progress, cancel, started).watch()
        finally:
            child.log_path.unlink(missing_ok=True)
            jobprocess.STARTED.discard(child.proc.pid)
            if cgroup is not None:
                cgroup.remove()

    def _job_cgroup(self, child: JobProcess) -> JobCgroup | None:
        """A fresh cgroup holding the job process (and the PID 1 it forked), with the kernel limits set."""
        manager = self.sandbox.cgroups
        if manager is None:
            return None
        try:
            cgroup = manager.create()
            for pid in JobTree(child.proc.pid).pids():
                cgroup.add(pid)
            return cgroup
        except OSError:
            return None  # the watchdog and the namespaces still apply; the result's controls say so
