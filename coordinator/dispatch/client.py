"""Client for one agent: device info, content-addressed uploads with resume, benchmark streams.

This is a transport module: it handles wire messages and nothing else. Uploads send only what the agent
lacks (FindMissingArtifacts), resume an interrupted upload from the agent's committed offset, and hash the
file once. An upload the agent rejects with DATA_LOSS (what it received does not hash to the digest; it
has discarded the bytes) is sent once more from offset 0, in case the resumed part was what was damaged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc
from protos.version import CURRENT

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 * 2**20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    #: Override the name the server certificate is checked against (e.g. when dialling an IP).
    tls_server_name: str | None = None


@dataclass(frozen=True)
class UploadReport:
    sha256: str
    size_bytes: int
    sent_bytes: int
    resumed_from: int
    already_present: bool


class AgentClient:
    def __init__(self, address: str, credentials: Credentials | None = None, timeout_s: float = 30.0) -> None:
        creds = credentials or Credentials()
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if creds.tls_ca or creds.tls_cert:
            channel_creds = grpc.ssl_channel_credentials(creds.tls_ca, creds.tls_key, creds.tls_cert)
            if creds.tls_server_name:
                options.append(("grpc.ssl_target_name_override", creds.tls_server_name))
            self._channel = grpc.secure_channel(address, channel_creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {creds.token}"),) if creds.token else ()
        self.address = address
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def device_info(self) -> pb.DeviceInfo:
        request = pb.GetDeviceInfoRequest(client_protocol=pb.ProtocolVersion(major=CURRENT.major, minor=CURRENT.minor))
        response: pb.GetDeviceInfoResponse = self._stub.GetDeviceInfo(
            request, metadata=self._metadata, timeout=self.timeout_s
        )
        return response.device

    def find_missing(self, digests: list[str]) -> list[str]:
        response = self._stub.FindMissingArtifacts(
            pb.FindMissingArtifactsRequest(sha256=digests), metadata=self._metadata, timeout=self.timeout_s
        )
        return list(response.missing_sha256)

    def upload_status(self, digest: str) -> pb.GetUploadStatusResponse:
        response: pb.GetUploadStatusResponse = self._stub.GetUploadStatus(
            pb.GetUploadStatusRequest(sha256=digest), metadata=self._metadata, timeout=self.timeout_s
        )
        return response

    def upload(
        self,
        path: Path,
        digest: str | None = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        stop_after_bytes: int | None = None,
        wait_for_others_s: float = 1800.0,
    ) -> UploadReport:
        """Upload `path` unless the agent has it; resume a partial upload. If another caller is uploading the
        same artifact (ABORTED), wait for it (up to `wait_for_others_s`) instead of sending it twice. A
        DATA_LOSS answer is retried once from offset 0; a second one is raised (the caller decides what the
        jobs become). `stop_after_bytes` (tests) breaks the stream after that many bytes, as a dropped
        connection would."""
        digest = digest or sha256_file(path)
        deadline = time.monotonic() + wait_for_others_s
        restart = False
        while True:
            try:
                return self._upload_once(path, digest, chunk_bytes, stop_after_bytes, restart)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DATA_LOSS and not restart:
                    restart = True  # every byte again: the committed part may be the damaged one
                    continue
                if exc.code() != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def _upload_once(
        self, path: Path, digest: str, chunk_bytes: int, stop_after_bytes: int | None, restart: bool = False
    ) -> UploadReport:
        size = path.stat().st_size
        if not self.find_missing([digest]):
            return UploadReport(digest, size, 0, 0, True)
        status = self.upload_status(digest)
        if status.complete:
            return UploadReport(digest, size, 0, 0, True)
        offset = status.committed_offset_bytes if 0 < status.committed_offset_bytes <= size and not restart else 0
        sent = 0

        def requests() -> Iterator[pb.UploadArtifactRequest]:
            nonlocal sent
            yield pb.UploadArtifactRequest(
                header=pb.ArtifactHeader(sha256=digest, size_bytes=size, offset_bytes=offset)
            )
            with path.open("rb") as f:
                f.seek(offset)
                while chunk := f.read(chunk_bytes):
                    if stop_after_bytes is not None and sent >= stop_after_bytes:
                        raise ConnectionAbortedError("upload interrupted on purpose")
                    sent += len(chunk)
                    yield pb.UploadArtifactRequest(chunk=chunk)

        # No deadline: a large artifact over a slow link may take long; the stream is bounded by the file.
        response: pb.UploadArtifactResponse = self._stub.UploadArtifact(requests(), metadata=self._metadata)
        return UploadReport(digest, size, sent, offset, response.already_present)

    def run(self, job: pb.BenchmarkJob, timeout_s: float | None = None) -> Iterator[pb.RunBenchmarkResponse]:
        """The job's events: accepted, progress..., result. Iterating after the result ends the stream."""
        stream: Iterator[pb.RunBenchmarkResponse] = self._stub.RunBenchmark(
            pb.RunBenchmarkRequest(job=job), metadata=self._metadata, timeout=timeout_s
        )
        return stream

    def run_to_result(self, job: pb.BenchmarkJob, timeout_s: float | None = None) -> pb.BenchmarkResult:
        for event in self.run(job, timeout_s):
            if event.WhichOneof("event") == "result":
                return event.result
        raise ConnectionError(f"stream for job {job.job_id} ended without a result")

    def cancel(self, job_id: str) -> pb.CancelBenchmarkResponse:
        response: pb.CancelBenchmarkResponse = self._stub.CancelBenchmark(
            pb.CancelBenchmarkRequest(job_id=job_id), metadata=self._metadata, timeout=self.timeout_s
        )
        return response

    def get_result(self, job_id: str) -> pb.GetBenchmarkResultResponse:
        response: pb.GetBenchmarkResultResponse = self._stub.GetBenchmarkResult(
            pb.GetBenchmarkResultRequest(job_id=job_id), metadata=self._metadata, timeout=self.timeout_s
        )
        return response
