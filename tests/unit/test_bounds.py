"""Tests of agent.bounds: slot counting per client and in total, peer parsing, job size and shape checks.
The same bounds are exercised through a real agent in tests/integration/test_attack_server.py."""

from __future__ import annotations

import threading

from agent.bounds import (
    MAX_JOB_COMPANIONS,
    MAX_JOB_OPTIONS,
    MAX_JOB_TEXT_CHARS,
    Limit,
    Slots,
    job_shape_problems,
    job_size_problem,
    peer_host,
)
from protos.edgebench.agent.v1 import agent_pb2 as pb

LIMIT = Limit("streams", per_client=2, total=3, per_client_flag="--per-client", total_flag="--total")


def test_per_client_then_total() -> None:
    slots = Slots(LIMIT)
    assert slots.acquire(["a"]) is None and slots.acquire(["a"]) is None
    refusal = slots.acquire(["a"])
    assert refusal is not None and "from this client (a): 2 already open" in refusal and "--per-client" in refusal
    assert slots.acquire(["b"]) is None
    refusal = slots.acquire(["c"])
    assert refusal is not None and "on this agent: 3 already open, the limit is 3 (--total)" in refusal
    slots.release(["a"])
    assert slots.acquire(["c"]) is None
    assert slots.open_count() == 3


def test_acquire_is_all_or_nothing_over_keys() -> None:
    """A call counts against its host and its certificate; a refusal on one key takes nothing."""
    slots = Slots(LIMIT)
    assert slots.acquire(["10.0.0.1", "cert x"]) is None
    assert slots.acquire(["10.0.0.2", "cert x"]) is None
    assert slots.acquire(["10.0.0.3", "cert x"]) is not None  # the certificate is at its limit
    assert slots.open_count() == 2
    assert slots.acquire(["10.0.0.1", "cert y"]) is None  # the host was not charged by the refusal


def test_slots_under_contention_never_exceed_the_total() -> None:
    slots = Slots(Limit("s", per_client=100, total=10, per_client_flag="-a", total_flag="-b"))
    won: list[int] = []
    lock = threading.Lock()

    def grab() -> None:
        if slots.acquire(["k"]) is None:
            with lock:
                won.append(1)

    threads = [threading.Thread(target=grab) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 10 == slots.open_count()


def test_peer_host() -> None:
    assert peer_host("ipv4:127.0.0.1:50123") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:50123") == "::1"
    assert peer_host("ipv6:[fe80::1%eth0]:1") == "fe80::1%eth0"
    assert peer_host("unix:/tmp/agent.sock") == "unix:/tmp/agent.sock"


def test_job_size() -> None:
    job = pb.BenchmarkJob(job_id="j")
    assert job_size_problem(job, 1024) is None
    job.runtime.options["blob"] = "x" * 5000
    problem = job_size_problem(job, 1024)
    assert problem is not None and "over the agent's limit of 1,024 (--max-job-bytes)" in problem


def test_job_shape() -> None:
    job = pb.BenchmarkJob(job_id="j")
    assert job_shape_problems(job) == []
    for i in range(MAX_JOB_OPTIONS + 1):
        job.runtime.options[f"k{i}"] = "v"
    for i in range(MAX_JOB_COMPANIONS + 1):
        job.model.companions.add(name=f"c{i}", sha256="ab" * 32)
    job.runtime.device = "d" * (MAX_JOB_TEXT_CHARS + 1)
    problems = job_shape_problems(job)
    assert f"runtime.options has {MAX_JOB_OPTIONS + 1} entries; at most {MAX_JOB_OPTIONS}" in problems
    assert f"model.companions has {MAX_JOB_COMPANIONS + 1} files; at most {MAX_JOB_COMPANIONS}" in problems
    assert any(p.startswith("runtime.device is 1,025 characters") for p in problems)
