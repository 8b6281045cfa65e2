"""The job process after its sandbox namespaces are in place (see agent/child.py, which imports this).

Reads the job envelope from stdin, confines itself (agent.sandbox.jobside.confine), reports what is in
force in one {"kind": "sandbox"} event, then runs the harness. Writes newline-delimited JSON events to the
event fd: the sandbox event, progress events, then exactly one {"kind": "result"} event, whatever happens in
the harness. A hard crash (abort, segfault, OOM kill) writes nothing more; the parent turns that into a
result. Runtime libraries may print to stdout/stderr freely: events use their own pipe.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from agent.jobspec import decode, to_jsonable
from agent.measure.harness import Measured, run
from agent.runtimes import UnknownRuntime
from agent.runtimes.base import InputMismatch, ModelLoadError, RuntimeUnsupported
from agent.sandbox.jobside import Confinement, confine
from agent.types import (
    BenchmarkJob,
    BenchmarkResult,
    BenchmarkStatus,
    JobPhase,
    Provenance,
)


class EventWriter:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._stream.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            # The agent that started this job is gone (killed): nobody will read the result, and a job
            # left running would disturb the next measurement on this device.
            os._exit(3)

    def progress(self, phase: JobPhase, iterations: int, message: str) -> None:
        self.send({"kind": "progress", "phase": phase.value, "iterations": iterations, "message": message})


def classify(exc: BaseException, phase: JobPhase) -> tuple[BenchmarkStatus, str]:
    """Map what went wrong in the harness to a result status and a message that says what to do."""
    where = phase.value.replace("_", " ")
    if isinstance(exc, (RuntimeUnsupported, UnknownRuntime)):
        return BenchmarkStatus.UNSUPPORTED, str(exc)
    if isinstance(exc, MemoryError):
        return BenchmarkStatus.OUT_OF_MEMORY, f"out of memory during {where}"
    if isinstance(exc, ModelLoadError):
        return BenchmarkStatus.FAILED, f"model did not load: {exc}"
    if isinstance(exc, InputMismatch):
        return BenchmarkStatus.FAILED, f"inputs do not fit the model: {exc}"
    return BenchmarkStatus.FAILED, f"{type(exc).__name__} during {where}: {exc}"


def execute(job: BenchmarkJob, model_path: Path, dataset_path: Path | None, events: EventWriter) -> BenchmarkResult:
    started = time.time_ns()
    out = Measured()
    status, message, diagnostics = BenchmarkStatus.SUCCEEDED, "", ""
    try:
        run(job, model_path, dataset_path, events.progress, out)
    except Exception as exc:
        status, message = classify(exc, out.phase)
        diagnostics = traceback.format_exc(limit=8)[-4000:]
    if out.notes:
        message = "; ".join([message, *out.notes] if message else out.notes)
    provenance = Provenance.for_job(
        job,
        os=platform.system(),
        kernel=platform.release(),
        architecture=platform.machine(),
        python_version=platform.python_version(),
        runtime_version=out.runtime_version,
        execution_providers=out.providers,
        inputs=out.inputs,
        outputs=out.outputs,
        before=out.before,
        after=out.after,
        runtime_details=tuple(sorted(out.details.items())),
    )
    return BenchmarkResult(
        job_id=job.job_id,
        status=status,
        message=message,
        timing=out.timing,
        memory=out.memory,
        accuracy=out.accuracy,
        provenance=provenance,
        started_at_ns=started,
        finished_at_ns=time.time_ns(),
        diagnostics=diagnostics,
    )


def serve_one(event_fd: int, features: frozenset[str], state: Confinement) -> int:
    """Run the one job the agent writes to stdin (nothing if stdin closes first: a spare that was never used)."""
    raw = sys.stdin.read()
    if not raw:
        return 0  # a spare process whose agent stopped (or died) before giving it a job
    envelope = json.loads(raw)
    if envelope.get("cpu_affinity") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, envelope["cpu_affinity"])  # before any runtime sizes its thread pool
    job = decode(BenchmarkJob, envelope["job"])
    if envelope.get("fault_injection"):
        from agent.runtimes import faults

        faults.ENABLED = True
    model_path = Path(envelope["model_path"])
    dataset_path = Path(envelope["dataset_path"]) if envelope.get("dataset_path") else None
    folder = Path(envelope["job_folder"]) if envelope.get("job_folder") else model_path.parent
    confine(
        features,
        state,
        job_folder=folder,
        workdir=Path(envelope["workdir"]) if envelope.get("workdir") else None,
        secrets=tuple(Path(p) for p in envelope.get("secrets", ())),
        readonly_files=tuple(p for p in folder.iterdir() if p.is_file()),
        shared_dirs=tuple(Path(p) for p in envelope.get("shared_dirs", ())),
    )
    # Runtimes that write caches or temporary files (HOME, TMPDIR) write them here, the one writable place.
    os.environ["HOME"] = os.environ["TMPDIR"] = str(folder)
    with os.fdopen(event_fd, "w", encoding="utf-8") as stream:
        events = EventWriter(stream)
        # Sent before anything the client sent is opened: the agent believes this event, and only this one.
        events.send({"kind": "sandbox", "enforced": state.enforced, "missing": state.missing})
        result = execute(job, model_path, dataset_path, events)
        events.send({"kind": "result", "result": to_jsonable(result)})
    # The result is out; skip the interpreter's teardown of numpy and the runtime (~50 ms the agent would
    # otherwise wait for before it can report the job finished). Nothing is left to flush but our streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
