"""Does edgebench's LiteRT latency agree with the interpreter driven in a bare loop?

Same model: the built-in digits CNN (trained teacher, `coordinator.models.builtin`) converted to a float32
`.tflite` with litert-torch (NCHW I/O, batch 1). Same settings on both sides: `ai_edge_litert` Interpreter,
num_threads=--threads, the default op resolver (XNNPACK applied), the same input (the agent's generator
and seed).

edgebench side: a real job through a real agent on loopback (upload, job process, harness, LiteRT backend),
--warmup iterations, then --steady-s of steady state (round 1) or round 1's sample count (later rounds);
the figure is the median of its raw samples (perf_counter_ns around each `session.run`).

Bare side: a separate process (this script with --bare) that creates the interpreter, allocates tensors,
runs the same warm-up, then times `set_tensor; invoke; get_tensor` with perf_counter_ns for the same number
of iterations: what an application's own loop does, with nothing of edgebench imported but the input
generator.

Rounds are interleaved (A B, then B A, ...) so that drift of the shared machine cancels; the figure is the
median of the per-round ratios edgebench / bare. Target 0.9 <= ratio <= 1.1.

Run: .venv/bin/python benchmarks/litert_vs_bare_loop.py [--quick] [--rounds 7] [--steady-s 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEED = 0
TARGET = (0.9, 1.1)


def bare_loop(model: str, threads: int, warmup: int, iterations: int) -> None:
    """The bare side (runs in its own process): print {"median_ns", "n"} as JSON."""
    from ai_edge_litert.interpreter import Interpreter

    from agent.measure.inputs import generated_batches
    from agent.types import TensorInfo

    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    info = TensorInfo(inp["name"], tuple(int(d) for d in inp["shape"]), "float32")
    x = generated_batches([info], 1, 1, SEED)[0][info.name]
    set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor
    i_index, o_index = inp["index"], out["index"]
    for _ in range(warmup):
        set_tensor(i_index, x)
        invoke()
        get_tensor(o_index)
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for _ in range(iterations):
        t0 = clock()
        set_tensor(i_index, x)
        invoke()
        get_tensor(o_index)
        append(clock() - t0)
    print(json.dumps({"median_ns": statistics.median(samples), "n": len(samples)}))


def run_bare(model: Path, args: argparse.Namespace, iterations: int) -> tuple[float, int]:
    cmd = [
        sys.executable,
        __file__,
        *("--bare", str(model), "--threads", str(args.threads), "--warmup", str(args.warmup)),
        *("--iterations", str(iterations)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["median_ns"]), int(out["n"])


def build_tflite(work: Path) -> Path:
    import litert_torch
    import torch

    from coordinator.models.builtin import IMAGE_SIZE, load_teacher

    path = work / "digits.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(load_teacher(), (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),)).export(str(path))
    return path


def measure(args: argparse.Namespace) -> int:
    import ai_edge_litert
    from _common import (
        fmt_ms,
        local_agent,
        make_job,
        print_header,
        print_table,
        print_verdict,
        ratio_rows,
        run_job,
        temp_dir,
    )

    from protos.edgebench.agent.v1 import agent_pb2 as pb
    from protos.stats import summarize

    print_header(
        "LiteRT: edgebench vs a bare interpreter loop",
        {
            "ai-edge-litert": ai_edge_litert.__version__,
            "model": "built-in digits CNN, float32 .tflite (litert-torch), batch 1",
            "threads": args.threads,
            "rounds": args.rounds,
            "steady_s": args.steady_s,
            "warmup": args.warmup,
            "quick": args.quick,
        },
    )
    ratios: list[float] = []
    ours: list[float] = []
    bare: list[float] = []
    details: dict[str, str] = {}
    with temp_dir("litert") as work:
        model = build_tflite(work)
        print(f"{'round':>5}  {'order':>5}  {'n':>6}  {'edgebench median':>16}  {'bare median':>12}  {'ratio':>6}")
        with local_agent() as agent, agent.client() as client:
            sha = client.upload(model).sha256
            fixed = 0  # after round 1 (time-bounded), both sides run round 1's sample count
            for r in range(args.rounds):
                job = make_job(
                    sha,
                    runtime="litert",
                    model_format=pb.MODEL_FORMAT_TFLITE,
                    intra_op_threads=args.threads,
                    seed=SEED,
                    warmup_iterations=args.warmup,
                    min_iterations=fixed or 100,
                    max_iterations=fixed,
                    min_s=0.0 if fixed else args.steady_s,
                    max_s=args.steady_s * 5 + 10,
                )
                bare_first = r % 2 == 1  # alternate the order so that slow drift cancels between rounds
                b = run_bare(model, args, fixed) if bare_first else None
                result = run_job(client, job)
                lat = list(result.timing.latencies_ns)
                if b is None:
                    time.sleep(0.2)  # let the job process exit before the next process starts
                    b = run_bare(model, args, len(lat))
                bare_ns, _ = b
                s = summarize(lat)
                fixed = fixed or s.n
                details = dict(result.provenance.runtime_details)
                ratio = s.median / bare_ns
                ratios.append(ratio)
                ours.append(s.median)
                bare.append(bare_ns)
                order = "B A" if bare_first else "A B"
                print(f"{r + 1:>5}  {order:>5}  {s.n:>6}  {fmt_ms(s.median):>16}  {fmt_ms(bare_ns):>12}  {ratio:>6.3f}")
    print()
    print("edgebench's interpreter: " + ", ".join(f"{k}={v}" for k, v in sorted(details.items())))
    print()
    rows = ratio_rows("bare loop", ratios, ours, bare, TARGET)
    print_table("LiteRT: edgebench vs a bare interpreter loop", rows)
    if args.quick:
        print("note: --quick runs 3 rounds of 0.5 s; judge the ratio from a full run.")
    print_verdict(rows)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved edgebench/bare rounds")
    parser.add_argument("--steady-s", type=float, default=2.0, help="steady-state seconds of round 1's job")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up iterations on both sides")
    parser.add_argument("--threads", type=int, default=1, help="num_threads on both sides")
    parser.add_argument("--quick", action="store_true", help="short run: 3 rounds of 0.5 s")
    parser.add_argument("--bare", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_loop(args.bare, args.threads, args.warmup, args.iterations)
        return 0
    if args.quick:
        args.rounds, args.steady_s = 3, 0.5
    return measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
