"""Builds and runs the agent's gRPC server: auth, TLS, bounds, health, optional reflection, graceful shutdown.

Health is SERVING while the agent can work and NOT_SERVING while its work directory cannot be written
(disk full, read-only, I/O errors; see agent/diskwatch.py), and for good once shutdown begins.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import agent
from agent.artifacts import ArtifactStore
from agent.bounds import DecodeGuard, Limit, LimitInterceptor
from agent.device import collect_device_info, load_or_create_device_id
from agent.diskwatch import DiskWatch
from agent.jobs import JobManager
from agent.jobspec import decode
from agent.runner import JobRunner, RunnerConfig
from agent.runtimes import REGISTRY
from agent.runtimes.base import unavailable
from agent.servicer import AgentServicer
from agent.settings import AgentSettings, parse_cpu_list
from agent.types import DeviceInfo, RuntimeInfo
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AgentService"].full_name
#: Methods anyone may call: liveness only.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)
#: What the agent sends: results carry raw samples (up to ~9 MB at the 1M-sample cap). What it receives is
#: bounded by the max_request_bytes setting instead (upload chunks are at most 1 MiB).
MAX_SEND_MESSAGE_BYTES = 64 * 2**20
PROBE_TIMEOUT_S = 60.0


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Every RPC but health needs `authorization: Bearer <token>`; compared in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if details.method.startswith(PUBLIC_PREFIXES):
            return continuation(details)
        got = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(str(got).encode(), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        message = "missing or wrong token: send 'authorization: Bearer <token>' (the agent's --token-file)"

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class RuntimeProbe:
    """Probes runtimes once, in a child process, in the background: start-up is not delayed by SDK imports."""

    def __init__(self) -> None:
        self._result: tuple[RuntimeInfo, ...] = ()
        self._done = threading.Event()
        threading.Thread(target=self._probe, name="edgebench-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            out = subprocess.run(
                [sys.executable, "-m", "agent.runtimes.probe"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=True,
                cwd=Path(agent.__file__).parent.parent,
            )
            self._result = tuple(decode(RuntimeInfo, item) for item in json.loads(out.stdout))
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            reason = f"runtime probe failed: {exc}"
            log.error(reason)
            self._result = tuple(unavailable(name, (), reason) for name in REGISTRY)
        self._done.set()

    def get(self) -> tuple[RuntimeInfo, ...]:
        self._done.wait(PROBE_TIMEOUT_S + 5)
        return self._result


@dataclass
class RunningAgent:
    server: grpc.Server
    port: int
    jobs: JobManager
    health: health.HealthServicer
    runner: JobRunner
    disk: DiskWatch

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.disk.close()
        self.jobs.shutdown()
        self.runner.close()
        self.server.stop(grace).wait()


def _set_health(servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        servicer.set(name, status)


def _limits(settings: AgentSettings) -> LimitInterceptor:
    return LimitInterceptor(
        streams=Limit(
            "streaming RPCs (RunBenchmark, UploadArtifact, reflection)",
            settings.max_streams_per_client,
            settings.max_streams_total,
            "--max-streams-per-client",
            "--max-streams-total",
        ),
        watchers=Limit(
            "health Watch streams",
            settings.max_health_watchers_per_client,
            settings.max_health_watchers,
            "--max-health-watchers-per-client",
            "--max-health-watchers",
        ),
    )


def build(settings: AgentSettings) -> RunningAgent:
    """Create, bind and start the server (port 0 picks a free port; see `RunningAgent.port`)."""
    workdir = settings.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    device_id = load_or_create_device_id(workdir)
    store = ArtifactStore(
        workdir / "artifacts",
        max_artifact_bytes=settings.max_artifact_bytes,
        max_total_bytes=settings.max_cache_bytes,
    )
    store.remove_stale_partials()
    runner = JobRunner(
        workdir / "jobs",
        RunnerConfig(
            device_id=device_id,
            default_wall_time_ns=int(settings.job_wall_time_s * 1e9),
            default_memory_bytes=settings.job_memory_bytes,
            cpu_affinity=parse_cpu_list(settings.cpu_affinity) if settings.cpu_affinity else (),
            prestart=settings.prestart_job_process,
            max_wall_time_ns=int(settings.max_job_wall_time_s * 1e9),
            max_memory_bytes=settings.max_job_memory_bytes,
            sandbox=settings.sandbox,
            cgroup_root=settings.cgroup_root,
            secret_paths=settings.secret_paths,
            fault_injection=settings.fault_injection,
            max_processes=settings.max_job_processes,
            max_event_line_bytes=settings.max_event_line_bytes,
        ),
    )
    health_servicer = health.HealthServicer()
    (workdir / "results").mkdir(exist_ok=True)
    disk = DiskWatch(
        (workdir / "results", workdir / "jobs", workdir / "artifacts"),
        lambda problem: _set_health(health_servicer, problem is None),
    )
    jobs = JobManager(
        workdir / "results",
        runner.run,
        max_kept=settings.max_kept_results,
        max_queued=settings.max_queued_jobs,
        on_disk_error=disk.note_failure,
    )
    probe = RuntimeProbe()

    def device_info() -> DeviceInfo:
        info = collect_device_info(workdir, probe.get(), agent.__version__)
        return dataclasses.replace(info, sandbox=runner.sandbox.controls(), sandbox_mode=runner.sandbox.mode)

    token = settings.read_token()
    # Authentication first: a call without the token never takes a stream slot.
    interceptors: list[grpc.ServerInterceptor] = [TokenInterceptor(token)] if token else []
    interceptors.append(_limits(settings))
    interceptors.append(DecodeGuard())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="edgebench-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = AgentServicer(store, jobs, device_info, max_job_bytes=settings.max_job_bytes)
    pb_grpc.add_AgentServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    address = settings.address()
    try:
        if settings.tls_cert and settings.tls_key:
            client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises on bind failure (older versions return 0)
        port = 0
    if port == 0:
        disk.close()
        jobs.shutdown()
        runner.close()
        raise OSError(
            f"could not bind {address}: the port is in use or the address is not one of this machine's; "
            "pick another --port (0 = any free port) or --host"
        )
    server.start()
    _set_health(health_servicer, disk.problem is None)
    return RunningAgent(server, port, jobs, health_servicer, runner, disk)
