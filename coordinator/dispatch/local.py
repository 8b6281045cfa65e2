"""Start edgebench agents as local child processes on loopback (demo, tests, benchmarks).

Each agent is a real `edgebench-agent serve` process on loopback (127.0.0.1 unless told ::1) with a free
port, its own work directory and a fresh token; `start` returns once the agent prints its address
(IPv6 addresses in brackets, as gRPC dials them: "[::1]:50551").
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.dispatch.client import AgentClient, Credentials

READY_PREFIX = "edgebench-agent listening on "


@dataclass
class LocalAgent:
    process: subprocess.Popen[str]
    address: str
    token: str
    workdir: Path
    stderr_path: Path
    tls_ca: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def client(self, **kwargs: object) -> AgentClient:
        return AgentClient(self.address, Credentials(token=self.token, tls_ca=self.tls_ca), **kwargs)  # type: ignore[arg-type]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_agent(
    workdir: Path,
    *,
    extra_args: list[str] | None = None,
    token: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    python: str = sys.executable,
    host: str = "127.0.0.1",
) -> LocalAgent:
    """Start one agent on `host`:0 with a token file in `workdir`; raise RuntimeError if it fails to start."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(32)
    token_file = workdir / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    stderr_path = workdir / "agent.stderr.log"
    cmd = [
        python,
        "-m",
        "agent.cli",
        "serve",
        "--host",
        host,
        "--port",
        "0",
        "--workdir",
        str(workdir),
        "--token-file",
        str(token_file),
        *(extra_args or []),
    ]
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(READY_PREFIX) or not line:
            break
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"agent did not start: {stderr_path.read_text()[-2000:]}")
    address = line[len(READY_PREFIX) :].split()[0]
    return LocalAgent(proc, address, token, workdir, stderr_path)
