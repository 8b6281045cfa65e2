"""Runs one plan of hostile jobs (strategies.hostile_plans) against the agent, asserting each outcome.

Each job is a well-formed null-runtime job that acts hostile in its process (agent.runtimes.faults) or
crashes, hangs or hogs memory, under random limits; its client waits, drops the stream, cancels, or
submits it twice at once (or another job under its id). Every job must end in a result, the one the agent
keeps (submitting it again re-attaches to it), and a job that cannot succeed is never reported SUCCEEDED.
"""

from __future__ import annotations

import threading
import time

import grpc

from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.fuzz.driver import CALL_TIMEOUT_S, Driver, code_of, details_of
from tests.fuzz.strategies import HostileJob
from tests.helpers import make_job

#: The fuzz agent's memory ceiling (--max-job-memory-mb): also the limit of a job that sets none.
MEMORY_CEILING_MB = 256


def doomed(hj: HostileJob) -> bool:
    """Whether the job cannot succeed: its behaviour must be stopped (or it asks for more than its limits)."""
    options = dict(hj.options)
    hostile = options.get("hostile", "")
    wall_s = hj.wall_ms / 1000
    memory = min(hj.memory_mb or MEMORY_CEILING_MB, MEMORY_CEILING_MB)
    return (
        hostile.split(":")[0] in {"close_pipe", "nested_event", "flood", "signal"}
        or hostile == "fork:300"
        or options.get("crash") in {"load", "run"}
        or float(options.get("hang_s", "0")) >= wall_s
        or float(options.get("load_ns", "0")) / 1e9 >= wall_s
        or float(options.get("allocate_mb", "0")) >= memory
    )


class HostileRun:
    """One plan of hostile jobs: each submitted (together: all at once, so they queue) and followed by its
    client's action; every one must end in a result, the agent's stored one."""

    def __init__(self, driver: Driver, jobs: list[HostileJob], together: bool) -> None:
        self.d = driver
        self.plan = [(hj, self._job(hj)) for hj in jobs]
        self.together = together

    def _job(self, hj: HostileJob) -> pb.BenchmarkJob:
        return make_job(self.d.null_sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", options=dict(hj.options),
                        min_iterations=5, min_ms=10, max_s=1, wall_s=hj.wall_ms / 1000, memory_mb=hj.memory_mb,
                        job_id=self.d.fresh_id("hostile"))

    def run(self) -> None:
        self.d.ensure(self.d.null_path)
        if not self.together:
            for hj, job in self.plan:
                self._act(hj, job)
            return
        errors: list[BaseException] = []

        def one(hj: HostileJob, job: pb.BenchmarkJob) -> None:
            try:
                self._act(hj, job)
            except BaseException as exc:  # re-raised below: an assertion in a thread would be lost
                errors.append(exc)

        threads = [threading.Thread(target=one, args=pair) for pair in self.plan]
        for t in threads:
            t.start()
            time.sleep(0.05)  # in this order
        for t in threads:
            t.join(3 * 60)
        if errors:
            raise errors[0]
        assert not any(t.is_alive() for t in threads), "a hostile job's client never returned"

    def _act(self, hj: HostileJob, job: pb.BenchmarkJob) -> None:
        if hj.action == "drop":
            result = self._drop(job, hj.delay_ms / 1000)
        elif hj.action == "cancel":
            result = self._cancel(job, hj.delay_ms / 1000)
        elif hj.action in ("twin", "clash"):
            result = self._twins(job, hj.action == "clash")
        else:
            result = self.d.run_job(job, "hostile")
        assert isinstance(result, pb.BenchmarkResult), f"a well-formed job was refused: {result}"
        if doomed(hj) and result.status != pb.BENCHMARK_STATUS_CANCELLED:
            assert result.status != pb.BENCHMARK_STATUS_SUCCEEDED, f"hostile job {dict(hj.options)} SUCCEEDED"

    def _drop(self, job: pb.BenchmarkJob, delay: float) -> pb.BenchmarkResult | grpc.StatusCode:
        """Accepted, then the client goes away; the job runs on, its result is kept, and submitting the same
        job again re-attaches to that result."""
        call = self.d.stub.RunBenchmark(pb.RunBenchmarkRequest(job=job), metadata=self.d.md, timeout=CALL_TIMEOUT_S)
        timer: threading.Timer | None = None
        try:
            for event in call:
                if event.WhichOneof("event") == "accepted":
                    assert not event.accepted.reattached, job.job_id
                    timer = threading.Timer(delay, call.cancel)
                    timer.start()
                elif event.WhichOneof("event") == "result":
                    self.d.check_result(job, event.result)
        except grpc.RpcError as exc:
            assert code_of(exc) == grpc.StatusCode.CANCELLED, (code_of(exc), details_of(exc))
        finally:
            if timer is not None:
                timer.cancel()
        self.d.count("hostile", "dropped")
        self.d.check_result(job, self.d.poll_result(job.job_id))
        return self.d.run_job(job, "hostile")

    def _cancel(self, job: pb.BenchmarkJob, delay: float) -> pb.BenchmarkResult | grpc.StatusCode:
        """Cancelled once the agent knows it: a queued job ends CANCELLED at once, a running one is stopped
        (or finishes first)."""
        box: dict[str, object] = {}

        def read() -> None:
            try:
                box["result"] = self.d.run_job(job, "hostile")
            except BaseException as exc:
                box["error"] = exc

        reader = threading.Thread(target=read)
        reader.start()
        request = pb.GetBenchmarkResultRequest(job_id=job.job_id)
        deadline = time.monotonic() + 30
        while "result" not in box and "error" not in box:
            if self.d.stub.GetBenchmarkResult(request, metadata=self.d.md, timeout=10).state != pb.JOB_STATE_UNKNOWN:
                break
            assert time.monotonic() < deadline, f"job {job.job_id!r} not known to the agent after 30 s"
            time.sleep(0.02)
        time.sleep(delay)
        reply = self.d.stub.CancelBenchmark(pb.CancelBenchmarkRequest(job_id=job.job_id), metadata=self.d.md,
                                            timeout=10)
        reader.join(3 * 60)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        result = box.get("result")
        assert isinstance(result, pb.BenchmarkResult), result
        if reply.cancelled and reply.state == pb.JOB_STATE_FINISHED:  # it was still queued
            assert result.status == pb.BENCHMARK_STATUS_CANCELLED, result
        return self.d.run_job(job, "hostile")  # submitted again: the same result, re-attached


    def _twins(self, job: pb.BenchmarkJob, clash: bool) -> pb.BenchmarkResult | grpc.StatusCode:
        """Two clients submit under one id at the same moment. The same job runs once: one submission is
        accepted, the other re-attaches, both get the same result. Another job under that id (`clash`): one
        of the two runs, the other is ALREADY_EXISTS."""
        other = pb.BenchmarkJob()
        other.CopyFrom(job)
        if clash:
            other.runtime.options["sleep_ns"] = "1"
        barrier = threading.Barrier(2)
        out: list[object] = [None, None]

        def submit(k: int, sent: pb.BenchmarkJob) -> None:
            try:
                barrier.wait(10)
                out[k] = list(self.d.stub.RunBenchmark(pb.RunBenchmarkRequest(job=sent), metadata=self.d.md,
                                                       timeout=CALL_TIMEOUT_S))
            except grpc.RpcError as exc:
                out[k] = code_of(exc)
            except BaseException as exc:  # re-raised below
                out[k] = exc

        threads = [threading.Thread(target=submit, args=pair) for pair in enumerate((job, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * 60)
        for item in out:
            if isinstance(item, BaseException):
                raise item
        streams = [item for item in out if isinstance(item, list)]
        refused = [item for item in out if not isinstance(item, list)]
        self.d.count("hostile", "clash" if clash else "twin")
        if clash:
            assert len(streams) == 1 and refused == [grpc.StatusCode.ALREADY_EXISTS], out
        else:
            assert len(streams) == 2, out
            assert sorted(s[0].accepted.reattached for s in streams) == [False, True], out
        results = [s[-1].result for s in streams]
        assert all(s[-1].WhichOneof("event") == "result" for s in streams), out
        assert len({r.SerializeToString(deterministic=True) for r in results}) == 1, results
        winner = None
        for sent, item in zip((job, other), out, strict=True):
            if isinstance(item, list):
                self.d.check_result(sent, item[-1].result)
                winner = sent
        assert winner is not None
        return self.d.run_job(winner, "hostile")  # submitted again: the same result, re-attached
