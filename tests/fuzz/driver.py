"""Drives one real agent for the fuzz suite and checks the promises it keeps after every hostile example.

`Driver` makes the raw gRPC calls (so nothing between the fuzz and the agent smooths anything over),
checks each answer against the contract (a result with a status, or an error with a contract code and a
message; never a hang), remembers every result the agent returned by job id, and `check()` asserts that
the agent still serves: health answers SERVING within 2 s, no process of a finished job is left, a
known-good job succeeds, and a sample of the stored results comes back byte for byte unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.helpers import leftover_processes, make_job

C = grpc.StatusCode
#: Errors the agent may answer a job with: the request breaks the contract, or the agent cannot take it now.
JOB_CODES = frozenset({C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED,
                       C.ABORTED, C.UNAVAILABLE})
#: Uploads may also end in DATA_LOSS: the bytes did not hash to the declared digest.
UPLOAD_CODES = JOB_CODES | {C.DATA_LOSS}
#: No job may take longer than this from submission to result on the fuzz agent (its wall-time ceiling is a
#: few seconds; the rest is process start, loading and queueing on a loaded machine). Longer is a hang.
CALL_TIMEOUT_S = 60.0
HEALTH_BOUND_S = 2.0
#: Time a finished job's processes get to disappear before they count as escaped.
LEFTOVER_GRACE_S = 10.0
SAMPLE = 12
#: Wall-time limit of the checks' known-good jobs (the fuzz agent's ceiling): a loaded machine must not fail them.
GOOD_WALL_S = 8.0
#: Summary lines of finished fuzz modules, printed at the end of the session (tests/fuzz/conftest.py).
SUMMARY: list[str] = []
NULL_MODEL = {"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10}
TERMINAL = frozenset(
    {pb.BENCHMARK_STATUS_SUCCEEDED, pb.BENCHMARK_STATUS_FAILED, pb.BENCHMARK_STATUS_TIMEOUT,
     pb.BENCHMARK_STATUS_OUT_OF_MEMORY, pb.BENCHMARK_STATUS_UNSUPPORTED, pb.BENCHMARK_STATUS_CANCELLED}
)


@dataclass
class Tally:
    """What the suite did and saw, for the summary line and EDGEBENCH_FUZZ_REPORT."""

    seed: int
    multiplier: int
    cases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    checks: int = 0
    results_compared: int = 0
    escaped_processes: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self, results_kept: int) -> dict[str, object]:
        return {
            "seed": self.seed,
            "multiplier": self.multiplier,
            "cases": dict(self.cases),
            "cases_total": sum(self.cases.values()),
            "calls": self.calls,
            "outcomes": dict(sorted(self.outcomes.items())),
            "checks": self.checks,
            "results_kept": results_kept,
            "results_compared": self.results_compared,
            "escaped_processes": self.escaped_processes,
            "failures": self.failures,
            "wall_s": round(time.monotonic() - self.started, 1),
        }

    def line(self, results_kept: int) -> str:
        d = self.as_dict(results_kept)
        cases = ", ".join(f"{k} {v}" for k, v in sorted(self.cases.items()))
        return (
            f"edgebench fuzz: seed {d['seed']} x{d['multiplier']}: {d['cases_total']} cases ({cases}), "
            f"{d['calls']} calls, {d['checks']} health checks, {d['results_compared']} stored results compared "
            f"({results_kept} kept), {d['escaped_processes']} escaped processes, {d['failures']} failures, "
            f"{d['wall_s']} s"
        )


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


def details_of(exc: grpc.RpcError) -> str:
    return str(exc.details() or "")


def status_name(status: int) -> str:
    return pb.BenchmarkStatus.Name(status).removeprefix("BENCHMARK_STATUS_")  # type: ignore[arg-type]


class Driver:
    """One agent (replaceable by `attach` after a restart), its raw stubs, and what it has promised."""

    def __init__(self, agent: LocalAgent, tally: Tally, scratch: Path) -> None:
        self.tally = tally
        self.scratch = scratch
        #: job id -> the deterministic bytes of the result the agent returned for it.
        self.results: dict[str, bytes] = {}
        #: Digests of bytes the suite sent (or meant to send) under their own digest: all the agent may hold.
        self.known: set[str] = set()
        #: Every digest the suite named in an upload header, known or not.
        self.named: set[str] = set()
        self._verified_blobs: dict[str, tuple[int, int, int]] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self.attach(agent)
        self.null_path = self.scratch / "null.json"
        self.null_path.write_text(json.dumps(NULL_MODEL))
        self.null_sha = self.ensure(self.null_path)[0]

    def attach(self, agent: LocalAgent) -> None:
        self.agent = agent
        options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)]
        self.channel = grpc.insecure_channel(agent.address, options=options)
        self.stub = pb_grpc.AgentServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {agent.token}"),)

    def ensure(self, *paths: Path) -> list[str]:
        """Upload these files unless the agent has them (it evicts least recently used blobs); their digests."""
        with self.agent.client() as client:
            digests = [client.upload(path, wait_for_others_s=20).sha256 for path in paths]
        self.known.update(digests)
        return digests

    def fresh_id(self, suffix: str = "") -> str:
        with self._lock:
            self._ids += 1
            return f"fz{self._ids}-{suffix}"[:200]

    def count(self, category: str, outcome: str) -> None:
        with self._lock:
            self.tally.calls += 1
            self.tally.outcomes[f"{category}:{outcome}"] += 1

    # ------------------------------------------------------------------------------------------ jobs

    def remember(self, result: pb.BenchmarkResult) -> None:
        """Store a result the agent returned; one it returned before for the same id must be identical."""
        data = result.SerializeToString(deterministic=True)
        with self._lock:
            earlier = self.results.setdefault(result.job_id, data)
        assert earlier == data, f"job {result.job_id!r}: the agent returned a different result than before"

    def check_result(self, job: pb.BenchmarkJob, result: pb.BenchmarkResult) -> None:
        assert result.job_id == job.job_id, (result.job_id, job.job_id)
        assert result.status in TERMINAL, f"job {job.job_id!r} ended with status {result.status}"
        if result.status != pb.BENCHMARK_STATUS_SUCCEEDED:
            assert result.message.strip(), f"job {job.job_id!r} {status_name(result.status)} without a message"
        self.remember(result)

    def run_job(
        self, job: pb.BenchmarkJob, category: str, timeout: float = CALL_TIMEOUT_S, raw: bytes | None = None
    ) -> pb.BenchmarkResult | grpc.StatusCode:
        """Submit `job` (or `raw` request bytes) and read its stream to the end. Returns the result, or the
        contract error code. A job whose id is known re-attaches to the same result or is ALREADY_EXISTS."""
        known = job.job_id in self.results
        try:
            if raw is None:
                events = list(self.stub.RunBenchmark(pb.RunBenchmarkRequest(job=job), metadata=self.md,
                                                     timeout=timeout))
            else:
                call = self.channel.unary_stream("/edgebench.agent.v1.AgentService/RunBenchmark",
                                                 request_serializer=lambda b: b,
                                                 response_deserializer=pb.RunBenchmarkResponse.FromString)
                events = list(call(raw, metadata=self.md, timeout=timeout))
        except grpc.RpcError as exc:
            code = code_of(exc)
            self.count(category, code.name)
            assert code != C.DEADLINE_EXCEEDED, f"job {job.job_id!r} had no result within {timeout} s: a hang"
            assert code in JOB_CODES, f"job {job.job_id!r}: {code.name} is no contract answer: {details_of(exc)}"
            assert details_of(exc).strip(), f"job {job.job_id!r}: {code.name} without a message"
            if code == C.ALREADY_EXISTS:
                assert known, f"job {job.job_id!r}: ALREADY_EXISTS for an id never accepted: {details_of(exc)}"
            return code
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds and kinds[0] == "accepted" and kinds[-1] == "result" and kinds.count("result") == 1, kinds
        assert all(e.job_id == job.job_id for e in events), {e.job_id for e in events}
        assert events[0].accepted.reattached == known, (job.job_id, events[0].accepted, known)
        result = events[-1].result
        self.count(category, status_name(result.status))
        self.check_result(job, result)
        return result

    def poll_result(self, job_id: str, timeout: float = CALL_TIMEOUT_S) -> pb.BenchmarkResult:
        """Wait (bounded) for an accepted job to finish and return its stored result."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.stub.GetBenchmarkResult(pb.GetBenchmarkResultRequest(job_id=job_id), metadata=self.md,
                                                 timeout=10)
            assert reply.state != pb.JOB_STATE_UNKNOWN, f"accepted job {job_id!r} is unknown to the agent: lost"
            if reply.state == pb.JOB_STATE_FINISHED:
                assert reply.HasField("result"), f"job {job_id!r} FINISHED without a result"
                result: pb.BenchmarkResult = reply.result
                return result
            assert time.monotonic() < deadline, f"job {job_id!r} not finished after {timeout} s: a hang"
            time.sleep(0.1)

    def poll_known(self, job_id: str, timeout: float = 30.0) -> None:
        """Wait (bounded) until the agent knows the job: its submission was accepted."""
        deadline = time.monotonic() + timeout
        request = pb.GetBenchmarkResultRequest(job_id=job_id)
        while self.stub.GetBenchmarkResult(request, metadata=self.md, timeout=10).state == pb.JOB_STATE_UNKNOWN:
            assert time.monotonic() < deadline, f"job {job_id!r} not known to the agent after {timeout} s"
            time.sleep(0.02)

    def good_job(self, category: str) -> None:
        self.ensure(self.null_path)
        job = make_job(self.null_sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_iterations=5, min_ms=10,
                       max_s=1, wall_s=GOOD_WALL_S, job_id=self.fresh_id("good"))
        result = self.run_job(job, category)
        assert isinstance(result, pb.BenchmarkResult), f"a known-good job was refused: {result}"
        assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, f"a known-good job {status_name(result.status)}: " \
                                                               f"{result.message}"

    # ------------------------------------------------------------------------------------------ artifacts

    def find_missing(self, digests: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(digests))
        missing: set[str] = set()
        for start in range(0, len(wanted), 10_000):
            reply = self.stub.FindMissingArtifacts(
                pb.FindMissingArtifactsRequest(sha256=wanted[start : start + 10_000]), metadata=self.md, timeout=30
            )
            missing.update(reply.missing_sha256)
        return missing

    def upload(self, messages: Iterable[pb.UploadArtifactRequest]) -> pb.UploadArtifactResponse | grpc.StatusCode:
        """One UploadArtifact call carrying exactly `messages`; its response or its error code."""
        try:
            response: pb.UploadArtifactResponse = self.stub.UploadArtifact(
                iter(list(messages)), metadata=self.md, timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            code = code_of(exc)
            self.count("uploads", code.name)
            assert code != C.DEADLINE_EXCEEDED, "an upload call had no answer within its deadline: a hang"
            assert code in UPLOAD_CODES, f"upload: {code.name} is no contract answer: {details_of(exc)}"
            assert details_of(exc).strip(), f"upload: {code.name} without a message"
            return code
        self.count("uploads", "OK")
        return response

    def upload_then_cancel(self, messages: list[pb.UploadArtifactRequest]) -> None:
        """Send `messages`, keep the stream open, then cancel the call: a client that vanished mid-upload."""
        sent, release = threading.Event(), threading.Event()

        def requests() -> Iterator[pb.UploadArtifactRequest]:
            yield from messages
            sent.set()
            release.wait(CALL_TIMEOUT_S)

        future = self.stub.UploadArtifact.future(requests(), metadata=self.md, timeout=CALL_TIMEOUT_S)
        # The agent may answer before reading everything (an artifact it has, a refused header): then gRPC
        # stops pulling the requests and `sent` is never set.
        while not sent.wait(0.05) and not future.done():
            pass
        time.sleep(0.05)  # let some of it reach the agent
        future.cancel()
        release.set()
        try:
            future.result(timeout=CALL_TIMEOUT_S)
            self.count("uploads", "OK")
        except grpc.FutureCancelledError:
            self.count("uploads", "CANCELLED")
        except grpc.RpcError as exc:  # the agent answered before the cancel (e.g. a refused chunk)
            code = code_of(exc)
            self.count("uploads", code.name)
            assert code in UPLOAD_CODES | {C.CANCELLED}, f"upload: {code.name}: {details_of(exc)}"

    def check_store(self) -> None:
        """Every blob on the agent's disk hashes to its name and is reported present; every digest the agent
        claims to have is one the suite knows the bytes of (it can only have come from a correct upload)."""
        blobs = self.agent.workdir / "artifacts" / "blobs"
        names = []
        for path in blobs.iterdir():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # evicted meanwhile
            names.append(path.name)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._verified_blobs.get(path.name) == signature:
                continue
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                continue
            assert digest == path.name, f"stored blob {path.name} holds bytes that hash to {digest}"
            self._verified_blobs[path.name] = signature
        claimed = set(self.named) - self.find_missing(self.named)
        assert claimed <= set(self.known), f"the agent claims digests nobody sent: {sorted(claimed - set(self.known))}"
        gone = {n for n in set(names) & self.find_missing(names) if (blobs / n).exists()}
        assert not gone, f"blobs on the agent's disk that it reports missing: {sorted(gone)}"

    # ------------------------------------------------------------------------------------------ promises

    def check(self, category: str) -> None:
        """The agent's promises after hostile input (see the module docstring). Escaped processes are counted,
        killed (they are this test's agent's) and fail the check."""
        self.tally.checks += 1
        assert self.agent.process.poll() is None, f"the agent exited with {self.agent.process.returncode}"
        with grpc.insecure_channel(self.agent.address) as channel:
            started = time.monotonic()
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=HEALTH_BOUND_S)
            took = time.monotonic() - started
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply
        assert took < HEALTH_BOUND_S, f"health took {took:.1f} s"
        left = leftover_processes(self.agent, timeout=LEFTOVER_GRACE_S)
        if left:
            self.tally.escaped_processes += len(left)
            described = [_describe(p) for p in left]
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            raise AssertionError(f"{len(left)} process(es) of finished jobs left behind: {described}")
        self.good_job(category)
        self.compare_results(random.Random(self.tally.checks).sample(sorted(self.results),
                                                                    min(SAMPLE, len(self.results))))

    def compare_results(self, job_ids: Iterable[str]) -> None:
        """The agent still returns each of these results exactly as it first did."""
        for job_id in job_ids:
            reply = self.stub.GetBenchmarkResult(pb.GetBenchmarkResultRequest(job_id=job_id), metadata=self.md,
                                                 timeout=10)
            assert reply.state == pb.JOB_STATE_FINISHED, f"stored result of {job_id!r} lost (state {reply.state})"
            data = reply.result.SerializeToString(deterministic=True)
            assert data == self.results[job_id], f"stored result of {job_id!r} changed"
            self.tally.results_compared += 1


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} {' '.join(proc.cmdline())[:120]!r} cwd {proc.cwd()!r}"
    except psutil.Error:
        return f"pid {proc.pid}"
