"""Shared helpers of the benchmark scripts: machine header, result table, local agents, job messages.

The scripts measure; they are not tests. Each prints the machine and versions, then a table of figures
with a target and PASS/FAIL per target, and exits 0 whatever the figures are.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from coordinator.dispatch.client import AgentClient
from coordinator.dispatch.local import LocalAgent, start_agent
from protos.edgebench.agent.v1 import agent_pb2 as pb

MiB = 1 << 20

# ---------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("model name" on x86, "Model"/"Hardware" on ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def print_header(title: str, settings: dict[str, object]) -> None:
    """The benchmark's title, the machine, the library versions and the run's settings."""
    import google.protobuf

    import agent

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 0
    load1, load5, _ = os.getloadavg()
    print(f"== {title}")
    print(
        f"machine : {cpu_model()}; {psutil.cpu_count(logical=False)} physical / "
        f"{psutil.cpu_count(logical=True)} logical cores ({affinity} usable); "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; load average {load1:.2f} (1m) {load5:.2f} (5m)"
    )
    print(
        f"system  : {platform.system()} {platform.release()} {platform.machine()}; Python {platform.python_version()}"
    )
    print(
        f"versions: edgebench-agent {agent.__version__}, onnxruntime {_version('onnxruntime')}, "
        f"numpy {_version('numpy')}, onnx {_version('onnx')}, grpcio {_version('grpc')}, "
        f"protobuf {google.protobuf.__version__}, psutil {psutil.__version__}"
    )
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print()


# ---------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("PASS" if self.ok else "FAIL")


def print_table(title: str, rows: Sequence[Row]) -> None:
    headers = ("metric", "value", "target", "result")
    cells = [(r.metric, r.value, r.target or "-", r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    print()


def print_verdict(rows: Sequence[Row]) -> None:
    judged = [r for r in rows if r.ok is not None]
    failed = [r.metric for r in judged if not r.ok]
    summary = f"targets: {len(judged) - len(failed)}/{len(judged)} PASS"
    print(summary + (f"; FAIL: {', '.join(failed)}" if failed else ""))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio_rows(
    reference: str, ratios: Sequence[float], ours: Sequence[float], theirs: Sequence[float], target: tuple[float, float]
) -> list[Row]:
    """The verdict rows of an interleaved edgebench-vs-`reference` latency comparison (medians in ns)."""
    ratio = median(ratios)
    return [
        Row(
            f"edgebench / {reference} median latency (median of rounds)",
            f"{ratio:.3f}",
            f"{target[0]}..{target[1]}",
            target[0] <= ratio <= target[1],
        ),
        Row("per-round ratio min..max", f"{min(ratios):.3f} .. {max(ratios):.3f}"),
        Row("edgebench median latency (median of rounds)", fmt_ms(median(ours))),
        Row(f"{reference} median latency (median of rounds)", fmt_ms(median(theirs))),
    ]


def fmt_ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


def fmt_us(ns: float) -> str:
    return f"{ns / 1e3:.2f} µs"


# ---------------------------------------------------------------------------------------------- agents


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory (on the disk that holds the system's temp dir), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"edgebench-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def local_agent(workdir: Path | None = None, *, extra_args: list[str] | None = None) -> Iterator[LocalAgent]:
    """A real agent process on loopback with its work directory in `workdir` (a fresh temp dir if None)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(temp_dir("agent")) / "agent"
        agent = start_agent(workdir, extra_args=extra_args)
        try:
            yield agent
        finally:
            agent.stop()


def upload(client: AgentClient, path: Path) -> str:
    """Upload `path` (if the agent lacks it) and return its sha256."""
    return client.upload(path).sha256


def null_model(path: Path, shape: Sequence[int] = (1, 16), num_classes: int = 10) -> Path:
    """A null-runtime "model": JSON describing one float32 input."""
    spec = {"inputs": [{"name": "input", "shape": list(shape), "dtype": "float32"}], "num_classes": num_classes}
    path.write_text(json.dumps(spec))
    return path


def make_job(
    model_sha256: str,
    *,
    runtime: str = "onnxruntime",
    model_format: int = pb.MODEL_FORMAT_ONNX,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    options: dict[str, str] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    num_batches: int = 1,
    warmup_iterations: int = 10,
    warmup_s: float = 0.0,
    min_iterations: int = 100,
    min_s: float = 1.0,
    max_s: float = 30.0,
    max_iterations: int = 0,
    memory_pass: bool = True,
    wall_time_s: float = 0.0,
    job_id: str | None = None,
) -> pb.BenchmarkJob:
    """A BenchmarkJob message with generated inputs. `max_iterations` 0 means the agent's cap."""
    job = pb.BenchmarkJob(
        job_id=job_id or f"bench-{uuid.uuid4().hex[:16]}",
        model=pb.ModelRef(sha256=model_sha256, format=model_format),  # type: ignore[arg-type]
        runtime=pb.RuntimeConfig(
            name=runtime, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads, options=options or {}
        ),
        inputs=pb.InputSpec(batch_size=batch_size, generated=pb.GeneratedInputs(seed=seed, num_batches=num_batches)),
        plan=pb.MeasurementPlan(
            warmup_iterations=warmup_iterations, min_iterations=min_iterations, max_iterations=max_iterations
        ),
        memory_pass=memory_pass,
    )
    job.plan.warmup_duration.FromNanoseconds(int(warmup_s * 1e9))
    job.plan.min_duration.FromNanoseconds(int(min_s * 1e9))
    job.plan.max_duration.FromNanoseconds(int(max_s * 1e9))
    if wall_time_s:
        job.limits.wall_time.FromNanoseconds(int(wall_time_s * 1e9))
    return job


def run_job(client: AgentClient, job: pb.BenchmarkJob, timeout_s: float = 600.0) -> pb.BenchmarkResult:
    """Run `job` to its result; raise RuntimeError unless it succeeded."""
    result = client.run_to_result(job, timeout_s=timeout_s)
    if result.status != pb.BENCHMARK_STATUS_SUCCEEDED:
        raise RuntimeError(
            f"job {job.job_id} ended {pb.BenchmarkStatus.Name(result.status)}: {result.message}\n"
            f"{result.diagnostics[-2000:]}"
        )
    return result


def proc_status_kib(pid: int, key: str) -> int:
    """A `VmHWM`/`VmRSS`-style field of /proc/<pid>/status in KiB (0 where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def python() -> str:
    return sys.executable


# ---------------------------------------------------------------------------------------------- job processes

JOB_PROCESS_MODULE = "agent.child"


def _is_job_process(cmdline: Sequence[str] | None) -> bool:
    return JOB_PROCESS_MODULE in (cmdline or ())


def job_processes(agent_pid: int) -> list[psutil.Process]:
    """The agent's live job processes (`python -m agent.child`): its spare, and a running job's if any."""
    try:
        children = psutil.Process(agent_pid).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if _is_job_process(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def _idle_job_processes(agent_pids: Sequence[int]) -> dict[int, tuple[int, float]]:
    """agent pid -> (pid, CPU seconds) of one job process of that agent that is sleeping (not running)."""
    wanted = set(agent_pids)
    found: dict[int, tuple[int, float]] = {}
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "status", "cpu_times"]):
        info = p.info
        t = info["cpu_times"]
        sleeping = info["status"] == psutil.STATUS_SLEEPING
        if info["ppid"] in wanted and _is_job_process(info["cmdline"]) and t is not None and sleeping:
            found[info["ppid"]] = (info["pid"], t.user + t.system)
    return found


def wait_spare_job_processes(agent_pids: Sequence[int], timeout_s: float = 300.0, settle_s: float = 0.25) -> int:
    """Wait until every agent's spare job process has started and finished its imports; return how many are.

    A spare is ready when it blocks reading its job from stdin: it sleeps and its CPU time does not move
    over `settle_s` (a process still importing is running, or sleeps only for the odd disk read)."""
    deadline = time.monotonic() + timeout_s
    ready: set[int] = set()
    before = _idle_job_processes(agent_pids)
    while len(ready) < len(agent_pids) and time.monotonic() < deadline:
        time.sleep(settle_s)
        after = _idle_job_processes(agent_pids)
        ready = {a for a, (pid, cpu) in after.items() if before.get(a) == (pid, cpu)}
        before = after
    return len(ready)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by agents: their own, their reaped children's, and their live job processes'."""

    agents: float
    reaped: float
    live: dict[int, float]  # job process pid -> CPU seconds (spares, and running jobs)
    other_live: float  # live children that are not job processes (e.g. a runtime probe)

    @property
    def total(self) -> float:
        return self.agents + self.reaped + sum(self.live.values()) + self.other_live


def cpu_snapshot(agent_pids: Sequence[int]) -> CpuSnapshot:
    wanted = set(agent_pids)
    agents = reaped = other = 0.0
    live: dict[int, float] = {}
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        if p.info["pid"] in wanted:
            agents += t.user + t.system
            reaped += t.children_user + t.children_system
        elif p.info["ppid"] in wanted:
            if _is_job_process(p.info["cmdline"]):
                live[p.info["pid"]] = t.user + t.system
            else:
                other += t.user + t.system
    return CpuSnapshot(agents, reaped, live, other)


def cpu_parts(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU used between two snapshots: the agents' own; their job processes' work (from when each was taken
    for a job to its exit; the CPU a job process had used as a spare before `before` is not counted); and
    the start-up of spares started in between (live in `after` only)."""
    used = [pid for pid in before.live if pid not in after.live]
    new = [pid for pid in after.live if pid not in before.live]
    kept = [pid for pid in after.live if pid in before.live]
    return {
        "agents": after.agents - before.agents,
        "jobs": after.reaped - before.reaped - sum(before.live[p] for p in used),
        "spares": sum(after.live[p] for p in new) + sum(after.live[p] - before.live[p] for p in kept),
        "other": after.other_live - before.other_live,
        "total": after.total - before.total,
    }
