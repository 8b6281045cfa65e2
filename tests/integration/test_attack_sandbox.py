"""Hostile job processes against a real agent on 127.0.0.1 (F3, F5, F12, F15, F19 and the job sandbox).

Each test makes a real job process act as a model that runs code would (agent.runtimes.faults, enabled
with --fault-injection on these agents only) and checks what the user relies on: the job ends as a
result that says what happened, within its limits; no process of it survives; the agent keeps serving
(health included) and the next job runs; and, for the sandbox, that the job could not read the agent's
secrets, write outside its folder, reach the network or signal the agent.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.watch import MAX_LINE_BYTES
from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.helpers import job_processes, make_job, wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the job sandbox is Linux-only")


@pytest.fixture(scope="module")
def hostile(agent_factory: Callable[..., LocalAgent], tmp_path_factory: pytest.TempPathFactory) -> LocalAgent:
    """An agent that lets jobs act hostile, with a config file outside its work directory (a secret too)."""
    outside = tmp_path_factory.mktemp("agent-config")
    config = outside / "agent.toml"
    config.write_text("max_kept_results = 500\n")
    agent = agent_factory(
        "--fault-injection", "--config", str(config), env={"EDGEBENCH_TEST_SECRET": "leaked-if-you-see-this"}
    )
    agent.extra["config"] = str(config)
    return agent


@pytest.fixture(scope="module")
def null_sha(hostile: LocalAgent, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _upload_null(hostile, tmp_path_factory.mktemp("null"), {})


def _upload_null(agent: LocalAgent, folder: Path, extra: dict[str, object]) -> str:
    model = folder / f"null-{len(extra)}-{time.monotonic_ns()}.json"
    spec = {"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10, **extra}
    model.write_text(json.dumps(spec))
    with agent.client() as client:
        return client.upload(model).sha256


def _job(sha: str, behaviour: str = "", **kwargs: object) -> pb.BenchmarkJob:
    options = {"hostile": behaviour} if behaviour else {}
    options.update(kwargs.pop("options", {}))  # type: ignore[arg-type]
    return make_job(sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", options=options, **kwargs)  # type: ignore[arg-type]


def _run(agent: LocalAgent, job: pb.BenchmarkJob, timeout_s: float = 120) -> pb.BenchmarkResult:
    with agent.client() as client:
        return client.run_to_result(job, timeout_s=timeout_s)


def assert_clean_and_serving(agent: LocalAgent, sha: str) -> None:
    """No process of an earlier job is left anywhere, health answers SERVING, and a normal job succeeds."""
    wait_for(lambda: not job_processes(agent), timeout=10)
    children = [p for p in psutil.Process(agent.process.pid).children(recursive=True) if p.status() != "zombie"]
    assert len(children) <= 3, [p.cmdline() for p in children]  # the spare's keeper, PID 1 and job
    with grpc.insecure_channel(agent.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    result = _run(agent, _job(sha, min_iterations=5, min_ms=10))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message


def _controls(result: pb.BenchmarkResult) -> dict[str, pb.SandboxControl]:
    return {c.name: c for c in result.provenance.sandbox}


# ------------------------------------------------------------------------------------------------ F3


def test_job_that_closes_its_pipe_is_still_timed_out(hostile: LocalAgent, null_sha: str) -> None:
    """F3: EOF on the event pipe no longer ends the watch: the job is killed at its wall-time limit."""
    started = time.monotonic()
    result = _run(hostile, _job(null_sha, "close_pipe", wall_s=3))
    assert result.status == pb.BENCHMARK_STATUS_TIMEOUT, result.message
    assert "wall-time limit of 3 s" in result.message
    assert time.monotonic() - started < 20
    assert_clean_and_serving(hostile, null_sha)


def test_job_that_closes_its_pipe_is_still_memory_checked(hostile: LocalAgent, null_sha: str) -> None:
    """F3: after EOF, the memory limit still holds: 400 MiB under a 200 MiB limit is OUT_OF_MEMORY."""
    result = _run(hostile, _job(null_sha, "close_pipe:400", memory_mb=200, wall_s=60))
    assert result.status == pb.BENCHMARK_STATUS_OUT_OF_MEMORY, result.message
    assert "over its memory limit of 200 MiB" in result.message
    assert_clean_and_serving(hostile, null_sha)


def test_deeply_nested_event_line_does_not_abandon_the_job(hostile: LocalAgent, null_sha: str) -> None:
    """F3: a 200,000-deep JSON line is one garbled line, not an agent error; the hanging job is timed out."""
    result = _run(hostile, _job(null_sha, "nested_event", wall_s=3))
    assert result.status == pb.BENCHMARK_STATUS_TIMEOUT, result.message
    assert "agent error" not in result.message
    assert_clean_and_serving(hostile, null_sha)


def test_agent_shutdown_kills_a_job_that_closed_its_pipe(agent_factory: Callable[..., LocalAgent]) -> None:
    """F3: a job that closed its pipe and keeps running does not survive the agent's shutdown."""
    agent = agent_factory("--fault-injection")
    sha = _upload_null(agent, agent.workdir, {})
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", _safe_run(agent, _job(sha, "close_pipe"))))
    thread.start()
    wait_for(lambda: len(job_processes(agent)) + len(psutil.Process(agent.process.pid).children(True)) > 3)
    time.sleep(1.0)
    assert agent.stop(timeout=20) == 0
    thread.join(30)
    wait_for(lambda: not job_processes(agent), timeout=10)


def _safe_run(agent: LocalAgent, job: pb.BenchmarkJob) -> object:
    try:
        return _run(agent, job, timeout_s=60)
    except grpc.RpcError as exc:
        return exc


# ------------------------------------------------------------------------------------------------ F12


def test_event_flood_and_endless_line_are_bounded(hostile: LocalAgent, null_sha: str) -> None:
    """F12: a job that floods progress lines, then writes 80 MiB without a newline: the agent's memory stays
    bounded (the line is dropped as it streams in, never buffered), health answers during the flood, and
    the job fails with a message naming the bound."""
    agent_proc = psutil.Process(hostile.process.pid)
    before = agent_proc.memory_info().rss
    box: dict[str, pb.BenchmarkResult] = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", _run(hostile, _job(null_sha, "flood:2", wall_s=60))))
    thread.start()
    peak = before
    with grpc.insecure_channel(hostile.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while thread.is_alive():
            t0 = time.monotonic()
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - t0 < 2
            peak = max(peak, agent_proc.memory_info().rss)
            time.sleep(0.1)
    result = box["r"]
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert "event line longer than" in result.message
    # The bound: one line of MAX_LINE_BYTES held while it streams in, plus gRPC and Python's own churn.
    assert peak - before < MAX_LINE_BYTES + 16 * 2**20, f"agent RSS grew by {(peak - before) / 2**20:.0f} MiB"
    assert_clean_and_serving(hostile, null_sha)


# ------------------------------------------------------------------------------------------------ F5


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_double_forked_grandchild_counts_and_dies(
    agent_factory: Callable[..., LocalAgent], sandbox: str
) -> None:
    """F5: a `setsid` grandchild that double-forked out of the job's process group holds 500 MiB under a
    250 MiB limit: it is counted (OUT_OF_MEMORY, not SUCCEEDED) and killed. With the sandbox on, a PID
    namespace and cgroup contain it; with --sandbox off, the agent's subreaper still finds it."""
    agent = agent_factory("--fault-injection", "--sandbox", sandbox)
    sha = _upload_null(agent, agent.workdir, {})
    result = _run(agent, _job(sha, "escape:500", memory_mb=250, wall_s=60, min_ms=3000, max_s=10))
    assert result.status == pb.BENCHMARK_STATUS_OUT_OF_MEMORY, result.message
    assert_clean_and_serving(agent, sha)
    # Without a limit it lingers past the job's end: killed with the job all the same.
    result = _run(agent, _job(sha, "escape:20", min_iterations=5, min_ms=10))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    assert_clean_and_serving(agent, sha)


def test_fork_bomb_is_stopped(hostile: LocalAgent, null_sha: str) -> None:
    """A job that starts 400 processes is killed for it (the bound is 256); none of them is left."""
    result = _run(hostile, _job(null_sha, "fork:400", wall_s=60))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert "more than 256 processes" in result.message and "--max-job-processes" in result.message
    assert_clean_and_serving(hostile, null_sha)


def test_job_bounds_are_settings(agent_factory: Callable[..., LocalAgent]) -> None:
    """The process and event-line bounds have flags: 30 processes over --max-job-processes 20, and an
    endless event line over --max-event-line-bytes 1 MiB, each kill the job with a message naming the flag."""
    agent = agent_factory(
        "--fault-injection", "--max-job-processes", "20", "--max-event-line-bytes", str(2**20)
    )
    sha = _upload_null(agent, agent.workdir, {})
    result = _run(agent, _job(sha, "fork:30", wall_s=60))
    assert result.status == pb.BENCHMARK_STATUS_FAILED and "more than 20 processes" in result.message
    result = _run(agent, _job(sha, "flood:0.2", wall_s=60))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert "longer than 1048576 bytes (--max-event-line-bytes)" in result.message
    with agent.client() as client:
        controls = {c.name: c.detail for c in client.device_info().sandbox}
    assert "more than 20 processes" in controls["process count"]
    assert_clean_and_serving(agent, sha)


# ------------------------------------------------------------------------------------------------ F15, F19


def test_realtime_signal_death_is_named(hostile: LocalAgent, null_sha: str) -> None:
    """F19: a job killed by a real-time signal is reported as such, not as an agent error."""
    result = _run(hostile, _job(null_sha, "signal"))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert "died from SIGRTMIN+3" in result.message
    assert_clean_and_serving(hostile, null_sha)


def test_job_cannot_raise_its_limits_past_the_agent_ceilings(agent_factory: Callable[..., LocalAgent]) -> None:
    """F15: a job asking for 100 GiB and a day gets the agent's ceilings (300 MiB, 3 s), and says so."""
    agent = agent_factory("--max-job-memory-mb", "300", "--max-job-timeout-s", "3", "--job-timeout-s", "3")
    sha = _upload_null(agent, agent.workdir, {})
    result = _run(agent, _job(sha, memory_mb=100 * 1024, options={"allocate_mb": "500"}, wall_s=3600))
    assert result.status == pb.BENCHMARK_STATUS_OUT_OF_MEMORY, result.message
    assert "memory limit of 300 MiB" in result.message and "--max-job-memory-mb" in result.message
    started = time.monotonic()
    result = _run(agent, _job(sha, options={"hang_s": "60"}, wall_s=86_400))
    assert result.status == pb.BENCHMARK_STATUS_TIMEOUT, result.message
    assert "capped at the agent's ceiling of 3 s" in result.message
    assert time.monotonic() - started < 20


# ------------------------------------------------------------------------------------------------ sandbox


def test_device_info_says_what_contains_a_job(hostile: LocalAgent) -> None:
    """`edgebench fleet show` prints these: every control with how it is enforced or why it is not."""
    with hostile.client() as client:
        info = client.device_info()
    controls = {c.name: c for c in info.sandbox}
    assert set(controls) >= {"processes", "memory", "process count", "network", "filesystem", "secrets",
                             "privileges", "environment"}
    assert info.sandbox_mode == "auto"
    for control in controls.values():
        assert control.detail, control.name


def test_hostile_job_cannot_reach_secrets_network_or_agent(hostile: LocalAgent, tmp_path: Path) -> None:
    """A job that tries what it must not: read the agent's token and config file, write beside them, into
    /tmp or HOME, or through its model file's hard link into the verified blob; connect to the agent's
    port; signal the agent; see the agent's environment. Each attempt is denied (or reads nothing)."""
    token = hostile.workdir / "token"
    config = hostile.extra["config"]
    sha = _upload_null(
        hostile,
        tmp_path,
        {
            "probe_read": [str(token), config, str(hostile.workdir / "agent.stderr.log")],
            "probe_connect": [hostile.address],
            "probe_kill": [hostile.process.pid],
        },
    )
    result = _run(hostile, _job(sha, "probe", min_iterations=5, min_ms=10))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    found = dict(result.provenance.runtime_details)
    controls = _controls(result)
    assert controls["secrets"].enforced, controls["secrets"].detail
    for path in (str(token), config):
        assert found[f"probe.read:{path}"].startswith(("denied", "allowed empty")), found[f"probe.read:{path}"]
        assert found[f"probe.write-beside:{path}"].startswith("denied"), found
    assert found["probe.write-model"].startswith("denied"), found["probe.write-model"]
    assert found["probe.write-tmp"].startswith("denied") and found["probe.write-home"].startswith("allowed")
    if controls["network"].enforced:
        assert found[f"probe.connect:{hostile.address}"].startswith("denied"), found
    assert found[f"probe.kill:{hostile.process.pid}"].startswith("denied"), found
    if found["probe.pid"] == "2":  # PID 2 of its own namespace (PID 1 is its init); NVML knows the host's pid
        assert int(found["probe.host_pid"]) > 2
    env = found["probe.environment"].split(",")
    assert "EDGEBENCH_TEST_SECRET" not in env and not any(k.startswith("EDGEBENCH_AGENT") for k in env), env
    # The blob the job ran is unchanged: the same artifact still verifies and runs.
    assert not (Path(config).parent / "planted-by-job").exists() and not (hostile.workdir / "planted-by-job").exists()
    with hostile.client() as client:
        assert client.find_missing([sha]) == []
    result = _run(hostile, _job(sha, min_iterations=5, min_ms=10))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message


def test_sandbox_probe_as_an_unprivileged_user() -> None:
    """Agents on devices run as their own unprivileged user: there, the sandbox needs a user namespace
    first. Run the probe (every step, checked from inside) as `nobody` with the system's Python."""
    import pwd
    import shutil
    import tempfile

    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.access(python, os.X_OK):
        pytest.skip("needs root (to become nobody) and a system python3 that nobody can run")
    nobody = pwd.getpwnam("nobody")
    # Not below pytest's own temporary folder: its parents are private to root, nobody could not enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="edgebench-userns-"))
    try:
        _probe_as(nobody, python, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _probe_as(nobody: object, python: str, tmp_path: Path) -> None:
    import shutil
    import subprocess

    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[2] / "agent" / "sandbox", src / "agent" / "sandbox")
    (src / "agent" / "__init__.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, nobody.pw_uid, nobody.pw_gid)  # type: ignore[attr-defined]
    for path in (tmp_path, src, *src.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = subprocess.run(
        [python, "-m", "agent.sandbox.probe", str(work)],
        cwd=src,
        user=nobody.pw_uid,  # type: ignore[attr-defined]
        group=nobody.pw_gid,  # type: ignore[attr-defined]
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    if "userns" in report["missing"]:
        pytest.skip(f"this kernel refuses unprivileged user namespaces: {report['missing']['userns']}")
    assert set(report["enforced"]) >= {"userns", "netns", "mountns", "pidns", "secrets", "readonly", "nocaps"}, report
    assert all(report["checks"].values()), report["checks"]
