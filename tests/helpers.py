"""Helpers for tests: job builders and polling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

from protos.edgebench.agent.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from coordinator.dispatch.local import LocalAgent

#: Processes an idle agent keeps below itself: the spare job process's keeper, its PID 1 and the waiting job.
SPARE_TREE = 3


def make_job(
    model_sha: str,
    *,
    fmt: int = pb.MODEL_FORMAT_ONNX,
    runtime: str = "onnxruntime",
    dataset_sha: str = "",
    batch: int = 1,
    min_iterations: int = 20,
    min_ms: int = 100,
    max_s: float = 10.0,
    accuracy: bool = False,
    options: dict[str, str] | None = None,
    wall_s: float = 0.0,
    memory_mb: int = 0,
    job_id: str | None = None,
    threads: int = 1,
) -> pb.BenchmarkJob:
    job = pb.BenchmarkJob(
        job_id=job_id or f"test-{uuid.uuid4().hex[:12]}",
        model=pb.ModelRef(sha256=model_sha, format=fmt),  # type: ignore[arg-type]
        runtime=pb.RuntimeConfig(name=runtime, intra_op_threads=threads, options=options or {}),
        accuracy_pass=accuracy,
        memory_pass=True,
    )
    if dataset_sha:
        job.inputs.dataset_sha256 = dataset_sha
    else:
        job.inputs.generated.seed = 1
        job.inputs.generated.num_batches = 2
    job.inputs.batch_size = batch
    job.plan.warmup_iterations = 3
    job.plan.min_iterations = min_iterations
    job.plan.min_duration.FromMilliseconds(min_ms)
    job.plan.max_duration.FromNanoseconds(int(max_s * 1e9))
    if wall_s:
        job.limits.wall_time.FromNanoseconds(int(wall_s * 1e9))
    if memory_mb:
        job.limits.memory_bytes = memory_mb * 2**20
    return job


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def job_processes(agent: LocalAgent) -> list[psutil.Process]:
    """Live processes whose working directory is in `agent`'s jobs folder and that are not below the agent
    (the agent's own spare job process is): what a finished job left behind outside the agent's tree."""
    jobs = str(agent.workdir.resolve() / "jobs")
    try:
        own = {p.pid for p in psutil.Process(agent.process.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        own = set()
    left = []
    for proc in psutil.process_iter(["pid", "cwd", "status"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(jobs) and proc.pid not in own and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            left.append(proc)
    return left


def agent_descendants(agent: LocalAgent) -> list[psutil.Process]:
    """Live (non-zombie) processes below the agent; an idle agent has SPARE_TREE of them."""
    try:
        below = psutil.Process(agent.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    live = []
    for proc in below:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
        except psutil.NoSuchProcess:
            pass
    return live


def leftover_processes(agent: LocalAgent, timeout: float = 10.0) -> list[psutil.Process]:
    """Once `timeout` has passed with some still there: the processes of finished jobs that are still alive,
    both outside the agent's tree (job_processes) and below it beyond the idle agent's spare tree. Returns []
    as soon as an idle agent has none (call it when no job runs)."""
    deadline = time.monotonic() + timeout
    while True:
        outside = job_processes(agent)
        below = agent_descendants(agent)
        if not outside and len(below) <= SPARE_TREE:
            return []
        if time.monotonic() > deadline:
            return outside + (below if len(below) > SPARE_TREE else [])
        time.sleep(0.1)
