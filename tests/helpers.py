"""Helpers for tests: job builders and polling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from protos.edgebench.agent.v1 import agent_pb2 as pb


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
