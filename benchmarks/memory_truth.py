"""Is the agent's reported peak RSS the truth? Compared with an independent measurement of the same work.

For each model the agent runs a job (generated inputs, batch 1, intra_op_threads=1, a fixed number of
warm-up and timed iterations, memory_pass on) and reports MemoryReport.peak_rss_bytes. The same work is
then done by a standalone script (written to a temp file) that imports only numpy and onnxruntime, creates
the same session (same thread and graph-optimisation settings), and runs the same number of inferences
(1 first + warm-up + timed) on an input of the same shape; its peak RSS is measured from outside by
`/usr/bin/time -v` ("Maximum resident set size"). Where GNU time is missing, the script is run under a
small Python wrapper that reads `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` (the same kernel counter;
the wrapper, not this process, spawns it, so this process's own size does not leak into the figure). The
script also prints its own VmHWM (/proc/self/status) as a third opinion. Target: agent / standalone within
±10 %, median of --repeats interleaved pairs.

Models: build_big_initializer (--big-mb, 200 MiB) and DEFAULT_BENCH_CNN; plus, as a diagnostic, the
null runtime (a tiny process, where the agent server's own size matters most; its standalone script
imports numpy and the null backend).

Run: .venv/bin/python benchmarks/memory_truth.py [--quick] [--method auto|time|rusage]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _common import (
    MiB,
    Row,
    local_agent,
    make_job,
    median,
    null_model,
    print_header,
    print_table,
    print_verdict,
    proc_status_kib,
    run_job,
    temp_dir,
)

from coordinator.models.synthetic import DEFAULT_BENCH_CNN, build_big_initializer
from protos.edgebench.agent.v1 import agent_pb2 as pb

TOLERANCE = 0.10
SEED = 0

STANDALONE = '''\
"""Standalone equivalent of one agent job: same session settings, same number of runs, same input shape."""
import sys
import time

import numpy as np

runtime, model, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if runtime == "onnxruntime":
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    info = session.get_inputs()[0]
    shape = [1 if i == 0 else d for i, d in enumerate(info.shape)]
    feeds = {info.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(runs):
        session.run(None, feeds)
else:
    from pathlib import Path

    from agent.runtimes.null import BACKEND
    from agent.types import RuntimeConfig

    t0 = time.perf_counter()
    session = BACKEND.load(Path(model), RuntimeConfig("null", options=(("latency_ns", "0"),)))
    load_s = time.perf_counter() - t0
    info = session.inputs[0]
    feeds = {info.name: np.random.default_rng(0).standard_normal(info.shape).astype(np.float32)}
    for _ in range(runs):
        session.run(feeds)
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), load_s)
'''

WRAPPER = """\
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
hwm, load_s = out.split()
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, hwm, load_s)
"""


@dataclass(frozen=True)
class Case:
    name: str
    runtime: str
    path: Path
    model_format: int
    warmup: int
    iterations: int


def standalone_peak(method: str, script: Path, case: Case, threads: int) -> tuple[int, int, float]:
    """(peak RSS by the outside method, the script's own VmHWM) in bytes, and its load time in seconds."""
    runs = 1 + case.warmup + case.iterations
    cmd = [sys.executable, str(script), case.runtime, str(case.path), str(threads), str(runs)]
    if method == "time":
        done = subprocess.run([shutil.which("time") or "time", "-v", *cmd], check=True, capture_output=True, text=True)
        line = next(x for x in done.stderr.splitlines() if "Maximum resident set size" in x)
        hwm, load_s = done.stdout.split()
        return int(line.rsplit(":", 1)[1]) * 1024, int(hwm) * 1024, float(load_s)
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], check=True, capture_output=True, text=True)
    maxrss, hwm, load_s = done.stdout.split()
    return int(maxrss) * 1024, int(hwm) * 1024, float(load_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mb", type=int, default=200, help="size of the big initializer in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved agent/standalone pairs per model")
    parser.add_argument("--threads", type=int, default=1, help="intra_op_threads on both sides")
    parser.add_argument(
        "--method",
        choices=("auto", "time", "rusage"),
        default="auto",
        help="standalone peak: GNU time -v, or getrusage(RUSAGE_CHILDREN) in a wrapper",
    )
    parser.add_argument("--quick", action="store_true", help="short run: 50 MiB initializer, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.big_mb, args.repeats = 50, 1
    gnu_time = shutil.which("time")
    if args.method == "auto":
        args.method = "time" if gnu_time else "rusage"
    method_text = (
        f"GNU time -v ({gnu_time})"
        if args.method == "time"
        else "getrusage(RUSAGE_CHILDREN).ru_maxrss in a wrapper process"
        + ("" if gnu_time else " (GNU time is not installed)")
    )
    print_header(
        "memory truth: agent peak RSS vs an independent measurement",
        {"big_mb": args.big_mb, "repeats": args.repeats, "intra_op_threads": args.threads, "quick": args.quick},
    )
    print(f"standalone peak measured by: {method_text}")
    rows: list[Row] = []
    notes: list[str] = []
    with temp_dir("memory") as work:
        script = work / "standalone.py"
        script.write_text(STANDALONE)
        cases = [
            Case(
                f"big initializer {args.big_mb} MiB",
                "onnxruntime",
                build_big_initializer(work / "big.onnx", megabytes=args.big_mb),
                pb.MODEL_FORMAT_ONNX,
                5,
                20,
            ),
            Case(
                "DEFAULT_BENCH_CNN",
                "onnxruntime",
                DEFAULT_BENCH_CNN.build(work / "cnn.onnx"),
                pb.MODEL_FORMAT_ONNX,
                20,
                200,
            ),
            Case("null runtime (diagnostic)", "null", null_model(work / "null.json"), pb.MODEL_FORMAT_NULL, 20, 200),
        ]
        with local_agent(work / "agent") as agent, agent.client() as client:
            digests = {c.name: client.upload(c.path).sha256 for c in cases}
            print(
                f"\n{'model':<28} {'rep':>3}  {'agent peak':>10}  {'standalone':>10}  {'ratio':>6}  "
                f"{'script VmHWM':>12}  {'agent after load':>16}  {'agent server VmHWM':>18}  {'load agent/alone':>16}"
            )
            for case in cases:
                ratios: list[float] = []
                agent_peaks: list[int] = []
                alone_peaks: list[int] = []
                hwms: list[int] = []
                loads: list[tuple[float, float]] = []
                server_hwm = 0
                for rep in range(args.repeats):
                    server_hwm = proc_status_kib(agent.process.pid, "VmHWM") * 1024
                    job = make_job(
                        digests[case.name],
                        runtime=case.runtime,
                        model_format=case.model_format,
                        intra_op_threads=args.threads,
                        seed=SEED,
                        warmup_iterations=case.warmup,
                        min_iterations=case.iterations,
                        max_iterations=case.iterations,
                        min_s=0.0,
                        max_s=600.0,
                        memory_pass=True,
                        options={"latency_ns": "0"} if case.runtime == "null" else None,
                    )
                    result = run_job(client, job)
                    memory = result.memory
                    alone, hwm, alone_load = standalone_peak(args.method, script, case, args.threads)
                    loads.append((result.timing.load_ns / 1e9, alone_load))
                    agent_peaks.append(memory.peak_rss_bytes)
                    alone_peaks.append(alone)
                    hwms.append(hwm)
                    ratios.append(memory.peak_rss_bytes / alone)
                    print(
                        f"{case.name:<28} {rep + 1:>3}  {memory.peak_rss_bytes / MiB:>6.1f} MiB  "
                        f"{alone / MiB:>6.1f} MiB  {ratios[-1]:>6.3f}  {hwm / MiB:>8.1f} MiB  "
                        f"{memory.rss_after_load_bytes / MiB:>12.1f} MiB  {server_hwm / MiB:>14.1f} MiB  "
                        f"{loads[-1][0] * 1000:>7.0f}/{loads[-1][1] * 1000:.0f} ms"
                    )
                ratio = median(ratios)
                ok = abs(ratio - 1) <= TOLERANCE
                if not ok and abs(median(agent_peaks) - server_hwm) < MiB:
                    notes.append(
                        f"{case.name}: the agent's peak equals the agent server's own VmHWM, not the job's: "
                        "getrusage(RUSAGE_SELF).ru_maxrss in the job process keeps the high-water mark of the "
                        "process it was forked from (Linux carries it across exec); /proc/self/status VmHWM "
                        "does not"
                    )
                rows += [
                    Row(
                        f"{case.name}: agent / standalone peak RSS",
                        f"{ratio:.3f}",
                        f"{1 - TOLERANCE:.2f} .. {1 + TOLERANCE:.2f}",
                        ok,
                    ),
                    Row(
                        f"{case.name}: agent peak / standalone peak / script VmHWM",
                        f"{median(agent_peaks) / MiB:.1f} / {median(alone_peaks) / MiB:.1f} / "
                        f"{median(hwms) / MiB:.1f} MiB",
                    ),
                    Row(f"{case.name}: agent server's own VmHWM at job time", f"{server_hwm / MiB:.1f} MiB"),
                    Row(
                        f"{case.name}: load time, agent load_ns / standalone",
                        f"{median([a for a, _ in loads]) * 1000:.0f} ms / "
                        f"{median([b for _, b in loads]) * 1000:.0f} ms",
                    ),
                ]
    print()
    print_table("memory truth", rows)
    for note in notes:
        print(f"note: {note}")
    print_verdict(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
