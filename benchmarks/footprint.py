"""The idle agent's footprint: resident memory and start-up time.

Each of --starts agents is started as `python -m agent.cli serve` on a free loopback port, with a token
file, exactly as `coordinator.dispatch.local.start_agent` starts it (but on a port chosen here, so that
this script can poll it before it says where it listens):

* start-to-SERVING: from just before Popen to the first `grpc.health.v1.Health/Check` answering SERVING
  (polled every --poll-ms, each time over a fresh channel, so that gRPC's reconnect back-off does not pad
  the figure). Also the time to the agent's "listening on" stdout line. Target <= 2 s (median).
* idle RSS of the agent process (psutil) right after SERVING, and after one GetDeviceInfo call (which
  waits for the runtime probe; the probe imports runtime SDKs in a child process, so they should not land
  in the agent). Target <= 60 MB (MB = 10^6 bytes; MiB shown too), median of the after-GetDeviceInfo figure.
* the spare job process: the agent keeps one job process (`python -m agent.child`, its child) started in
  advance (`--prestart`, the default), which has imported the harness and numpy and waits for its job.
  Its RSS, USS and PSS are measured once it is ready (sleeping, its CPU time still), after GetDeviceInfo,
  and the agent + spare totals are shown: what an idle agent costs in all. RSS double-counts the pages the
  two share (the interpreter, libc); USS counts only each one's own pages; PSS splits shared pages among
  their users. The 60 MB target stays on the agent process alone.

Run: .venv/bin/python benchmarks/footprint.py [--quick]
"""

from __future__ import annotations

import argparse
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
from _common import (
    MiB,
    Row,
    job_processes,
    median,
    print_header,
    print_table,
    print_verdict,
    temp_dir,
    wait_spare_job_processes,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.dispatch.client import AgentClient, Credentials
from coordinator.dispatch.local import READY_PREFIX

RSS_TARGET_BYTES = 60e6
SERVING_TARGET_S = 2.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_start(workdir: Path, poll_s: float) -> dict[str, float]:
    workdir.mkdir(parents=True)
    token = secrets.token_urlsafe(32)
    token_file = workdir / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    port = free_port()
    address = f"127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "agent.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workdir",
        str(workdir),
        "--token-file",
        str(token_file),
    ]
    ready_at: list[float] = []
    with (workdir / "agent.stderr.log").open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    assert proc.stdout is not None
    stdout = proc.stdout

    def read_ready() -> None:
        for line in stdout:
            if line.startswith(READY_PREFIX):
                ready_at.append(time.perf_counter())

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    try:
        attempts = 0
        while True:
            attempts += 1
            # A fresh channel per attempt: a channel that failed to connect waits out its reconnect back-off
            # (1 s by default), which would pad the figure.
            with grpc.insecure_channel(address) as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=0.5
                    )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        serving = time.perf_counter() - t0
                        break
                except grpc.RpcError:
                    pass
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}: {(workdir / 'agent.stderr.log').read_text()}")
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("agent not SERVING after 60 s")
            time.sleep(poll_s)
        agent = psutil.Process(proc.pid)
        rss_start = agent.memory_info().rss
        with AgentClient(address, Credentials(token=token)) as client:
            t1 = time.perf_counter()
            device = client.device_info()
            info_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            client.device_info()
            info2_s = time.perf_counter() - t1
        full = agent.memory_full_info()
        threads = agent.num_threads()
        ready = wait_spare_job_processes([proc.pid], timeout_s=60.0)
        spare_ready_s = time.perf_counter() - t0
        spares = job_processes(proc.pid)
        if ready != 1 or len(spares) != 1:
            raise RuntimeError(f"expected one spare job process ready, found {len(spares)} ({ready} ready)")
        spare = spares[0].memory_full_info()
        return {
            "serving_s": serving,
            "ready_line_s": (ready_at[0] - t0) if ready_at else float("nan"),
            "attempts": attempts,
            "rss_start": rss_start,
            "rss_after_info": full.rss,
            "uss_after_info": full.uss,
            "pss_after_info": getattr(full, "pss", 0),
            "threads": threads,
            "spare_ready_s": spare_ready_s,
            "spare_rss": spare.rss,
            "spare_uss": spare.uss,
            "spare_pss": getattr(spare, "pss", 0),
            "total_rss": full.rss + spare.rss,
            "total_uss": full.uss + spare.uss,
            "total_pss": getattr(full, "pss", 0) + getattr(spare, "pss", 0),
            "info_s": info_s,
            "info2_s": info2_s,
            "runtimes": len(device.runtimes),
        }
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(5)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB ({n / MiB:.1f} MiB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="agent starts (medians reported)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="health-check polling interval")
    parser.add_argument("--quick", action="store_true", help="short run: 2 starts")
    args = parser.parse_args()
    if args.quick:
        args.starts = 2
    print_header("agent footprint", {"starts": args.starts, "poll_ms": args.poll_ms, "quick": args.quick})
    runs = []
    print(
        f"{'start':>5}  {'SERVING':>8}  {'ready line':>10}  {'polls':>5}  {'RSS at SERVING':>14}  "
        f"{'RSS after info':>14}  {'USS':>8}  {'threads':>7}  {'1st GetDeviceInfo':>17}  {'2nd':>7}  "
        f"{'spare ready':>11}  {'spare RSS':>10}  {'spare USS':>10}"
    )
    with temp_dir("footprint") as work:
        for i in range(args.starts):
            r = one_start(work / f"agent{i}", args.poll_ms / 1000)
            runs.append(r)
            print(
                f"{i + 1:>5}  {r['serving_s']:>7.3f}s  {r['ready_line_s']:>9.3f}s  {r['attempts']:>5.0f}  "
                f"{r['rss_start'] / MiB:>10.1f} MiB  {r['rss_after_info'] / MiB:>10.1f} MiB  "
                f"{r['uss_after_info'] / MiB:>4.1f} MiB  {r['threads']:>7.0f}  {r['info_s'] * 1000:>14.0f} ms  "
                f"{r['info2_s'] * 1000:>4.0f} ms  {r['spare_ready_s']:>10.2f}s  {r['spare_rss'] / MiB:>6.1f} MiB  "
                f"{r['spare_uss'] / MiB:>6.1f} MiB"
            )
    print()

    def med(key: str) -> float:
        return median([r[key] for r in runs])

    serving = med("serving_s")
    rss = med("rss_after_info")
    rows = [
        Row(
            f"start-to-SERVING (median of {len(runs)})",
            f"{serving:.3f} s",
            f"<= {SERVING_TARGET_S:.0f} s",
            serving <= SERVING_TARGET_S,
        ),
        Row(
            "start-to-SERVING min..max",
            f"{min(r['serving_s'] for r in runs):.3f} .. {max(r['serving_s'] for r in runs):.3f} s",
        ),
        Row("start-to-ready-line (stdout) (median)", f"{med('ready_line_s'):.3f} s"),
        Row("idle RSS at SERVING (median)", mb(med("rss_start"))),
        Row(
            "idle RSS after one GetDeviceInfo (median)",
            mb(rss),
            f"<= {RSS_TARGET_BYTES / 1e6:.0f} MB",
            rss <= RSS_TARGET_BYTES,
        ),
        Row("  of which USS / PSS (median)", f"{mb(med('uss_after_info'))} / {mb(med('pss_after_info'))}"),
        Row("agent threads (median)", f"{med('threads'):.0f}"),
        Row("spare job process ready, from start (median)", f"{med('spare_ready_s'):.2f} s"),
        Row("spare job process RSS (median)", mb(med("spare_rss"))),
        Row("  of which USS / PSS (median)", f"{mb(med('spare_uss'))} / {mb(med('spare_pss'))}"),
        Row("idle agent + spare: RSS sum (median; counts shared pages twice)", mb(med("total_rss"))),
        Row("idle agent + spare: USS sum / PSS sum (median)", f"{mb(med('total_uss'))} / {mb(med('total_pss'))}"),
        Row("first GetDeviceInfo (waits for the runtime probe)", f"{med('info_s') * 1000:.0f} ms"),
        Row("second GetDeviceInfo", f"{med('info2_s') * 1000:.0f} ms"),
    ]
    print_table("footprint", rows)
    print_verdict(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
