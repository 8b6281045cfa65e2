"""Job processes: started by exec (`python -m agent.child`), one per job, and one kept ready in advance.

A job process imports the harness, numpy and the agent's modules, then blocks reading its job from stdin.
Starting it takes a quarter of a second on a fast CPU and seconds on a Raspberry Pi, so the agent keeps
one *spare*: started right after the previous job finished (never while a job measures), used by
exactly one job, then replaced. Every job still runs in a fresh process of its own; only the start-up
moves off the job's critical path. `prestart=False` starts each process on demand instead.

A job process dies with the agent (a parent-death signal, see agent/child.py). The kernel sends it when the
*thread* that started the process ends, so job processes are started only from threads that live as long as
the agent: the main thread (the first spare) and the job queue's worker (every later one).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import agent

_counter = itertools.count()
#: Pids of every job process this agent started (the subreaper tells them from processes a job orphaned).
STARTED: set[int] = set()
#: The only variables a job process inherits from the agent (the agent's own environment may hold secrets
#: or settings a job must not see). Library paths and GPU selection stay: runtimes need them on devices.
ENV_ALLOWED = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "NVIDIA_VISIBLE_DEVICES",
    "VIRTUAL_ENV",
)


def job_environment(parent: dict[str, str], folder: Path) -> dict[str, str]:
    """The minimal environment of a job process: the allowed variables, the agent's import path, and a HOME
    and TMPDIR inside the jobs folder (a job never writes to the agent user's home or a shared /tmp)."""
    env = {k: v for k, v in parent.items() if k in ENV_ALLOWED}
    env.setdefault("PATH", os.defpath)
    # Make `agent` importable in the child even when run from a source tree.
    root = str(Path(agent.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root
    env.update(
        {
            "HOME": str(folder),
            "TMPDIR": str(folder),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENVINO_TELEMETRY": "0",
        }
    )
    return env


@dataclass
class JobProcess:
    """A started job process: its Popen, the read end of its event pipe, and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    event_fd: int
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the whole process group (the job and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def discard(self) -> None:
        self.kill()
        self.proc.wait()
        STARTED.discard(self.proc.pid)
        with contextlib.suppress(OSError):
            os.close(self.event_fd)
        self.log_path.unlink(missing_ok=True)


def spawn(folder: Path, python: str = sys.executable, sandbox: frozenset[str] = frozenset()) -> JobProcess:
    """Start a job process in `folder` that applies the `sandbox` steps (agent.sandbox.jobside) to itself."""
    env = job_environment(dict(os.environ), folder)
    read_fd, write_fd = os.pipe()
    log_path = folder / f"process-{os.getpid()}-{next(_counter)}.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    python,
                    "-m",
                    "agent.child",
                    "--event-fd",
                    str(write_fd),
                    "--sandbox",
                    ",".join(sorted(sandbox)),
                    "--agent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                close_fds=True,
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    STARTED.add(proc.pid)
    return JobProcess(proc, read_fd, log_path)


class JobProcessPool:
    """Hands out fresh job processes; with `prestart`, one is always started ahead of need."""

    def __init__(
        self,
        folder: Path,
        *,
        prestart: bool = True,
        python: str = sys.executable,
        sandbox: frozenset[str] = frozenset(),
    ) -> None:
        self._folder = folder
        self._prestart = prestart
        self._python = python
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._spare: JobProcess | None = None
        self._closed = False

    def take(self) -> JobProcess:
        """A fresh process for one job: the spare if it is alive, else a new one."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.alive():
            return spare
        if spare is not None:
            spare.discard()  # died while waiting (e.g. killed from outside): never hand out a dead one
        return spawn(self._folder, self._python, self._sandbox)

    def refill(self) -> None:
        """Start the next spare (call when no job is measuring)."""
        if not self._prestart:
            return
        with self._lock:
            if self._closed or self._spare is not None:
                return
            self._spare = spawn(self._folder, self._python, self._sandbox)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
