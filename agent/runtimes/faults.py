"""Hostile job behaviours, for proving the sandbox: what a model that runs code would do in a job process.

The null runtime runs one of these at load when a job asks for option `hostile=<name>[:<arg>]` and the
agent was started with `--fault-injection` (off by default; the tests' agents turn it on). Each behaviour
is a fixed piece of code, not something a job can extend; the agent must contain all of them:

* `close_pipe`: close every inherited descriptor (the event pipe included), then keep running
  (`close_pipe:MB` also allocates MB) — the agent must still time out, memory-check and kill it;
* `nested_event`: write a 200,000-deep JSON line to the event pipe, then hang;
* `flood`: write progress lines as fast as it can for `arg` seconds, then a line longer than any bound;
* `escape:MB`: double-fork a `setsid` grandchild that allocates MB and sleeps; the job itself succeeds;
* `fork:N`: start N sleeping processes;
* `signal`: die from a real-time signal (SIGRTMIN+3);
* `probe`: try what a job must not be able to do, and report each outcome as a runtime detail
  (`probe.<what>` = `allowed ...` or `denied ...`): read the files named in the model's `probe_read`
  list, write beside them and through the model file's hard link, connect to the `probe_connect`
  addresses, signal the `probe_kill` pids, and list the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

from agent.runtimes.base import RuntimeUnsupported

#: Set by the job process (agent.jobmain) from the agent's --fault-injection setting.
ENABLED = False
#: What `probe` found, read by the null backend into its runtime details.
FINDINGS: dict[str, str] = {}


def _allocate(mb: int) -> bytearray:
    return bytearray(os.urandom(1024)) * (mb * 1024)  # touched, so it counts in RSS


def _hang() -> None:
    while True:
        time.sleep(1)


def _event_fd() -> int:
    """The event pipe's descriptor (the job process is started with it as `--event-fd N`)."""
    args = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    return int(args[args.index(b"--event-fd") + 1])


def act(behaviour: str, model_path: Path) -> None:
    if not ENABLED:
        raise RuntimeUnsupported(
            "option 'hostile' is a fault-injection test of the sandbox; this agent was not started with "
            "--fault-injection"
        )
    name, _, arg = behaviour.partition(":")
    if name == "close_pipe":
        os.closerange(3, 1024)
        ballast = _allocate(int(arg)) if arg else None
        del ballast
        _hang()
    elif name == "nested_event":
        os.write(_event_fd(), b"[" * 200_000 + b"]" * 200_000 + b"\n")
        _hang()
    elif name == "flood":
        _flood(float(arg or 2))
    elif name == "escape":
        _escape(int(arg or 100))
    elif name == "fork":
        for _ in range(int(arg or 10)):
            if os.fork() == 0:
                _hang()
    elif name == "signal":
        os.kill(os.getpid(), signal.SIGRTMIN + 3)
        time.sleep(5)
    elif name == "probe":
        _probe(json.loads(model_path.read_text()), model_path)
    else:
        raise RuntimeUnsupported(f"unknown hostile behaviour {name!r}")


def _flood(seconds: float) -> None:
    fd = _event_fd()
    line = b'{"kind":"progress","phase":"loading","iterations":1,"message":"' + b"x" * 200 + b'"}\n'
    burst = line * 500
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.write(fd, burst)
    chunk = b"y" * (1 << 20)
    for _ in range(80):  # 80 MiB without a newline: over any line bound
        os.write(fd, chunk)
    os.write(fd, b"\n")


def _escape(mb: int) -> None:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            ballast = _allocate(mb)
            while ballast:
                time.sleep(1)
        os._exit(0)
    os.wait()
    time.sleep(1.5)  # let the grandchild allocate before the job carries on


def _try(what: str, action: object) -> None:
    try:
        result = action() if callable(action) else action
        FINDINGS[f"probe.{what}"] = f"allowed {str(result)[:80]}"
    except Exception as exc:
        FINDINGS[f"probe.{what}"] = f"denied {type(exc).__name__}: {str(exc)[:80]}"


def _probe(spec: dict[str, object], model_path: Path) -> None:
    for path in spec.get("probe_read", []) or []:  # type: ignore[attr-defined]
        _try(f"read:{path}", lambda p=path: len(Path(str(p)).read_bytes()) or "empty")
        _try(f"write-beside:{path}", lambda p=path: Path(str(p)).with_name("planted-by-job").write_text("x"))
    _try("write-model", lambda: _write_through(model_path))
    for address in spec.get("probe_connect", []) or []:  # type: ignore[attr-defined]
        host, _, port = str(address).rpartition(":")
        _try(f"connect:{address}", lambda h=host, p=port: socket.create_connection((h.strip("[]"), int(p)), 1).close())
    for pid in spec.get("probe_kill", []) or []:  # type: ignore[attr-defined]
        _try(f"kill:{pid}", lambda p=pid: os.kill(int(p), 0))
    _try("write-tmp", lambda: Path("/tmp/planted-by-job").write_text("x"))
    _try("write-home", lambda: (Path.home() / "planted-by-job").write_text("x"))
    FINDINGS["probe.environment"] = ",".join(sorted(os.environ))
    FINDINGS["probe.pid"] = str(os.getpid())
    from agent.runtimes.tensorrt.memory import host_pid

    FINDINGS["probe.host_pid"] = str(host_pid())


def _write_through(model: Path) -> str:
    with contextlib.suppress(OSError):
        model.chmod(0o644)
    with model.open("r+b") as f:
        f.write(b"X")
    return "model file changed"
