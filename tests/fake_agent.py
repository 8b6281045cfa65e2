"""A scriptable fake agent: a real gRPC AgentService server on 127.0.0.1:0 inside the test process.

It speaks whatever a test tells it to: any protocol version, any device strings, any result (a callable
builds the `pb.BenchmarkResult` for each job), any stream of progress (hostile strings, floods), refusals,
broken streams, and uploads that fail their digest check. The coordinator treats agents as untrusted, so
these are the inputs its validation must survive.

    agent = FakeAgent(token="t", result=lambda job: good_result(job, message="hi"))
    with serve(agent) as address:
        ...  # register Device(name, address, token_file=...) and run
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc

ResultFn = Callable[[pb.BenchmarkJob], pb.BenchmarkResult]
ProgressFn = Callable[[pb.BenchmarkJob], Iterable[pb.JobProgress]]


def runtime(name: str, *formats: int, version: str = "1.0.0", available: bool = True) -> pb.RuntimeInfo:
    return pb.RuntimeInfo(
        name=name,
        available=available,
        version=version,
        execution_providers=["CPUExecutionProvider"],
        model_formats=list(formats) or [pb.MODEL_FORMAT_ONNX],  # type: ignore[arg-type]
    )


def device_info(
    *,
    protocol: tuple[int, int] = (1, 0),
    runtimes: list[pb.RuntimeInfo] | None = None,
    **fields: Any,
) -> pb.DeviceInfo:
    """A plausible DeviceInfo; `fields` override any DeviceInfo string/number field (hostname=..., ...)."""
    base: dict[str, Any] = {
        "agent_version": "0.1.0",
        "device_id": "fake-device-0001",
        "hostname": "fake-host",
        "os_name": "Linux",
        "os_release": "6.1.0",
        "architecture": "aarch64",
        "python_version": "3.11.2",
        "cpu_model": "Cortex-A76",
        "cpu_physical_cores": 4,
        "cpu_logical_cores": 4,
        "memory_total_bytes": 8 * 2**30,
        "board_model": "Fake Board Rev 1.0",
    }
    base.update(fields)
    info = pb.DeviceInfo(
        protocol=pb.ProtocolVersion(major=protocol[0], minor=protocol[1]),
        runtimes=runtimes if runtimes is not None else [runtime("onnxruntime")],
        **base,
    )
    info.collected_at.GetCurrentTime()
    return info


def good_result(job: pb.BenchmarkJob, *, samples: int = 50, **fields: Any) -> pb.BenchmarkResult:
    """A result that passes the coordinator's validation for `job`; `fields` override top-level fields."""
    latencies = [100_000 + 1_000 * (i % 7) for i in range(samples)]
    result = pb.BenchmarkResult(
        job_id=job.job_id,
        status=pb.BENCHMARK_STATUS_SUCCEEDED,
        timing=pb.TimingReport(
            load_ns=2_000_000,
            first_inference_ns=300_000,
            warmup_iterations=job.plan.warmup_iterations,
            warmup_ns=1_000_000,
            latencies_ns=latencies,
            steady_wall_ns=sum(latencies) + 10_000,
            stop_reason=pb.STOP_REASON_MINIMUMS_MET,
        ),
        memory=pb.MemoryReport(
            rss_before_load_bytes=50 * 2**20, rss_after_load_bytes=60 * 2**20, peak_rss_bytes=70 * 2**20
        ),
        provenance=pb.Provenance(
            device_id="fake-device-0001",
            agent_version="0.1.0",
            os="Linux 6.1.0",
            architecture="aarch64",
            runtime_name=job.runtime.name,
            runtime_version="1.0.0",
            execution_providers=["CPUExecutionProvider"],
            intra_op_threads=job.runtime.intra_op_threads,
            model_sha256=job.model.sha256,
            batch_size=job.inputs.batch_size,
        ),
    )
    for key, value in fields.items():
        if isinstance(value, (pb.TimingReport, pb.MemoryReport, pb.AccuracyReport, pb.Provenance)):
            getattr(result, key).CopyFrom(value)
        else:
            setattr(result, key, value)
    now = time.time_ns()
    result.started_at.FromNanoseconds(now - 10_000_000)
    result.finished_at.FromNanoseconds(now)
    return result


@dataclass
class FakeAgent(pb_grpc.AgentServiceServicer):
    """Behaviour is plain attributes, so a test may change it between runs (e.g. heal a broken agent)."""

    info: pb.DeviceInfo = field(default_factory=device_info)
    #: Builds the one result RunBenchmark streams after `accepted`.
    result: ResultFn = good_result
    #: The progress events streamed between `accepted` and the result (default: one MEASURING event).
    progress: ProgressFn | None = None
    #: The artifacts the agent holds; None: it holds everything (no upload is ever asked for). With a set,
    #: FindMissingArtifacts answers what is not in it, and an upload that starts at offset 0 and hashes to
    #: its declared sha256 is added to it; any other upload is answered DATA_LOSS and its bytes discarded.
    stored: set[str] | None = None
    #: The committed offset GetUploadStatus reports for an artifact it lacks (a partial upload from before,
    #: damaged: resuming from it ends in DATA_LOSS). Reset to 0 by a DATA_LOSS, as the real agent does.
    partial_bytes: int = 0
    #: Answers for the next uploads, one each (after reading the stream), before the rules above apply.
    upload_faults: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    #: (sha256, header offset, bytes received) of every upload, in order.
    uploads: list[tuple[str, int, int]] = field(default_factory=list)
    #: Abort RunBenchmark with this before accepting (the agent refuses the job).
    refuse: tuple[grpc.StatusCode, str] | None = None
    #: Abort RunBenchmark with this after accepting (the stream breaks mid-job).
    break_stream: tuple[grpc.StatusCode, str] | None = None
    #: End RunBenchmark normally after accepting, without a result.
    no_result: bool = False
    #: Required `authorization: Bearer <token>`; None accepts anything.
    token: str | None = None
    #: (rpc, job id or "") for every authorised call, in order.
    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _enter(self, rpc: str, context: grpc.ServicerContext, job_id: str = "") -> None:
        if self.token is not None:
            got = dict(context.invocation_metadata()).get("authorization", "")
            if got != f"Bearer {self.token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        with self._lock:
            self.calls.append((rpc, job_id))

    def rpcs(self, name: str) -> list[str]:
        with self._lock:
            return [job for rpc, job in self.calls if rpc == name]

    # ------------------------------------------------------------------ AgentService

    def GetDeviceInfo(self, request: pb.GetDeviceInfoRequest, context: grpc.ServicerContext) -> Any:
        self._enter("GetDeviceInfo", context)
        return pb.GetDeviceInfoResponse(device=self.info)

    def FindMissingArtifacts(self, request: pb.FindMissingArtifactsRequest, context: grpc.ServicerContext) -> Any:
        self._enter("FindMissingArtifacts", context)
        with self._lock:
            held = self.stored
            missing = [] if held is None else [d for d in request.sha256 if d not in held]
        return pb.FindMissingArtifactsResponse(missing_sha256=missing)

    def GetUploadStatus(self, request: pb.GetUploadStatusRequest, context: grpc.ServicerContext) -> Any:
        self._enter("GetUploadStatus", context)
        with self._lock:
            if self.stored is None or request.sha256 in self.stored:
                return pb.GetUploadStatusResponse(complete=True)
            return pb.GetUploadStatusResponse(committed_offset_bytes=self.partial_bytes)

    def UploadArtifact(
        self, request_iterator: Iterator[pb.UploadArtifactRequest], context: grpc.ServicerContext
    ) -> Any:
        self._enter("UploadArtifact", context)
        header = pb.ArtifactHeader()
        digest = hashlib.sha256()
        received = 0
        for message in request_iterator:
            if message.WhichOneof("payload") == "header":
                header.CopyFrom(message.header)
            else:
                digest.update(message.chunk)
                received += len(message.chunk)
        with self._lock:
            self.uploads.append((header.sha256, header.offset_bytes, received))
            fault = self.upload_faults.pop(0) if self.upload_faults else None
            if fault is None and self.stored is not None:
                whole = header.offset_bytes == 0 and received == header.size_bytes
                if whole and digest.hexdigest() == header.sha256:
                    self.stored.add(header.sha256)
                else:
                    fault = (grpc.StatusCode.DATA_LOSS, f"the bytes received do not hash to {header.sha256}")
            if fault is not None and fault[0] == grpc.StatusCode.DATA_LOSS:
                self.partial_bytes = 0  # nothing of a failed upload is kept
        if fault is not None:
            context.abort(*fault)
        return pb.UploadArtifactResponse(sha256=header.sha256, size_bytes=header.size_bytes, received_bytes=received)

    def RunBenchmark(self, request: pb.RunBenchmarkRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        job = request.job
        self._enter("RunBenchmark", context, job.job_id)
        if self.refuse is not None:
            context.abort(*self.refuse)
        yield pb.RunBenchmarkResponse(job_id=job.job_id, accepted=pb.JobAccepted(queue_position=0))
        if self.progress is None:
            yield pb.RunBenchmarkResponse(
                job_id=job.job_id, progress=pb.JobProgress(phase=pb.JOB_PHASE_MEASURING, iterations_done=1)
            )
        else:
            for progress in self.progress(job):
                if not context.is_active():
                    return  # the coordinator went away: stop flooding
                yield pb.RunBenchmarkResponse(job_id=job.job_id, progress=progress)
        if self.break_stream is not None:
            context.abort(*self.break_stream)
        if self.no_result:
            return
        yield pb.RunBenchmarkResponse(job_id=job.job_id, result=self.result(job))

    def CancelBenchmark(self, request: pb.CancelBenchmarkRequest, context: grpc.ServicerContext) -> Any:
        self._enter("CancelBenchmark", context, request.job_id)
        return pb.CancelBenchmarkResponse(state=pb.JOB_STATE_UNKNOWN, cancelled=False)

    def GetBenchmarkResult(self, request: pb.GetBenchmarkResultRequest, context: grpc.ServicerContext) -> Any:
        self._enter("GetBenchmarkResult", context, request.job_id)
        return pb.GetBenchmarkResultResponse(state=pb.JOB_STATE_UNKNOWN)


@contextmanager
def serve(agent: FakeAgent) -> Iterator[str]:
    """Serve `agent` on a free loopback port; yields "127.0.0.1:PORT" and stops the server on exit."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)],
    )
    pb_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
