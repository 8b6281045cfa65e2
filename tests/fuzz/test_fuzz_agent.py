"""Fuzzing a real agent with hostile input: random job specs, upload sequences and hostile job processes.

One agent process on 127.0.0.1, started once for the module with --fault-injection and small ceilings
(every job is killed after 8 s and at 256 MiB, whatever it asks for, so nothing generated can take long),
receives from hypothesis:

1. random job specs (ids with odd characters, unknown formats and runtimes, junk and hostile options,
   absurd plans and limits, odd companions, data sets present or not; now and then wire bytes with some
   flipped). Every call must end as a result with a status, or a gRPC error with a contract code and a
   message; never UNKNOWN or INTERNAL, never a hang;
2. random upload sequences (tests/fuzz/uploads.py): chunk sizes from 0 to past the 1 MiB cap, resumes at
   wrong offsets, other bytes under a digest, abandoned and concurrent calls. Each answer must be the one
   the protocol promises, and afterwards the store is consistent: every blob hashes to its name, every
   digest the agent claims is one whose bytes were sent, and a normal upload and a job on it succeed;
3. hostile job processes (agent.runtimes.faults: closed event pipe, nested and flooding event lines,
   double-forked escapes, fork bombs, signals, probes; crashes, hangs, memory hogs) with random limits,
   one at a time or queued together, while their clients wait, drop the stream or cancel them. Each ends
   in a result (a hostile one never as SUCCEEDED), re-attaching returns the same result.

After every example (job specs: every few) `Driver.check` asserts the agent's promises: health SERVING
within 2 s, no process of a finished job left behind (counted as escaped, then killed), a known-good job
succeeds, and a sample of every result returned so far comes back unchanged. The last test restarts the
agent on its work directory: every result comes back unchanged.

Bounds: by default (CI) a few minutes on 2 cores. EDGEBENCH_FUZZ_EXAMPLES=N runs N times the examples,
EDGEBENCH_FUZZ_SEED=S replays a seed (printed in the summary line and with any failure),
EDGEBENCH_FUZZ_SHRINK=1 lets hypothesis shrink a failure (slow: every try runs real jobs) and
EDGEBENCH_FUZZ_REPORT=path writes the figures as JSON; benchmarks/fuzz_agent.py runs the long mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.fuzz.driver import SUMMARY, Driver, Tally, code_of, details_of
from tests.fuzz.hostile import MEMORY_CEILING_MB, HostileRun
from tests.fuzz.strategies import (
    HostileJob,
    IdSpec,
    Refs,
    UploadPlan,
    hostile_plans,
    job_specs,
    upload_plans,
    weighted,
)
from tests.fuzz.uploads import CACHE_BYTES, MAX_ARTIFACT_BYTES, UploadRun
from tests.helpers import leftover_processes, make_job

MULTIPLIER = max(1, int(os.environ.get("EDGEBENCH_FUZZ_EXAMPLES") or 1))
pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc"), reason="finding a job's processes needs /proc (Linux)"),
    pytest.mark.timeout(300 * MULTIPLIER),  # each test; the long mode runs MULTIPLIER times the examples
]
SEED = int(os.environ.get("EDGEBENCH_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
SHRINK = os.environ.get("EDGEBENCH_FUZZ_SHRINK") == "1"
#: Examples per test in the default (CI) mode.
JOB_EXAMPLES, UPLOAD_EXAMPLES, HOSTILE_EXAMPLES = 50, 25, 14
#: Job-spec examples between two full checks (most are refused at once; a check runs a job).
CHECK_EVERY = 4
#: A job that sets no wall-time limit gets DEFAULT_WALL_S; none gets more than WALL_CEILING_S (the checks' own
#: known-good jobs ask for the ceiling, so a loaded machine does not fail them).
DEFAULT_WALL_S, WALL_CEILING_S = 3, 8
FLAGS = (
    "--fault-injection",
    "--job-timeout-s", str(DEFAULT_WALL_S), "--max-job-timeout-s", str(WALL_CEILING_S),
    "--max-job-memory-mb", str(MEMORY_CEILING_MB),
    "--max-artifact-bytes", str(MAX_ARTIFACT_BYTES), "--max-cache-bytes", str(CACHE_BYTES),
    "--max-kept-results", "1000000",
)
REPLAY = f"fuzz seed {SEED}: replay with EDGEBENCH_FUZZ_SEED={SEED} EDGEBENCH_FUZZ_EXAMPLES={MULTIPLIER}"


def fuzz_settings(base: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else [])

    def apply(test: Callable[..., None]) -> Callable[..., None]:
        configured = settings(
            max_examples=base * MULTIPLIER, deadline=None, database=None, derandomize=False, phases=phases,
            suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
        )(test)
        return seed(SEED)(configured)

    return apply


@pytest.fixture(scope="module")
def fuzz(
    agent_factory: Callable[..., LocalAgent], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Driver]:
    """The fuzzed agent and what it promised; its figures are printed at the end of the session (and written
    to EDGEBENCH_FUZZ_REPORT)."""
    tally = Tally(SEED, MULTIPLIER)
    driver = Driver(agent_factory(*FLAGS), tally, tmp_path_factory.mktemp("fuzz"))
    yield driver
    SUMMARY.append(tally.line(len(driver.results)))  # printed by tests/fuzz/conftest.py
    if report := os.environ.get("EDGEBENCH_FUZZ_REPORT"):
        Path(report).write_text(json.dumps(tally.as_dict(len(driver.results)), indent=2) + "\n")


@pytest.fixture(scope="module")
def ref_files(fuzz: Driver) -> tuple[Path, ...]:
    """Files the job specs refer to: the null model, a data set for it (inputs, labels, reference outputs),
    random bytes."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((32, 16)).astype(np.float32)
    dataset = fuzz.scratch / "data.npz"
    np.savez(dataset, inputs=inputs, labels=rng.integers(0, 10, 32), reference_outputs=inputs[:, :10])
    garbage = fuzz.scratch / "garbage.bin"
    garbage.write_bytes(random.Random(1).randbytes(5000))
    return fuzz.null_path, dataset, garbage


@pytest.fixture(scope="module")
def refs(fuzz: Driver, ref_files: tuple[Path, ...]) -> Refs:
    null, dataset, garbage = fuzz.ensure(*ref_files)
    return Refs(null=null, dataset=dataset, garbage=garbage, missing="0" * 63 + "1")


@contextlib.contextmanager
def counted(driver: Driver, category: str) -> Iterator[None]:
    driver.tally.cases[category] += 1
    try:
        yield
    except Exception:
        driver.tally.failures += 1
        raise


def resolve_id(driver: Driver, spec: IdSpec) -> str:
    if spec.kind == "raw":
        return spec.text
    earlier = sorted(driver.results)
    if spec.kind == "reuse" and earlier:
        return earlier[spec.pick % len(earlier)]
    return driver.fresh_id(spec.text)


def send_raw(driver: Driver, raw: bytes) -> tuple[grpc.StatusCode, str]:
    """A RunBenchmark call carrying `raw` as its request bytes; the error it ends with."""
    call = driver.channel.unary_stream(
        "/edgebench.agent.v1.AgentService/RunBenchmark",
        request_serializer=lambda b: b,
        response_deserializer=pb.RunBenchmarkResponse.FromString,
    )
    try:
        list(call(raw, metadata=driver.md, timeout=30))
    except grpc.RpcError as exc:
        return code_of(exc), details_of(exc)
    raise AssertionError("undecodable request bytes were answered as a job")


MUTATIONS = weighted((7, st.just(())), (1, st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1,
                                                          max_size=3).map(tuple)))


def test_random_job_specs(fuzz: Driver, refs: Refs, ref_files: tuple[Path, ...]) -> None:
    """Every job spec ends as a result with a status or a contract error with a message, within its bound."""
    print(REPLAY)

    @fuzz_settings(JOB_EXAMPLES)
    @given(spec=job_specs(refs), mutations=MUTATIONS)
    def example(spec: tuple[IdSpec, pb.BenchmarkJob], mutations: tuple[tuple[float, int], ...]) -> None:
        with counted(fuzz, "jobs"):
            fuzz.ensure(*ref_files)  # the store may have evicted them (its cap is small)
            job = pb.BenchmarkJob()
            job.CopyFrom(spec[1])
            job.job_id = resolve_id(fuzz, spec[0])
            raw = None
            if mutations:
                data = bytearray(pb.RunBenchmarkRequest(job=job).SerializeToString())
                for where, xor in mutations:
                    data[min(int(where * len(data)), len(data) - 1)] ^= xor
                raw = bytes(data)
                try:
                    job = pb.RunBenchmarkRequest.FromString(raw).job
                except Exception:  # not a message any more: see test_undecodable_request_is_invalid_argument
                    code, details = send_raw(fuzz, raw)
                    fuzz.count("jobs", f"undecodable-{code.name}")
                    assert code == grpc.StatusCode.INVALID_ARGUMENT and details, (code, details)
                    return
            fuzz.run_job(job, "jobs", raw=raw)
            if fuzz.tally.cases["jobs"] % CHECK_EVERY == 0:
                fuzz.check("jobs")

    example()
    fuzz.check("jobs")


def test_random_upload_sequences(fuzz: Driver) -> None:
    """Each upload answer is the promised one; afterwards the store is consistent and usable."""
    print(REPLAY)

    @fuzz_settings(UPLOAD_EXAMPLES)
    @given(plan=upload_plans())
    def example(plan: UploadPlan) -> None:
        with counted(fuzz, "uploads"):
            UploadRun(fuzz, plan).run()
            fuzz.check("uploads")

    example()


def test_hostile_job_processes(fuzz: Driver) -> None:
    """Hostile jobs never take the agent down, never leave a process, never lose or change a result."""
    print(REPLAY)

    @fuzz_settings(HOSTILE_EXAMPLES)
    @given(plan=hostile_plans)
    def example(plan: tuple[list[HostileJob], bool]) -> None:
        with counted(fuzz, "hostile"):
            HostileRun(fuzz, *plan).run()
            fuzz.check("hostile")

    example()


# ---------------------------------------------------------------------------------------------- single cases


def test_leftover_check_sees_a_stray_process(fuzz: Driver) -> None:
    """The escape check can fail: a process sitting in the jobs folder, outside the agent's tree, is found."""
    folder = fuzz.agent.workdir / "jobs" / "stray-for-the-check"
    folder.mkdir(exist_ok=True)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=folder)
    try:
        time.sleep(0.2)
        found = leftover_processes(fuzz.agent, timeout=0.5)
        assert stray.pid in {p.pid for p in found}, found
    finally:
        stray.kill()
        stray.wait()
        folder.rmdir()
    assert leftover_processes(fuzz.agent, timeout=5) == []


def test_undecodable_requests_leave_the_agent_serving(fuzz: Driver) -> None:
    """Bytes that are no message, sent to every method, are refused; the agent keeps its promises."""
    for method, kind in [("RunBenchmark", "unary_stream"), ("FindMissingArtifacts", "unary_unary"),
                         ("GetUploadStatus", "unary_unary"), ("CancelBenchmark", "unary_unary"),
                         ("GetBenchmarkResult", "unary_unary"), ("GetDeviceInfo", "unary_unary"),
                         ("UploadArtifact", "stream_unary")]:
        call = getattr(fuzz.channel, kind)(f"/edgebench.agent.v1.AgentService/{method}",
                                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
        payload = b"\x0a\x05\xff\xfe\xfd\xfc\xfb"  # field 1, five bytes of invalid UTF-8 (or a cut message)
        with pytest.raises(grpc.RpcError) as caught:
            reply = call(iter([payload]) if kind == "stream_unary" else payload, metadata=fuzz.md, timeout=30)
            if kind == "unary_stream":
                list(reply)
        assert caught.value.code() not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED), method
    fuzz.check("single")


def test_undecodable_request_is_invalid_argument(fuzz: Driver) -> None:
    """A RunBenchmark request whose job id is not valid UTF-8 breaks the contract: INVALID_ARGUMENT with a
    message, like any other malformed job (agent.bounds.DecodeGuard; gRPC alone answers INTERNAL)."""
    job = make_job(fuzz.null_sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", job_id="XXXX")
    raw = pb.RunBenchmarkRequest(job=job).SerializeToString().replace(b"XXXX", b"\xff\xfeXX")
    code, details = send_raw(fuzz, raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_job_processes_die_with_a_killed_agent(
    agent_factory: Callable[..., LocalAgent], fuzz: Driver, sandbox: str
) -> None:
    """A job that closed its event pipe and hangs is running when the agent is SIGKILLed (a crash, the OOM
    killer, a stop timeout): none of its processes may outlive the agent (they would run on unsupervised and
    disturb every later measurement). The job process carries a parent-death signal (agent/child.py); with
    --sandbox off there is no PID namespace to take the rest along, and the job process itself dies."""
    agent = agent_factory("--fault-injection", "--sandbox", sandbox)
    with agent.client() as client:
        sha = client.upload(fuzz.null_path).sha256
    job = make_job(sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", options={"hostile": "close_pipe"}, wall_s=600)
    client = agent.client()
    running: list[int] = []
    try:
        for event in client.run(job, timeout_s=60):  # until the job process loads the model: it runs now
            if event.WhichOneof("event") == "progress" and event.progress.phase == pb.JOB_PHASE_LOADING:
                break
        time.sleep(1.0)  # it closes its pipe and hangs
        running = [p.pid for p in psutil.Process(agent.process.pid).children(recursive=True)]
        agent.process.kill()
        agent.process.wait()
        left = leftover_processes(agent, timeout=10)
        assert not left, f"{len(left)} job process(es) outlived the killed agent: {[p.pid for p in left]}"
    finally:
        client.close()
        for pid in running:  # this test's own job processes: never leave them running
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_results_survive_a_restart(fuzz: Driver, agent_factory: Callable[..., LocalAgent], how: str) -> None:
    """After everything above, the agent is killed (a crash) or stopped (exit status 0); no process of it is
    left (no job runs: its spare job process ends with it), and a new agent on the same work directory
    returns every result the agent ever returned, unchanged, keeps a consistent store and serves."""
    print(REPLAY)
    with counted(fuzz, "restart"):
        fuzz.good_job("restart")  # something to compare even when this test runs alone
        old = fuzz.agent
        if how == "SIGKILL":
            old.process.kill()
            old.process.wait()
        else:
            assert old.stop(timeout=30) == 0, old.stderr_path.read_text()[-2000:]
        left = leftover_processes(old, timeout=10)
        fuzz.tally.escaped_processes += len(left)
        assert not left, f"processes outlived the agent: {left}"
        fuzz.attach(agent_factory(*FLAGS, workdir=old.workdir))
        fuzz.compare_results(sorted(fuzz.results))
        fuzz.check_store()
        fuzz.check("restart")
