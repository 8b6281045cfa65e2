"""Attacks on a real agent's artifact store and uploads (127.0.0.1, real `edgebench-agent serve` processes).

F1: a companion named like the model file, and a blob changed through a hard link with its mtime set back,
    must never make a job run (and its provenance name) bytes other than those its digest names.
F9: upload chunks over 1 MiB are refused, and the agent's memory stays bounded under concurrent uploads.
F8: abandoned part files count against --max-cache-bytes, are evicted for room and dropped when stale.
F4: concurrent uploads reserve disk space, so two that only fit one at a time cannot both proceed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from agent.artifacts import DEFAULT_STALE_PARTIAL_AGE_S, DISK_HEADROOM_BYTES, MAX_CHUNK_BYTES
from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.local import LocalAgent, start_agent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.edgebench.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.helpers import make_job, wait_for

MiB = 2**20


def blob(agent: LocalAgent, digest: str) -> Path:
    return agent.workdir / "artifacts" / "blobs" / digest


def part(agent: LocalAgent, digest: str) -> Path:
    return agent.workdir / "artifacts" / "partial" / f"{digest}.part"


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def run(agent: LocalAgent, job: pb.BenchmarkJob) -> pb.BenchmarkResult:
    with agent.client() as client:
        return client.run_to_result(job, timeout_s=120)


def null_job() -> pb.BenchmarkJob:
    return make_job("", fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_iterations=3, min_ms=1)


class RawUpload:
    """UploadArtifact driven message by message, as a hostile or slow client would (no AgentClient rules)."""

    def __init__(self, agent: LocalAgent) -> None:
        self._channel = grpc.insecure_channel(agent.address)
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {agent.token}"),)

    def send(self, messages: Iterator[pb.UploadArtifactRequest]) -> pb.UploadArtifactResponse:
        response: pb.UploadArtifactResponse = self._stub.UploadArtifact(messages, metadata=self._metadata, timeout=60)
        return response

    def close(self) -> None:
        self._channel.close()


def header(digest: str, size: int, offset: int = 0) -> pb.UploadArtifactRequest:
    return pb.UploadArtifactRequest(header=pb.ArtifactHeader(sha256=digest, size_bytes=size, offset_bytes=offset))


def chunks(data: bytes, size: int) -> Iterator[pb.UploadArtifactRequest]:
    for i in range(0, len(data), size):
        yield pb.UploadArtifactRequest(chunk=data[i : i + size])


# ---------------------------------------------------------------------------------------------- F1


@pytest.fixture(scope="module")
def shas(agent: LocalAgent, models: dict[str, Path]) -> dict[str, str]:
    with agent.client() as client:
        return {name: client.upload(models[name]).sha256 for name in ("mlp", "garbage", "null")}


@pytest.mark.parametrize(
    ("companions", "expected"),
    [
        (["model.onnx"], "companion file name 'model.onnx' is reserved for the model itself"),
        (["MODEL.onnx"], "companion file name 'MODEL.onnx' is reserved for the model itself"),
        (["w.bin", "w.bin"], "companion file name 'w.bin' is declared twice"),
        (["w.bin", "W.bin"], "file names 'w.bin' and 'W.bin' are one file on a case-insensitive filesystem"),
    ],
)
def test_companion_that_would_overwrite_the_model_is_refused(
    agent: LocalAgent, shas: dict[str, str], companions: list[str], expected: str
) -> None:
    """F1. Before: the companion `model.onnx` was accepted, its link failed with EEXIST and the fallback copied
    the garbage bytes through the model's hard link into blobs/<mlp sha>; every later job on that digest ran
    garbage while its provenance named the MLP. Now the job is INVALID_ARGUMENT and the blob is untouched."""
    job = make_job(shas["mlp"])
    for name in companions:
        job.model.companions.add(name=name, sha256=shas["garbage"])
    with pytest.raises(grpc.RpcError) as err:
        run(agent, job)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.value.details() or "")
    assert sha256_file(blob(agent, shas["mlp"])) == shas["mlp"]
    healthy = run(agent, make_job(shas["mlp"], min_iterations=5, min_ms=10))
    assert healthy.status == pb.BENCHMARK_STATUS_SUCCEEDED, healthy.message
    assert healthy.provenance.model_sha256 == shas["mlp"]


def test_blob_changed_through_a_hard_link_is_caught_and_a_new_upload_repairs_it(
    agent: LocalAgent, shas: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    """F1. A process with the agent's uid links a verified blob elsewhere, chmods the link, writes other bytes
    of the same length through it and sets the mtime back. Before: the next job ran those bytes and its
    provenance named the original digest. Now that job fails, saying the artifact changed and to upload it
    again, names no model in its provenance, the blob is gone, and a fresh upload makes the digest work again."""
    digest = shas["null"]
    job = null_job()
    job.model.sha256 = digest
    first = run(agent, job)
    assert first.status == pb.BENCHMARK_STATUS_SUCCEEDED, first.message
    assert first.provenance.model_sha256 == digest

    stored = blob(agent, digest)
    before = stored.stat()
    original = stored.read_bytes()
    changed = original.replace(b'"num_classes": 10', b'"num_classes": 12')
    assert changed != original and len(changed) == len(original)
    alias = tmp_path / "alias"
    os.link(stored, alias)
    time.sleep(0.05)  # coarse timestamps: let the clock tick so the write gets a ctime of its own
    alias.chmod(0o644)
    alias.write_bytes(changed)
    os.utime(alias, ns=(before.st_atime_ns, before.st_mtime_ns))
    alias.unlink()
    after = stored.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)

    job.job_id += "-after-change"
    second = run(agent, job)
    assert second.status == pb.BENCHMARK_STATUS_FAILED
    assert f"artifact {digest} changed on disk since it was verified" in second.message
    assert "upload it again" in second.message
    assert second.provenance.model_sha256 == ""  # it names no bytes: none ran
    assert not second.HasField("timing") or not second.timing.latencies_ns
    with agent.client() as client:
        assert client.find_missing([digest]) == [digest]
        report = client.upload(models["null"])
    assert not report.already_present and report.sent_bytes == len(original)
    job.job_id += "-repaired"
    third = run(agent, job)
    assert third.status == pb.BENCHMARK_STATUS_SUCCEEDED, third.message
    assert third.provenance.model_sha256 == digest
    assert sha256_file(stored) == digest


def test_blobs_are_stored_read_only(agent: LocalAgent, shas: dict[str, str]) -> None:
    for digest in shas.values():
        assert blob(agent, digest).stat().st_mode & 0o777 == 0o444


# ---------------------------------------------------------------------------------------------- F9


def test_chunk_over_one_mib_is_refused_with_the_limit(agent: LocalAgent) -> None:
    """F9. Before: any chunk the transport let through (64 MiB) was accepted and queued for hashing, so a few
    uploads could take the agent to gigabytes. Now one byte over 1 MiB is INVALID_ARGUMENT naming the limit."""
    data = os.urandom(4 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    raw = RawUpload(agent)
    try:
        with pytest.raises(grpc.RpcError) as err:
            raw.send(iter([header(digest, len(data)), *chunks(data[: MAX_CHUNK_BYTES + 1], MAX_CHUNK_BYTES + 1)]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"over the limit of {MAX_CHUNK_BYTES} bytes (1 MiB)" in (err.value.details() or "")
        # 2 MiB: refused by the transport's request limit, or by the store if that limit is set higher.
        with pytest.raises(grpc.RpcError) as err:
            raw.send(iter([header(digest, len(data)), *chunks(data[: 2 * MiB], 2 * MiB)]))
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        details = err.value.details() or ""
        assert "1 MiB" in details or "larger than max" in details, details
        # Nothing of the refused chunks was kept; the protocol's own chunk size goes through.
        with agent.client() as client:
            assert client.upload_status(digest).committed_offset_bytes == 0
        response = raw.send(iter([header(digest, len(data)), *chunks(data, MAX_CHUNK_BYTES)]))
        assert response.received_bytes == len(data)
    finally:
        raw.close()


def test_agent_memory_stays_bounded_under_concurrent_uploads(
    agent_factory: Callable[..., LocalAgent], tmp_path: Path
) -> None:
    """F9. 8 clients stream 2 MiB chunks (refused) while 8 others upload 24 MiB each in 1 MiB chunks, all at
    once. Before, 8 uploads of 64 MiB chunks took the agent from 52 MiB to 2 GiB RSS. Now an upload holds at
    most MAX_CHUNK_BYTES x QUEUED_CHUNKS waiting to be hashed plus gRPC's buffers: measured here +100 to
    +190 MiB for the 8 honest uploads together (the refused ones add ~6 MiB), so the bound is 32 MiB each.
    Accepting the 2 MiB chunks (16 x 32 MiB streams) would exceed it, as would chunks of tens of MiB."""
    agent = agent_factory("--max-streams-per-client", "16")
    files = [random_file(tmp_path / f"f{i}.bin", 24 * MiB) for i in range(8)]
    with agent.client() as client:  # warm up: the first upload loads what the upload path needs
        client.upload(random_file(tmp_path / "warm.bin", 2 * MiB))
    proc = psutil.Process(agent.process.pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    def hostile(i: int) -> None:
        data = os.urandom(2 * MiB) * 16
        raw = RawUpload(agent)
        try:
            raw.send(iter([header(hashlib.sha256(data).hexdigest(), len(data)), *chunks(data, 2 * MiB)]))
        except grpc.RpcError as exc:
            refusals.append(exc.code())
        finally:
            raw.close()

    def honest(path: Path) -> None:
        with agent.client() as client:
            client.upload(path, chunk_bytes=MAX_CHUNK_BYTES)

    refusals: list[grpc.StatusCode] = []
    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=honest, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    sampler.join()
    assert len(refusals) == 8
    with agent.client() as client:
        assert client.find_missing([sha256_file(f) for f in files]) == []
    growth = peak[0] - baseline
    print(f"agent RSS {baseline / MiB:.0f} MiB before, peak {peak[0] / MiB:.0f} MiB (+{growth / MiB:.0f} MiB)")
    assert growth < 8 * 32 * MiB


# ---------------------------------------------------------------------------------------------- F8


@pytest.fixture(scope="module")
def small_cache(agent_factory: Callable[..., LocalAgent]) -> LocalAgent:
    return agent_factory("--max-cache-bytes", str(6 * MiB), "--max-artifact-bytes", str(4 * MiB))


def on_disk(agent: LocalAgent) -> int:
    root = agent.workdir / "artifacts"
    return sum(p.stat().st_size for d in ("blobs", "partial") for p in (root / d).iterdir())


def abandon(agent: LocalAgent, path: Path, sent: int) -> str:
    """Send the first `sent` bytes of `path`, then end the stream: the agent keeps exactly those bytes as a
    resumable part file (the upload fails with FAILED_PRECONDITION, "resume from offset")."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    raw = RawUpload(agent)
    try:
        with pytest.raises(grpc.RpcError) as err:
            raw.send(iter([header(digest, len(data)), *chunks(data[:sent], MAX_CHUNK_BYTES)]))
    finally:
        raw.close()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with agent.client() as client:
        assert client.upload_status(digest).committed_offset_bytes == sent
    return digest


def test_abandoned_part_files_count_against_the_cache_cap(small_cache: LocalAgent, tmp_path: Path) -> None:
    """F8. A 3 MiB part file left by a broken upload plus a new 3.5 MiB artifact exceed the 6 MiB cap: the part
    file is evicted to make room. Before, part files were not counted, so the store held 6.5 MiB (and any
    number of abandoned uploads could fill the disk) until a restart a day later."""
    abandoned = abandon(small_cache, random_file(tmp_path / "a.bin", 4 * MiB), 3 * MiB)
    assert part(small_cache, abandoned).exists()
    fresh = random_file(tmp_path / "b.bin", 3 * MiB + MiB // 2)
    with small_cache.client() as client:
        client.upload(fresh)
        assert client.find_missing([sha256_file(fresh)]) == []
        assert client.upload_status(abandoned).committed_offset_bytes == 0
    assert not part(small_cache, abandoned).exists()
    assert on_disk(small_cache) <= 6 * MiB


def test_stale_part_files_are_dropped_without_a_restart(small_cache: LocalAgent, tmp_path: Path) -> None:
    """F8. A part file nobody wrote to for longer than the store's stale age is dropped the next time any
    upload begins; before, only a restart removed it."""
    stale = abandon(small_cache, random_file(tmp_path / "s.bin", 2 * MiB), MiB)
    old = time.time() - DEFAULT_STALE_PARTIAL_AGE_S - 60
    os.utime(part(small_cache, stale), (old, old))
    with small_cache.client() as client:
        client.upload(random_file(tmp_path / "tiny.bin", 1000))
        assert client.upload_status(stale).committed_offset_bytes == 0
    assert not part(small_cache, stale).exists()


# ---------------------------------------------------------------------------------------------- F4

DISK_BYTES = 160 * MiB
UPLOAD_BYTES = 56 * MiB


@pytest.fixture
def agent_on_small_disk(tmp_path: Path) -> Iterator[LocalAgent]:
    """An agent whose work directory is a fresh 160 MiB tmpfs (mounting needs root or CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)]
    try:
        mounted = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs for a small disk: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a small disk (needs root): {mounted.stderr.strip()[:200]}")
    agent = None
    try:
        agent = start_agent(disk / "agent")
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)


def test_concurrent_uploads_cannot_overcommit_the_disk(agent_on_small_disk: LocalAgent, tmp_path: Path) -> None:
    """F4. Two 56 MiB uploads on a 160 MiB disk with 64 MiB of headroom: each fits alone, not together. Before,
    both passed the free-space check at the start and filled the disk together; now the second is refused
    (RESOURCE_EXHAUSTED, naming the space promised to the upload in progress) and the first completes."""
    agent = agent_on_small_disk
    free = psutil.disk_usage(str(agent.workdir)).free
    assert UPLOAD_BYTES + DISK_HEADROOM_BYTES <= free < 2 * UPLOAD_BYTES + DISK_HEADROOM_BYTES
    first, second = os.urandom(UPLOAD_BYTES), os.urandom(UPLOAD_BYTES)
    first_sha, second_sha = hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()
    release = threading.Event()
    outcome: dict[str, object] = {}

    def held_open() -> Iterator[pb.UploadArtifactRequest]:
        yield header(first_sha, UPLOAD_BYTES)
        parts = chunks(first, MAX_CHUNK_BYTES)
        yield next(parts)
        release.wait(60)
        yield from parts

    def upload_first() -> None:
        raw = RawUpload(agent)
        try:
            outcome["first"] = raw.send(held_open())
        except grpc.RpcError as exc:
            outcome["first"] = exc
        finally:
            raw.close()

    thread = threading.Thread(target=upload_first)
    thread.start()
    try:
        wait_for(lambda: part(agent, first_sha).exists(), timeout=20)
        raw = RawUpload(agent)
        try:
            with pytest.raises(grpc.RpcError) as err:
                raw.send(iter([header(second_sha, UPLOAD_BYTES), *chunks(second, MAX_CHUNK_BYTES)]))
        finally:
            raw.close()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "promised to uploads in progress" in (err.value.details() or "")
        assert "--workdir" in (err.value.details() or "")
    finally:
        release.set()
        thread.join(60)
    response = outcome["first"]
    assert isinstance(response, pb.UploadArtifactResponse), response
    assert response.received_bytes == UPLOAD_BYTES
    assert sha256_file(blob(agent, first_sha)) == first_sha
    assert not part(agent, second_sha).exists() and not blob(agent, second_sha).exists()
