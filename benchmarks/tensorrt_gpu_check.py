"""TensorRT on a real NVIDIA GPU, end to end through a local agent: does the backend build, cache and measure?

Needs a machine with an NVIDIA GPU, TensorRT's Python bindings and cuda-python (nvidia-ml-py for GPU
memory figures); elsewhere it says what is missing and exits 2. Exports the built-in digits CNN to ONNX
(coordinator.models.builtin), adds the model's reference outputs to its held-out split, starts one local
agent, and runs, one after the other, with the dataset and an accuracy pass:

  onnxruntime CPU FP32 (the comparison), TensorRT FP32 (builds its engine), TensorRT FP32 again (cache
  hit), TensorRT FP16 (builds), TensorRT FP16 again (hit).

It prints per job: status, latency median (with its 95% CI) and p90, throughput, load and first-inference
times, the engine cache outcome and build time, GPU memory (and how it was measured), peak RSS, top-1 and
fidelity against the FP32 model. Targets: every job succeeds; the second run of each precision hits the
cache and loads faster than the first built; TensorRT FP32 agrees with the reference (cosine > 0.9999) and
FP16 nearly (top-1 agreement >= 0.99); a GPU memory figure is reported. FP16 vs FP32 speed is printed, not
judged (tiny models are launch-bound).

Run: .venv/bin/python benchmarks/tensorrt_gpu_check.py [--batch 32] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _common import Row, fmt_ms, local_agent, make_job, print_header, print_table, print_verdict, temp_dir

from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.stats import summarize


@dataclass(frozen=True)
class Case:
    label: str
    runtime: str
    precision: int
    expect_cache: str  # "" (not TensorRT), "built in this job" or "hit"


CASES = (
    Case("onnxruntime CPU fp32", "onnxruntime", pb.PRECISION_HINT_UNSPECIFIED, ""),
    Case("tensorrt fp32 (cold)", "tensorrt", pb.PRECISION_HINT_FP32, "built in this job"),
    Case("tensorrt fp32 (cached)", "tensorrt", pb.PRECISION_HINT_FP32, "hit"),
    Case("tensorrt fp16 (cold)", "tensorrt", pb.PRECISION_HINT_FP16, "built in this job"),
    Case("tensorrt fp16 (cached)", "tensorrt", pb.PRECISION_HINT_FP16, "hit"),
)


def _gpu_line() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "nvidia-smi gave nothing (a Jetson?)"


def _mib(value: str) -> str:
    return f"{int(value) / 2**20:.1f} MiB" if value.isdigit() else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=32, help="batch size of every job (default 32)")
    parser.add_argument("--quick", action="store_true", help="shorter timed loops (0.5 s, 50 iterations)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the agent's work directory (engines) here")
    args = parser.parse_args(argv)

    from agent.runtimes.tensorrt.backend import BACKEND

    info = BACKEND.probe()
    if not info.available:
        print(f"tensorrt_gpu_check: cannot run on this machine: {info.unavailable_reason}", file=sys.stderr)
        print("Run it on a machine with an NVIDIA GPU, TensorRT and cuda-python.", file=sys.stderr)
        return 2

    from coordinator.models.builtin import builtin_paths
    from coordinator.prepare import reference_dataset

    min_s, min_iterations = (0.5, 50) if args.quick else (2.0, 200)
    print_header(
        "TensorRT GPU check (built-in digits CNN)",
        {"batch": args.batch, "min_s": min_s, "min_iterations": min_iterations, "tensorrt": info.version},
    )
    print(f"gpu     : {_gpu_line()}\n")

    rows: list[Row] = []
    table: list[Row] = []
    results: dict[str, pb.BenchmarkResult] = {}
    with temp_dir("tensorrt") as tmp:
        onnx_path, npz_path = builtin_paths(tmp / "builtin")
        data_path = reference_dataset(onnx_path, npz_path, tmp / "data")
        workdir = args.keep if args.keep is not None else tmp / "agent"
        with local_agent(workdir) as agent, agent.client() as client:
            model = client.upload(onnx_path).sha256
            data = client.upload(data_path).sha256
            for case in CASES:
                job = make_job(
                    model,
                    runtime=case.runtime,
                    options={"batch": str(args.batch)} if case.runtime == "tensorrt" else {},
                    batch_size=args.batch,
                    min_s=min_s,
                    min_iterations=min_iterations,
                    max_s=30.0,
                    wall_time_s=900.0,
                )
                job.inputs.dataset_sha256 = data
                job.accuracy_pass = True
                job.runtime.precision_hint = case.precision  # type: ignore[assignment]
                result = client.run_to_result(job, timeout_s=1200)
                results[case.label] = result
                status = pb.BenchmarkStatus.Name(result.status)
                if result.status != pb.BENCHMARK_STATUS_SUCCEEDED:
                    table.append(Row(case.label, f"{status}: {result.message[:300]}", "succeeds", False))
                    print(result.diagnostics[-3000:], file=sys.stderr)
                    continue
                s = summarize(list(result.timing.latencies_ns))
                d = dict(result.provenance.runtime_details)
                p90 = fmt_ms(s.p90) if s.p90 is not None else "n/a"
                a = result.accuracy
                table += [
                    Row(
                        f"{case.label}: latency",
                        f"median {fmt_ms(s.median)} [{fmt_ms(s.median_ci_low)}, {fmt_ms(s.median_ci_high)}], "
                        f"p90 {p90}, n={s.n}, {args.batch / (s.median / 1e9):,.0f} samples/s",
                        "succeeds",
                        True,
                    ),
                    Row(
                        f"{case.label}: load, first inference",
                        f"{fmt_ms(result.timing.load_ns)}, {fmt_ms(result.timing.first_inference_ns)}",
                    ),
                    Row(
                        f"{case.label}: memory",
                        f"peak RSS {result.memory.peak_rss_bytes / 2**20:.0f} MiB; GPU "
                        f"{_mib(d.get('gpu_memory_bytes', ''))} ({d.get('gpu_memory_method', 'n/a')})",
                    ),
                    Row(
                        f"{case.label}: accuracy",
                        f"top-1 {a.top1:.4f}, agreement {a.top1_agreement:.4f}, cosine {a.cosine_similarity:.6f}",
                    ),
                ]
                if case.runtime == "tensorrt":
                    table.append(
                        Row(
                            f"{case.label}: engine",
                            f"{d.get('engine_cache', '?')}; build {d.get('engine_build_s', '?')} s; "
                            f"{d.get('engine_bytes', '?')} bytes; {d.get('precision', '?')}; "
                            f"profile {d.get('profile', '?')}",
                        )
                    )
                if case.expect_cache:
                    got = d.get("engine_cache", "")
                    rows.append(Row(f"{case.label}: engine cache", got, case.expect_cache, got == case.expect_cache))
                    rows.append(
                        Row(
                            f"{case.label}: GPU memory reported",
                            _mib(d.get("gpu_memory_bytes", "")),
                            "a figure",
                            d.get("gpu_memory_bytes", "").isdigit(),
                        )
                    )
    print_table("jobs", table)

    def ok(label: str) -> pb.BenchmarkResult | None:
        r = results.get(label)
        return r if r is not None and r.status == pb.BENCHMARK_STATUS_SUCCEEDED else None

    for precision in ("fp32", "fp16"):
        cold, warm = ok(f"tensorrt {precision} (cold)"), ok(f"tensorrt {precision} (cached)")
        if cold and warm:
            rows.append(
                Row(
                    f"{precision}: load with cached engine vs load + build",
                    f"{fmt_ms(warm.timing.load_ns)} vs {fmt_ms(cold.timing.load_ns)} + "
                    f"{dict(cold.provenance.runtime_details).get('engine_build_s', '?')} s build",
                    "cached load < build",
                    warm.timing.load_ns / 1e9 < float(dict(cold.provenance.runtime_details).get("engine_build_s", "0")),
                )
            )
    fp32, fp16, ort = ok("tensorrt fp32 (cached)"), ok("tensorrt fp16 (cached)"), ok("onnxruntime CPU fp32")
    if fp32:
        rows.append(
            Row(
                "tensorrt fp32 cosine vs reference",
                f"{fp32.accuracy.cosine_similarity:.6f}",
                "> 0.9999",
                fp32.accuracy.cosine_similarity > 0.9999,
            )
        )
    if fp16:
        rows.append(
            Row(
                "tensorrt fp16 top-1 agreement",
                f"{fp16.accuracy.top1_agreement:.4f}",
                ">= 0.99",
                fp16.accuracy.top1_agreement >= 0.99,
            )
        )
    if fp32 and fp16:
        m32 = summarize(list(fp32.timing.latencies_ns)).median
        m16 = summarize(list(fp16.timing.latencies_ns)).median
        rows.append(Row("speed-up fp16 over fp32 (medians)", f"{m32 / m16:.2f}x"))
    if fp32 and ort:
        m32 = summarize(list(fp32.timing.latencies_ns)).median
        mort = summarize(list(ort.timing.latencies_ns)).median
        rows.append(Row("speed-up tensorrt fp32 over onnxruntime CPU", f"{mort / m32:.2f}x"))
    if rows:
        print_table("checks", rows)
    print_verdict(rows + table)
    if args.keep is not None:
        print(f"agent work directory (engines under jobs/tensorrt-engines) kept in {args.keep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
