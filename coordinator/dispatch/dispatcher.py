"""Runs a stored run's unfinished jobs on the fleet: devices in parallel, one job at a time per device.

For each device: probe, re-check which cells it can run, upload only the artifacts it lacks, then run its
jobs in order, storing each result the moment it arrives (committed before the next job starts). A
broken stream is not a lost job: the dispatcher re-attaches by job id (the agent never runs an id twice
and keeps finished results) until `reconnect_s` has passed; then the job and the device's remaining
jobs are UNREACHABLE, which `run --resume` redoes. Results are validated before they are stored.

An upload the agent rejects as corrupt (DATA_LOSS: its sha256 of the bytes differs) is sent once more from
the first byte (AgentClient.upload); if that fails too, the device's jobs stay PENDING with the reason, so
`run --resume` retries them. Progress events are coalesced: an agent may stream progress as fast as it
likes, and at most PROGRESS_PER_S reach `on_event` per job (plus one per change of phase).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from coordinator.dispatch.client import AgentClient, sha256_file
from coordinator.dispatch.plan import cell_verdict
from coordinator.dispatch.plan import job_id as make_job_id
from coordinator.dispatch.wire import ResultRejected, build_job, job_state_name, phase_name, result_from_pb
from coordinator.fleet import DeviceConfigError, connect, describe_rpc_error, probe
from coordinator.store.sqlite import Store
from coordinator.types import Artifact, Device, DeviceProbe, JobRecord, JobStatus, ResultData, RunData, Variant
from protos.edgebench.agent.v1 import agent_pb2 as pb

#: Beyond the job's own wall-time limit: queueing on the agent, process start, result transfer.
STREAM_GRACE_S = 120.0
#: Progress events per second and job passed on to `on_event` while the phase stays the same.
PROGRESS_PER_S = 10
#: Errors that mean "the agent refused this job" (the job fails; the device is fine).
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}


def retry_pushback_s(exc: grpc.RpcError) -> float | None:
    """Seconds to wait when the agent said "busy, retry later" (RESOURCE_EXHAUSTED with gRPC's retry-pushback
    trailer), else None. Bounded: a hostile agent cannot park the coordinator."""
    if not hasattr(exc, "code") or exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-retry-pushback-ms":
            try:
                return min(10.0, max(0.1, int(value) / 1000))
            except (TypeError, ValueError):
                return 1.0
    return None


@dataclass(frozen=True)
class DispatchEvent:
    """What the live display and the logs see. `kind`: device | progress | result."""

    device: str
    kind: str
    job_id: str = ""
    variant: str = ""
    runtime: str = ""
    phase: str = ""
    iterations: int = 0
    queue_position: int = 0
    message: str = ""
    status: JobStatus | None = None
    dispatched_at_ns: int = 0
    stored_at_ns: int = 0
    agent_started_at_ns: int = 0
    agent_finished_at_ns: int = 0


OnEvent = Callable[[DispatchEvent], None]


class DeviceUnreachable(Exception):
    pass


class UploadCorrupted(Exception):
    """An artifact failed the agent's digest check on two uploads in a row; the message says what to do."""


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        on_event: OnEvent | None = None,
        reconnect_s: float = 15.0,
        busy_s: float = 600.0,
        device_concurrency: int = 0,
        connect_fn: Callable[[Device], AgentClient] = connect,
        probe_fn: Callable[[Device], DeviceProbe] = probe,
    ) -> None:
        self._store = store
        self._emit = on_event or (lambda _e: None)
        self._reconnect_s = reconnect_s
        #: How long a job waits while its agent answers "busy, retry later" (stream or queue limits).
        self._busy_s = busy_s
        #: How many devices run at once (0 = all). Agents that share a host must not measure concurrently.
        self._device_concurrency = device_concurrency
        self._connect = connect_fn
        self._probe = probe_fn

    def execute(self, run_id: str, devices: dict[str, Device], probes: dict[str, DeviceProbe] | None = None) -> RunData:
        """Run every job of `run_id` without a final status; return the run as stored afterwards. `probes`
        taken moments ago (when the run was planned) are reused; devices without one are probed first."""
        fresh = probes or {}
        run = self._store.load_run(run_id)
        by_device: dict[str, list[JobRecord]] = {}
        for job in run.jobs:
            if not job.status.final:
                by_device.setdefault(job.device, []).append(job)
        variants = {v.name: v for v in run.variants}
        workers = min(128, len(by_device), self._device_concurrency or len(by_device))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [
                pool.submit(self._device, run, devices.get(name), name, jobs, variants, fresh.get(name))
                for name, jobs in by_device.items()
            ]
            for f in futures:
                f.result()
        if all(status.final for status in self._store.job_statuses(run_id)):
            self._store.finish_run(run_id)
        return self._store.load_run(run_id)

    # ------------------------------------------------------------------ one device

    def _fail_all(self, jobs: list[JobRecord], status: JobStatus, message: str) -> None:
        for job in jobs:
            self._store.set_job_status(job.job_id, status, message)
            self._emit(
                DispatchEvent(
                    job.device, "result", job.job_id, job.variant, job.runtime, status=status, message=message
                )
            )

    def _device(
        self,
        run: RunData,
        device: Device | None,
        name: str,
        jobs: list[JobRecord],
        variants: dict[str, Variant],
        found: DeviceProbe | None = None,
    ) -> None:
        if device is None:
            self._fail_all(
                jobs,
                JobStatus.UNREACHABLE,
                f"device {name} is no longer registered (`edgebench fleet add` it again, then --resume)",
            )
            return
        if found is None:
            found = self._probe(device)
            self._store.record_probe(run.spec.run_id, found)
        self._emit(DispatchEvent(name, "device", message="online" if found.online else found.error))
        runnable = []
        artifacts: dict[str, Artifact] = {}
        for job in jobs:
            status, message = cell_verdict(found, variants[job.variant], job.runtime)
            rt = found.runtime(job.runtime)
            art = variants[job.variant].artifact_for(rt.formats) if rt else None
            if status is JobStatus.PENDING and art is not None:
                runnable.append(job)
                artifacts[job.job_id] = art
            else:
                self._fail_all([job], status, message)
        if not runnable:
            return
        try:
            client = self._connect(device)
        except DeviceConfigError as exc:
            self._fail_all(runnable, JobStatus.UNREACHABLE, str(exc))
            return
        with client:
            try:
                self._upload(client, name, list(artifacts.values()), run.spec.dataset_path, run.spec.dataset_sha256)
            except UploadCorrupted as exc:
                # Nothing ran: keep the jobs redoable rather than FAILED, which `--resume` would keep.
                self._fail_all(runnable, JobStatus.PENDING, f"{exc}; `edgebench run --resume {run.spec.run_id}`")
                return
            except grpc.RpcError as exc:
                status = JobStatus.FAILED if exc.code() in REFUSALS else JobStatus.UNREACHABLE
                self._fail_all(runnable, status, f"upload to {name} failed: {describe_rpc_error(exc)}")
                return
            for i, job in enumerate(runnable):
                try:
                    self._job(client, run, job, variants[job.variant], artifacts[job.job_id])
                except DeviceUnreachable as exc:
                    self._fail_all([job], JobStatus.UNREACHABLE, str(exc))
                    self._fail_all(
                        runnable[i + 1 :],
                        JobStatus.UNREACHABLE,
                        f"not run: device {name} became unreachable during an earlier job",
                    )
                    return

    def _upload(
        self,
        client: AgentClient,
        name: str,
        artifacts: list[Artifact],
        dataset_path: str,
        dataset_sha256: str,
    ) -> None:
        needed = {a.sha256: a.path for a in artifacts}
        needed.update({sha: path for a in artifacts for _name, path, sha in a.companions})
        if dataset_sha256:
            needed[dataset_sha256] = dataset_path
        missing = client.find_missing(list(needed))
        for sha in missing:
            path = Path(needed[sha])
            self._emit(DispatchEvent(name, "device", message=f"uploading {path.name}"))
            try:
                client.upload(path, sha)  # a first DATA_LOSS is retried from offset 0 inside
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DATA_LOSS:
                    raise
                cause = (
                    "the agent received other bytes than were sent (check the link and the agent's disk)"
                    if path.is_file() and sha256_file(path) == sha
                    else f"{path} changed since the run was planned (restore it, or start a new run)"
                )
                raise UploadCorrupted(
                    f"upload of {path.name} to {name} failed the agent's sha256 check twice "
                    f"({describe_rpc_error(exc)}): {cause}; its jobs were not run and stay pending"
                ) from None

    # ------------------------------------------------------------------ one job

    def _store_result(self, job: JobRecord, job_id: str, msg: pb.BenchmarkResult, dispatched: int) -> None:
        try:
            result = result_from_pb(msg, job_id)
        except ResultRejected as exc:
            result = ResultData(status=JobStatus.REJECTED, message=f"result rejected: {exc}")
        except Exception as exc:  # a conversion we did not foresee: still the agent's input, never our crash
            result = ResultData(status=JobStatus.REJECTED, message=f"result rejected: {type(exc).__name__}: {exc}")
        self._store.save_result(job_id, result)
        self._emit(
            DispatchEvent(
                job.device,
                "result",
                job_id,
                job.variant,
                job.runtime,
                status=result.status,
                message=result.message,
                dispatched_at_ns=dispatched,
                stored_at_ns=time.time_ns(),
                agent_started_at_ns=result.started_at_ns,
                agent_finished_at_ns=result.finished_at_ns,
            )
        )

    def _job(self, client: AgentClient, run: RunData, job: JobRecord, variant: Variant, artifact: Artifact) -> None:
        job_id = job.job_id
        if job.status is not JobStatus.PENDING or job.attempt > 1:
            job_id = self._recover(client, job)
            if not job_id:
                return
        self._store.set_job_status(job_id, JobStatus.RUNNING)
        request = build_job(job_id, variant, job.runtime, run.spec.settings, run.spec.dataset_sha256, artifact)
        dispatched = time.time_ns()
        deadline = busy_until = 0.0
        shown: tuple[str, int] = ("", -1)  # (phase, queue position) last passed on
        shown_at = 0.0
        while True:
            try:
                # Bounded: an agent that accepts a job and then goes silent must not hold this device forever.
                for event in client.run(request, timeout_s=run.spec.settings.wall_time_s + STREAM_GRACE_S):
                    kind = event.WhichOneof("event")
                    if kind == "result":
                        self._store_result(job, job_id, event.result, dispatched)
                        return
                    if kind == "progress":
                        phase = phase_name(event.progress)
                        now = time.monotonic()
                        key = (phase, event.progress.queue_position)
                        if key == shown and now - shown_at < 1.0 / PROGRESS_PER_S:
                            continue  # coalesced: only the latest progress matters, and a newer one comes
                        shown, shown_at = key, now
                        self._emit(
                            DispatchEvent(
                                job.device,
                                "progress",
                                job_id,
                                job.variant,
                                job.runtime,
                                phase=phase,
                                iterations=event.progress.iterations_done,
                                queue_position=event.progress.queue_position,
                                message=event.progress.message[:200],
                            )
                        )
                error = "the agent ended the stream without a result"
            except grpc.RpcError as exc:
                pushback = retry_pushback_s(exc)
                if pushback is not None:
                    # The agent is busy (its stream or queue limits), not refusing the job: wait and resend.
                    busy_until = busy_until or time.monotonic() + self._busy_s
                    if time.monotonic() > busy_until:
                        raise DeviceUnreachable(
                            f"agent stayed busy for {self._busy_s:g} s ({describe_rpc_error(exc)}); "
                            "--resume redoes the job"
                        ) from None
                    self._emit(
                        DispatchEvent(
                            job.device, "progress", job_id, job.variant, job.runtime, phase="waiting (agent busy)",
                            message=describe_rpc_error(exc)[:200],
                        )
                    )
                    time.sleep(pushback)
                    continue
                if exc.code() in REFUSALS:
                    refused = ResultData(
                        status=JobStatus.FAILED, message=f"agent refused the job: {describe_rpc_error(exc)}"
                    )
                    self._store.save_result(job_id, refused)
                    self._emit(
                        DispatchEvent(
                            job.device,
                            "result",
                            job_id,
                            job.variant,
                            job.runtime,
                            status=JobStatus.FAILED,
                            message=refused.message,
                        )
                    )
                    return
                error = describe_rpc_error(exc)
            # The stream broke: the job may still be running or finished on the agent. Re-attach by id.
            deadline = deadline or time.monotonic() + self._reconnect_s
            if time.monotonic() > deadline:
                raise DeviceUnreachable(f"agent became unreachable during the job ({error}); --resume redoes it")
            self._emit(
                DispatchEvent(
                    job.device, "progress", job_id, job.variant, job.runtime, phase="reconnecting", message=error[:200]
                )
            )
            time.sleep(min(2.0, self._reconnect_s / 5))

    def _recover(self, client: AgentClient, job: JobRecord) -> str:
        """Before re-sending a job that may have run: fetch its result if the agent has it (no rerun), or pick
        a fresh attempt id if the agent's copy was cancelled. Returns the id to send, or "" if stored."""
        try:
            known = client.get_result(job.job_id)
        except grpc.RpcError:
            return job.job_id  # sending it will tell whether the device is reachable
        state = job_state_name(known.state)
        if state == "finished" and known.result.status != pb.BENCHMARK_STATUS_CANCELLED:
            self._store_result(job, job.job_id, known.result, time.time_ns())
            return ""
        if state == "finished" or job.status is JobStatus.CANCELLED:
            attempt = job.attempt + 1
            new_id = make_job_id(job.run_id, job.device, job.variant, job.runtime, attempt)
            self._store.new_attempt(job.job_id, new_id, attempt)
            return new_id
        return job.job_id
