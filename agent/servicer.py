"""The AgentService implementation: thin glue between the wire and the store, queue and device info.

gRPC status codes are used only for "the request breaks the contract" (INVALID_ARGUMENT, FAILED_PRECONDITION,
ALREADY_EXISTS, RESOURCE_EXHAUSTED, ABORTED); a benchmark that fails is a result on the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc

from agent import bounds, wire
from agent.artifacts import (
    ArtifactError,
    ArtifactMissing,
    ArtifactStore,
    ArtifactTooLarge,
    DigestMismatch,
    InvalidDigest,
    StoreFull,
    UploadConflict,
    UploadInProgress,
)
from agent.bounds import job_shape_problems, job_size_problem
from agent.jobs import JobConflict, JobManager, QueueFull, iterate
from agent.runner import JobFiles
from agent.types import BenchmarkJob, DeviceInfo, JobState
from agent.validate import validate_job
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_ARTIFACT_CODES: dict[type[ArtifactError], grpc.StatusCode] = {
    InvalidDigest: grpc.StatusCode.INVALID_ARGUMENT,
    ArtifactMissing: grpc.StatusCode.FAILED_PRECONDITION,
    ArtifactTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UploadConflict: grpc.StatusCode.FAILED_PRECONDITION,
    UploadInProgress: grpc.StatusCode.ABORTED,
    DigestMismatch: grpc.StatusCode.DATA_LOSS,
}


def _fail(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)  # raises
    raise AssertionError("unreachable: ServicerContext.abort raises")


def _abort(context: grpc.ServicerContext, exc: ArtifactError) -> NoReturn:
    _fail(context, _ARTIFACT_CODES.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT), str(exc))


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(
        self,
        store: ArtifactStore,
        jobs: JobManager,
        device_info: Callable[[], DeviceInfo],
        *,
        max_job_bytes: int = 64 * 2**10,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._device_info = device_info
        self._max_job_bytes = max_job_bytes

    def GetDeviceInfo(
        self, request: pb.GetDeviceInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetDeviceInfoResponse:
        return pb.GetDeviceInfoResponse(device=wire.device_info_to_pb(self._device_info()))

    def FindMissingArtifacts(
        self, request: pb.FindMissingArtifactsRequest, context: grpc.ServicerContext
    ) -> pb.FindMissingArtifactsResponse:
        if len(request.sha256) > 10_000:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "at most 10,000 digests per call")
        try:
            return pb.FindMissingArtifactsResponse(missing_sha256=self._store.missing(request.sha256))
        except ArtifactError as exc:
            _abort(context, exc)

    def GetUploadStatus(
        self, request: pb.GetUploadStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetUploadStatusResponse:
        try:
            if self._store.has(request.sha256):
                return pb.GetUploadStatusResponse(complete=True)
            return pb.GetUploadStatusResponse(committed_offset_bytes=self._store.committed_offset(request.sha256))
        except ArtifactError as exc:
            _abort(context, exc)

    def UploadArtifact(
        self, request_iterator: Iterator[pb.UploadArtifactRequest], context: grpc.ServicerContext
    ) -> pb.UploadArtifactResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "the first UploadArtifact message must be the header")
        header = first.header
        try:
            upload = self._store.begin_upload(header.sha256, header.size_bytes, header.offset_bytes)
        except ArtifactError as exc:
            _abort(context, exc)
        if upload is None:
            return pb.UploadArtifactResponse(sha256=header.sha256, size_bytes=header.size_bytes, already_present=True)
        try:
            for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "only chunks may follow the header")
                upload.write(message.chunk)
            upload.commit()
        except ArtifactError as exc:
            _abort(context, exc)
        finally:
            upload.close()  # keeps a resumable part file if the stream broke
        return pb.UploadArtifactResponse(
            sha256=header.sha256, size_bytes=header.size_bytes, received_bytes=upload.received
        )

    def RunBenchmark(
        self, request: pb.RunBenchmarkRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunBenchmarkResponse]:
        too_big = job_size_problem(request.job, self._max_job_bytes)
        if too_big:
            _fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, too_big)
        shape = job_shape_problems(request.job)
        if shape:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed job: " + "; ".join(shape))
        try:
            job = wire.job_from_pb(request.job)
        except wire.WireError as exc:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed job: {exc}")
        problems = validate_job(job)
        if problems:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed job: " + "; ".join(problems))
        try:
            files, digests = self._resolve(job)
        except ArtifactError as exc:
            _abort(context, exc)
        self._store.pin(digests)
        try:
            sub = self._jobs.submit(job, files, release=lambda: self._store.unpin(digests))
        except JobConflict as exc:
            _fail(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except QueueFull as exc:
            bounds.busy(context, str(exc))
        except RuntimeError as exc:
            _fail(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        # A client that goes away does not cancel the job: it can re-attach or fetch the result later. Its
        # stream ends at once (the RPC's end wakes the subscription), which frees this worker thread.
        if not context.add_callback(sub.wake):
            sub.wake()
        for event in iterate(sub, context.is_active):
            yield wire.event_to_pb(event)

    def _resolve(self, job: BenchmarkJob) -> tuple[JobFiles, list[str]]:
        digests = [job.model.sha256, *(c.sha256 for c in job.model.companions)]
        if job.inputs.dataset_sha256:
            digests.append(job.inputs.dataset_sha256)
        missing = self._store.missing(digests)
        if missing:
            raise ArtifactMissing(
                f"the agent does not have artifact(s) {', '.join(missing)}; upload them first "
                "(FindMissingArtifacts, then UploadArtifact)"
            )
        files = JobFiles(
            model=self._store.path_for_use(job.model.sha256),
            dataset=self._store.path_for_use(job.inputs.dataset_sha256) if job.inputs.dataset_sha256 else None,
            companions=tuple((c.name, self._store.path_for_use(c.sha256)) for c in job.model.companions),
            # Hashing is left to the job thread, just before the job starts: a job running now is not disturbed.
            verify=self._store.verify,
            links_removed=self._store.links_removed,
        )
        return files, digests

    def CancelBenchmark(
        self, request: pb.CancelBenchmarkRequest, context: grpc.ServicerContext
    ) -> pb.CancelBenchmarkResponse:
        state, cancelled = self._jobs.cancel(request.job_id)
        return pb.CancelBenchmarkResponse(state=wire.job_state_to_pb(state), cancelled=cancelled)  # type: ignore[arg-type]

    def GetBenchmarkResult(
        self, request: pb.GetBenchmarkResultRequest, context: grpc.ServicerContext
    ) -> pb.GetBenchmarkResultResponse:
        state, result = self._jobs.get(request.job_id)
        response = pb.GetBenchmarkResultResponse(state=wire.job_state_to_pb(state))  # type: ignore[arg-type]
        if state == JobState.FINISHED and result is not None:
            response.result.CopyFrom(wire.result_to_pb(result))
        return response
