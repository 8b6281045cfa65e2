"""Artifact upload to a local agent over loopback: throughput, dedup and resume.

* Full upload: a random file (fresh content, hence a fresh digest, each repeat) uploaded with
  `AgentClient.upload(path)`. The wall time runs from the call to its return, so it includes the client's
  sha256 of the file, FindMissingArtifacts/GetUploadStatus, the transfer in 1 MiB chunks, the agent's
  hashing, writing, fsync and publishing. The file was just written, so it is read from the page cache.
  Median of --repeats; target >= 300 MB/s (MB = 10^6 bytes).
* Repeat upload of a file the agent has: must send 0 bytes.
* Resume: a fresh file whose upload is broken after ~50 % (`stop_after_bytes`, which raises), then uploaded
  again: the agent's committed offset (resumed_from) and the bytes each attempt sent.

Run: .venv/bin/python benchmarks/upload.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
from _common import MiB, Row, local_agent, median, print_header, print_table, print_verdict, temp_dir

from coordinator.dispatch.client import CHUNK_BYTES, AgentClient, sha256_file

TARGET_MB_S = 300.0
RESUME_RETRIES = 20


def random_file(path: Path, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        left = size
        while left:
            block = min(left, 16 * MiB)
            f.write(rng.bytes(block))
            left -= block
    return path


def local_floor(src: Path, dst: Path) -> tuple[float, float, float]:
    """The same work without gRPC, in one process, in seconds per step: sha256 of the file (the client's
    pass); read + sha256 + write in 1 MiB chunks (the agent's); fsync. What this disk and CPU allow."""
    t0 = time.perf_counter()
    sha256_file(src)
    t1 = time.perf_counter()
    h = hashlib.sha256()
    with src.open("rb") as f, dst.open("wb") as out:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        t2 = time.perf_counter()
        os.fsync(out.fileno())
    t3 = time.perf_counter()
    dst.unlink()
    return t1 - t0, t2 - t1, t3 - t2


def mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def resume(client: AgentClient, path: Path, size: int) -> list[Row]:
    digest = sha256_file(path)
    stop_after = size // 2
    first_error = ""
    try:
        client.upload(path, digest, stop_after_bytes=stop_after)
    except (ConnectionAbortedError, grpc.RpcError) as exc:
        first_error = type(exc).__name__
    # The first attempt's generator raised once `sent` reached stop_after, after that many whole chunks.
    first_sent = -(-stop_after // CHUNK_BYTES) * CHUNK_BYTES
    # The agent notices the broken stream asynchronously; a resume that comes too early is refused
    # (FAILED_PRECONDITION: upload in progress, or the committed offset moved). Count such refusals.
    refusals: list[str] = []
    t0 = time.perf_counter()
    for _ in range(RESUME_RETRIES):
        try:
            report = client.upload(path, digest)
            break
        except grpc.RpcError as exc:
            refusals.append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.05)
    else:
        raise RuntimeError(f"resume failed {RESUME_RETRIES} times: {refusals[-1]}")
    resume_s = time.perf_counter() - t0
    complete = not client.find_missing([digest])
    print(
        f"resume: first attempt raised {first_error or 'nothing'} after {first_sent} bytes; "
        f"{len(refusals)} early resume(s) refused" + (f" (first: {refusals[0]})" if refusals else "")
    )
    total = first_sent + report.sent_bytes
    return [
        Row("resume: first attempt broken at", f"{first_sent / MiB:.0f} MiB of {size / MiB:.0f} MiB"),
        Row(
            "resume: resumed_from (agent's committed offset)",
            f"{report.resumed_from} B ({report.resumed_from / size:.1%})",
            "> 0",
            report.resumed_from > 0,
        ),
        Row(
            "resume: bytes sent by the resumed call",
            f"{report.sent_bytes} B",
            f"= size - resumed_from ({size - report.resumed_from} B)",
            report.sent_bytes == size - report.resumed_from,
        ),
        Row(
            "resume: total bytes sent (both attempts)",
            f"{total} B = {total / size:.3f} x size ({total - size} B re-sent: in flight when the stream broke)",
        ),
        Row("resume: early resumes refused before success", str(len(refusals))),
        Row("resume: artifact complete afterwards", str(complete), "True", complete),
        Row("resume: resumed call wall time", f"{resume_s:.2f} s"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=200, help="file size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="full uploads with fresh digests (median reported)")
    parser.add_argument("--quick", action="store_true", help="short run: 50 MiB, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.repeats = 50, 1
    size = args.size_mib * MiB
    print_header(
        "artifact upload over loopback",
        {
            "size": f"{args.size_mib} MiB",
            "repeats": args.repeats,
            "chunk": f"{CHUNK_BYTES // 1024} KiB",
            "quick": args.quick,
        },
    )
    rows: list[Row] = []
    with temp_dir("upload") as work, local_agent(work / "agent") as agent, agent.client() as client:
        walls: list[float] = []
        hash_s: list[float] = []
        floor_s: list[float] = []
        floor_parts: list[tuple[float, float, float]] = []
        agent_cpu: list[tuple[float, float]] = []
        agent_proc = psutil.Process(agent.process.pid)
        print(
            f"{'repeat':>6}  {'wall':>6}  {'MB/s':>5}  {'agent CPU user+sys':>18}  {'client sha256':>13}  "
            f"{'local floor':>11}"
        )
        path = work / "artifact.bin"
        for r in range(args.repeats):
            random_file(path, size, seed=r)
            cpu0 = agent_proc.cpu_times()
            t0 = time.perf_counter()
            report = client.upload(path)
            wall = time.perf_counter() - t0
            cpu1 = agent_proc.cpu_times()
            assert report.sent_bytes == size and not report.already_present, report
            t0 = time.perf_counter()
            sha256_file(path)
            hash_s.append(time.perf_counter() - t0)
            floor_parts.append(local_floor(path, work / "floor.bin"))
            floor_s.append(sum(floor_parts[-1]))
            walls.append(wall)
            agent_cpu.append((cpu1.user - cpu0.user, cpu1.system - cpu0.system))
            print(
                f"{r + 1:>6}  {wall:>5.2f}s  {mb_s(size, wall):>5.0f}  "
                f"{agent_cpu[-1][0]:>7.2f}s+{agent_cpu[-1][1]:.2f}s  "
                f"{mb_s(size, hash_s[-1]):>8.0f} MB/s  {mb_s(size, floor_s[-1]):>6.0f} MB/s"
            )
        # The last file is on the agent: upload it again.
        t0 = time.perf_counter()
        again = client.upload(path)
        again_s = time.perf_counter() - t0
        print()
        wall = median(walls)
        rate = mb_s(size, wall)
        rows += [
            Row(f"full upload {args.size_mib} MiB: wall time (median of {len(walls)})", f"{wall:.2f} s"),
            Row(
                "full upload throughput (median)",
                f"{rate:.0f} MB/s ({rate * 1e6 / MiB:.0f} MiB/s)",
                f">= {TARGET_MB_S:.0f} MB/s",
                rate >= TARGET_MB_S,
            ),
            Row(
                "full upload throughput min..max", f"{mb_s(size, max(walls)):.0f} .. {mb_s(size, min(walls)):.0f} MB/s"
            ),
            Row(
                "ref: client sha256 alone (median)",
                f"{mb_s(size, median(hash_s)):.0f} MB/s ({median(hash_s) / wall:.0%} of the upload's wall time)",
            ),
            Row(
                "ref: local floor (client sha256, then read+sha256+write+fsync; no gRPC)",
                f"{mb_s(size, median(floor_s)):.0f} MB/s ({median(floor_s):.2f} s = sha256 "
                f"{median([p[0] for p in floor_parts]):.2f} s + read/sha256/write "
                f"{median([p[1] for p in floor_parts]):.2f} s + fsync {median([p[2] for p in floor_parts]):.2f} s)",
            ),
            Row(
                "ref: agent process CPU per upload (median user + sys)",
                f"{median([u for u, _ in agent_cpu]):.2f} s + {median([k for _, k in agent_cpu]):.2f} s",
            ),
            Row("repeat upload: sent_bytes", str(again.sent_bytes), "0", again.sent_bytes == 0),
            Row("repeat upload: already_present", str(again.already_present), "True", again.already_present),
            Row("repeat upload: wall time (client re-hashes the file)", f"{again_s:.2f} s"),
        ]
        path.unlink()
        rows += resume(client, random_file(work / "resume.bin", size, seed=1000), size)
    print_table("upload", rows)
    print_verdict(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
