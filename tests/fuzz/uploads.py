"""Runs one random upload sequence (strategies.UploadPlan) against the agent, asserting each answer.

What the agent must answer depends on what came before, so this keeps a small model of it per digest:
whether the agent already has it, whether a cancelled call may still hold it (then another call may be
told ABORTED, and its committed offset may still move), and whether its part file may hold wrong bytes
(`tainted`: a refused upload of other bytes leaves what it wrote, so resuming it must end in DATA_LOSS).
Afterwards `settle` uploads every blob the normal way (AgentClient.upload: resume, retry, wait), which
must succeed, runs a null job on a model blob, and checks the whole store (Driver.check_store).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from typing import TypeAlias

import grpc

from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.fuzz.driver import GOOD_WALL_S, NULL_MODEL, Driver, code_of, details_of
from tests.fuzz.strategies import MIB, BlobSpec, UploadOp, UploadPlan
from tests.helpers import make_job

C = grpc.StatusCode
Outcome: TypeAlias = pb.UploadArtifactResponse | grpc.StatusCode
#: What an operation may end in: an error code, or None for success.
Allowed: TypeAlias = set[grpc.StatusCode | None]
#: Largest artifact the fuzz agent accepts (--max-artifact-bytes): "too-large" headers go past it.
MAX_ARTIFACT_BYTES = 8 * MIB
#: The fuzz agent's cache cap (--max-cache-bytes): small, so that uploads evict (`pressure`).
CACHE_BYTES = 24 * MIB


def blob_bytes(spec: BlobSpec, seed: int, index: int) -> bytes:
    """A null-runtime model padded to about `spec.size` bytes, or `spec.size` random bytes."""
    rnd = random.Random(f"{seed}-{index}")
    if spec.kind == "model":
        bare = len(json.dumps({**NULL_MODEL, "pad": ""}))
        pad = rnd.randbytes(spec.size // 2 + 1).hex()[: max(0, spec.size - bare)]
        return json.dumps({**NULL_MODEL, "pad": pad}).encode()
    return rnd.randbytes(spec.size)


def chunks(data: bytes, pattern: tuple[int, ...]) -> Iterator[bytes]:
    """`data` cut by `pattern`, cycled (a 0 in it sends an empty chunk)."""
    pos, k = 0, 0
    while pos < len(data):
        size = pattern[k % len(pattern)]
        k += 1
        yield data[pos : pos + size]
        pos += size


def messages(digest: str, size: int, offset: int, data: bytes, pattern: tuple[int, ...] = (MIB,)
             ) -> list[pb.UploadArtifactRequest]:
    header = pb.UploadArtifactRequest(header=pb.ArtifactHeader(sha256=digest, size_bytes=size, offset_bytes=offset))
    return [header, *(pb.UploadArtifactRequest(chunk=c) for c in chunks(data, pattern))]


def ok(outcome: Outcome) -> bool:
    return isinstance(outcome, pb.UploadArtifactResponse)


class UploadRun:
    def __init__(self, driver: Driver, plan: UploadPlan) -> None:
        self.d = driver
        self.plan = plan
        self.data = [blob_bytes(spec, plan.seed, i) for i, spec in enumerate(plan.pool)]
        self.digest = [hashlib.sha256(b).hexdigest() for b in self.data]
        self.rnd = random.Random(plan.seed)
        self.cancelled: set[str] = set()
        self.tainted: set[str] = set()
        driver.known.update(self.digest)
        driver.named.update(self.digest)

    def run(self) -> None:
        for op in self.plan.ops:
            getattr(self, f"_{op.op}")(op)
        self.settle()

    def _present(self, digest: str) -> bool:
        return digest not in self.d.find_missing([digest])

    def _expect(self, outcome: Outcome, digest: str, present: bool, allowed: Allowed, what: str) -> None:
        """The answer is an already-present success if the agent had the digest; ABORTED is allowed too while a
        cancelled call may hold it; otherwise one of `allowed` (None in it: success)."""
        if present:
            assert ok(outcome) and outcome.already_present, f"{what}: {outcome} for a stored artifact"
            return
        if digest in self.cancelled:
            allowed = allowed | {C.ABORTED, C.FAILED_PRECONDITION, None}
        got = None if ok(outcome) else outcome
        assert got in allowed, f"{what}: got {outcome}, expected one of {allowed}"
        if ok(outcome):
            assert not outcome.already_present and self._present(digest), f"{what}: success but not stored"
            self.tainted.discard(digest)
        elif outcome == C.DATA_LOSS:
            self.tainted.discard(digest)  # the part file is gone

    def _started_from_zero(self, outcome: Outcome, digest: str) -> None:
        """A call from offset 0 with the right bytes rewrote the part file: it holds a correct prefix now."""
        if outcome != C.ABORTED:
            self.tainted.discard(digest)

    def _full(self, op: UploadOp) -> None:
        digest, data = self.digest[op.i], self.data[op.i]
        present = self._present(digest)
        oversize = any(len(c) > MIB for c in chunks(data, op.chunking))
        outcome = self.d.upload(messages(digest, len(data), 0, data, op.chunking))
        allowed: Allowed = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED} if oversize else {None}
        self._expect(outcome, digest, present, allowed, f"full upload in chunks {op.chunking}")
        self._started_from_zero(outcome, digest)

    def _partial(self, op: UploadOp) -> None:
        digest, data = self.digest[op.i], self.data[op.i]
        present = self._present(digest)
        n = min(int(len(data) * op.fraction), max(len(data) - 1, 0))
        sent = messages(digest, len(data), 0, data[:n], (MIB,))
        if op.ending == "cancel":
            self.d.upload_then_cancel(sent)
            self.cancelled.add(digest)
            return
        outcome = self.d.upload(sent)
        allowed: Allowed = {None} if n == len(data) else {C.FAILED_PRECONDITION}
        self._expect(outcome, digest, present, allowed, "partial")
        self._started_from_zero(outcome, digest)

    def _resume(self, op: UploadOp) -> None:
        digest, data = self.digest[op.i], self.data[op.i]
        status = self.d.stub.GetUploadStatus(pb.GetUploadStatusRequest(sha256=digest), metadata=self.d.md, timeout=10)
        committed = status.committed_offset_bytes
        assert committed <= len(data) or digest in self.cancelled, (committed, len(data))
        offset = {"committed": committed, "zero": 0, "past": committed + 1, "beyond": len(data) + 1}[op.ending]
        outcome = self.d.upload(messages(digest, len(data), offset, data[offset:], op.chunking))
        oversize = any(len(c) > MIB for c in chunks(data[offset:], op.chunking))
        allowed: Allowed
        if offset == 0 or (op.ending == "committed" and digest not in self.tainted):
            allowed = {None}
        elif op.ending == "committed":
            allowed = {C.DATA_LOSS}
        else:
            allowed = {C.FAILED_PRECONDITION}
        if oversize:
            allowed |= {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}
        self._expect(outcome, digest, status.complete, allowed, f"resume at {op.ending} offset {offset}")
        if offset == 0:
            self._started_from_zero(outcome, digest)

    def _wrong(self, op: UploadOp) -> None:
        """Header of blob i, other bytes: refused with DATA_LOSS (right size, wrong hash) or FAILED_PRECONDITION
        (more or fewer bytes than declared, which leaves wrong bytes in the part file)."""
        digest, data = self.digest[op.i], self.data[op.i]
        if op.ending == "other":
            other = self.data[self.rnd.randrange(len(self.data))]
            body, size = other, len(data)
        elif op.ending == "flip" and data:
            k = self.rnd.randrange(len(data))
            body, size = data[:k] + bytes([data[k] ^ 0x55]) + data[k + 1 :], len(data)
        elif op.ending == "short" and data:
            body, size = data[:-1], len(data) - 1
        else:
            body, size = data + b"x", len(data) + 1
        if body == data and size == len(data):
            return  # not wrong after all
        present = self._present(digest)
        outcome = self.d.upload(messages(digest, size, 0, body, (MIB,)))
        self._expect(outcome, digest, present, {C.DATA_LOSS, C.FAILED_PRECONDITION}, f"wrong bytes ({op.ending})")
        if outcome == C.FAILED_PRECONDITION:
            self.tainted.add(digest)

    def _random_digest(self) -> str:
        digest = self.rnd.randbytes(32).hex()
        self.d.named.add(digest)
        return digest

    def _header(self, op: UploadOp) -> None:
        digest = self._random_digest()
        header = messages(digest, 10, 0, b"")[0]
        sent: list[pb.UploadArtifactRequest] = {
            "bad-digest": [pb.UploadArtifactRequest(header=pb.ArtifactHeader(sha256="ZZ" + digest[2:], size_bytes=1)),
                           pb.UploadArtifactRequest(chunk=b"x")],
            "chunk-first": [pb.UploadArtifactRequest(chunk=b"0123456789"), header],
            "two-headers": [header, header],
            "empty": [],
            "too-large": messages(digest, self.rnd.choice([MAX_ARTIFACT_BYTES + 1, 2**64 - 1]), 0, b"x"),
            "offset-past-size": messages(digest, 10, 11, b""),
        }[op.ending]
        expected = {"too-large": C.RESOURCE_EXHAUSTED, "offset-past-size": C.FAILED_PRECONDITION}
        outcome = self.d.upload(sent)
        assert outcome == expected.get(op.ending, C.INVALID_ARGUMENT), f"broken stream {op.ending}: {outcome}"

    def _concurrent(self, op: UploadOp) -> None:
        """`count` calls upload the same artifact at once: one stores it, the others are told ABORTED (or
        that it is already there); none may fail otherwise, and it is stored afterwards."""
        digest, data = self.digest[op.i], self.data[op.i]
        present = self._present(digest)
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(op.count)

        def one() -> None:
            try:
                barrier.wait(10)
                outcomes.append(self.d.upload(messages(digest, len(data), 0, data, (256 * 1024,))))
            except BaseException as exc:  # re-raised below: an assertion in a thread would be lost
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(op.count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors:
            raise errors[0]
        assert len(outcomes) == op.count, "a concurrent upload never returned"
        for outcome in outcomes:
            assert ok(outcome) or outcome == C.ABORTED or digest in self.cancelled, outcomes
        if not present and digest not in self.cancelled:
            assert any(ok(o) for o in outcomes), f"no concurrent upload of {digest[:12]} succeeded: {outcomes}"
        if any(ok(o) for o in outcomes):
            assert self._present(digest)
            self.tainted.discard(digest)

    def _query(self, op: UploadOp) -> None:
        try:
            if op.ending == "odd":
                odd = self.rnd.choice(["", "ZZ", "g" * 64, self.digest[0].upper(), "../" + self.digest[0]])
                self.d.stub.FindMissingArtifacts(pb.FindMissingArtifactsRequest(sha256=[self.digest[0], odd]),
                                                 metadata=self.d.md, timeout=10)
            elif op.ending == "many":
                self.d.stub.FindMissingArtifacts(pb.FindMissingArtifactsRequest(sha256=[self.digest[0]] * 10_001),
                                                 metadata=self.d.md, timeout=10)
            else:
                self.d.stub.GetUploadStatus(pb.GetUploadStatusRequest(sha256="../" + self.digest[0]),
                                            metadata=self.d.md, timeout=10)
        except grpc.RpcError as exc:
            self.d.count("uploads", code_of(exc).name)
            assert code_of(exc) == C.INVALID_ARGUMENT and details_of(exc), exc
            return
        raise AssertionError(f"query {op.ending} was answered as valid")

    def _pressure(self, op: UploadOp) -> None:
        """A job waits in the queue behind another while uploads push the store past its cap: the blob it
        needs is pinned, never evicted, and the job succeeds; the uploads evict others and succeed."""
        model = self.d.scratch / f"pressure-{self.plan.seed}.json"
        model.write_text(json.dumps({**NULL_MODEL, "pad": self.rnd.randbytes(64).hex()}))
        sha = self.d.ensure(model, self.d.null_path)[0]
        blocker = make_job(self.d.null_sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", options={"hang_s": "2"},
                           min_iterations=3, min_ms=1, max_s=1, wall_s=GOOD_WALL_S, job_id=self.d.fresh_id("blocker"))
        waiting = make_job(sha, fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_iterations=3, min_ms=1, max_s=1,
                           wall_s=GOOD_WALL_S, job_id=self.d.fresh_id("pinned"))
        results: dict[str, object] = {}

        def run(job: pb.BenchmarkJob) -> None:
            try:
                results[job.job_id] = self.d.run_job(job, "uploads")
            except BaseException as exc:  # re-raised below
                results[job.job_id] = exc

        threads = [threading.Thread(target=run, args=(job,)) for job in (blocker, waiting)]
        for t in threads:
            t.start()
            self.d.poll_known(blocker.job_id if t is threads[0] else waiting.job_id)
        fillers = []
        for k in range(CACHE_BYTES // (4 * MIB) + 2):
            path = self.d.scratch / f"filler-{k}"
            path.write_bytes(self.rnd.randbytes(4 * MIB))
            fillers += self.d.ensure(path)
            path.unlink()
        self.d.named.update(fillers)
        for t in threads:
            t.join(120)
        for job in (blocker, waiting):
            outcome = results.get(job.job_id)
            if isinstance(outcome, BaseException):
                raise outcome
            assert isinstance(outcome, pb.BenchmarkResult), (job.job_id, outcome)
            assert outcome.status == pb.BENCHMARK_STATUS_SUCCEEDED, (job.job_id, outcome.message)
        model.unlink()

    def settle(self) -> None:
        """Uploading each blob the normal way succeeds (whatever the sequence left behind), a model blob runs,
        and the store is consistent."""
        for i, (digest, data) in enumerate(zip(self.digest, self.data, strict=True)):
            path = self.d.scratch / f"blob-{digest}"
            path.write_bytes(data)
            with self.d.agent.client() as client:
                report = client.upload(path, digest, wait_for_others_s=20)
            path.unlink()
            assert report.sha256 == digest and self._present(digest), f"blob {i} not stored after a normal upload"
            status = self.d.stub.GetUploadStatus(pb.GetUploadStatusRequest(sha256=digest), metadata=self.d.md,
                                                 timeout=10)
            assert status.complete, f"blob {i} uploaded but its status is not complete"
        models = [d for d, spec in zip(self.digest, self.plan.pool, strict=True) if spec.kind == "model"]
        if models:
            job = make_job(models[0], fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_iterations=3, min_ms=1, max_s=1,
                           wall_s=GOOD_WALL_S, job_id=self.d.fresh_id("blob"))
            result = self.d.run_job(job, "uploads")
            assert isinstance(result, pb.BenchmarkResult) and result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result
            assert result.provenance.model_sha256 == models[0]
        self.d.check_store()
