"""Main job (until the fleet coordinator lands): benchmark the built-in model on a local agent.

Starts a real `edgebench-agent` on 127.0.0.1 with a fresh token, builds the built-in CNN and a dataset,
uploads both (only what the agent lacks), runs one job per thread setting, prints the figures with their
sample counts and confidence intervals, and stops the agent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.dispatch.local import start_agent  # noqa: E402
from coordinator.models.synthetic import DEFAULT_BENCH_CNN, make_dataset  # noqa: E402
from protos.edgebench.agent.v1 import agent_pb2 as pb  # noqa: E402
from protos.stats import summarize, throughput_per_s  # noqa: E402

CV_WARN = 0.10


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    return f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.1f} µs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts to compare")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum steady-state duration per job")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgebench-") as tmp:
        work = Path(tmp)
        model = DEFAULT_BENCH_CNN.build(work / "builtin_cnn.onnx", batch=None)
        dataset = make_dataset(work / "builtin_cnn.npz", model_path=model, n=256)
        print(f"starting a local agent (work directory {work / 'agent'}) ...")
        agent = start_agent(work / "agent")
        try:
            with agent.client() as client:
                info = client.device_info()
                print(
                    f"agent {info.agent_version} on {info.hostname}: {info.cpu_model}, {info.cpu_logical_cores} CPUs, "
                    f"{info.memory_total_bytes / 2**30:.1f} GiB, protocol {info.protocol.major}.{info.protocol.minor}"
                )
                for rt in info.runtimes:
                    state = (
                        f"{rt.version} {list(rt.execution_providers)}"
                        if rt.available
                        else f"unavailable: {rt.unavailable_reason}"
                    )
                    print(f"  runtime {rt.name:<12} {state}")
                up_m, up_d = client.upload(model), client.upload(dataset)
                print(
                    f"uploaded model {up_m.sha256[:12]} ({up_m.sent_bytes} B) and dataset {up_d.sha256[:12]} "
                    f"({up_d.sent_bytes} B)\n"
                )
                rows = []
                for threads in [int(t) for t in args.threads.split(",")]:
                    job = pb.BenchmarkJob(
                        job_id=f"quickstart-{uuid.uuid4().hex[:8]}",
                        model=pb.ModelRef(sha256=up_m.sha256, format=pb.MODEL_FORMAT_ONNX),
                        runtime=pb.RuntimeConfig(name="onnxruntime", intra_op_threads=threads),
                        inputs=pb.InputSpec(dataset_sha256=up_d.sha256, batch_size=args.batch),
                        accuracy_pass=True,
                        memory_pass=True,
                    )
                    job.plan.warmup_iterations = 20
                    job.plan.min_iterations = 200
                    job.plan.min_duration.FromNanoseconds(int(args.min_seconds * 1e9))
                    job.plan.max_duration.FromSeconds(60)
                    started = time.monotonic()
                    for event in client.run(job):
                        kind = event.WhichOneof("event")
                        if kind == "progress":
                            phase = pb.JobPhase.Name(event.progress.phase).removeprefix("JOB_PHASE_").lower()
                            done = event.progress.iterations_done
                            detail = f"{done} iterations" if done else event.progress.message
                            print(f"  [{threads} thread(s)] {phase} {detail}".rstrip(), flush=True)
                        elif kind == "result":
                            rows.append((threads, event.result, time.monotonic() - started))
        finally:
            agent.stop()

    print()
    for threads, r, wall in rows:
        status = pb.BenchmarkStatus.Name(r.status).removeprefix("BENCHMARK_STATUS_")
        print(f"== onnxruntime, {threads} intra-op thread(s), batch {args.batch}: {status} in {wall:.1f} s {r.message}")
        if r.status != pb.BENCHMARK_STATUS_SUCCEEDED:
            continue
        s = summarize(list(r.timing.latencies_ns))
        stop = pb.StopReason.Name(r.timing.stop_reason).removeprefix("STOP_REASON_").lower()
        print(
            f"   latency  median {fmt_ns(s.median)} (95% CI {fmt_ns(s.median_ci_low)}–{fmt_ns(s.median_ci_high)}), "
            f"p90 {fmt_ns(s.p90)}, p99 {fmt_ns(s.p99)}  [n={s.n}, CV {s.cv:.1%}, stop: {stop}]"
        )
        if s.cv > CV_WARN:
            print(f"   WARNING: CV {s.cv:.0%} > {CV_WARN:.0%}: the machine was busy; compare medians, not tails")
        print(
            f"   throughput {throughput_per_s(s.median, args.batch):.0f} samples/s; load {fmt_ns(r.timing.load_ns)}, "
            f"first inference {fmt_ns(r.timing.first_inference_ns)}, warm-up {r.timing.warmup_iterations} runs"
        )
        m = r.memory
        print(
            f"   memory   RSS before load {m.rss_before_load_bytes / 2**20:.1f} MiB, after load "
            f"{m.rss_after_load_bytes / 2**20:.1f} MiB, peak {m.peak_rss_bytes / 2**20:.1f} MiB "
            f"(model-attributable {(m.peak_rss_bytes - m.rss_before_load_bytes) / 2**20:.1f} MiB)"
        )
        a = r.accuracy
        print(
            f"   accuracy top-1 {a.top1:.3f}, top-5 {a.top5:.3f} on {a.samples} samples; fidelity vs reference: "
            f"top-1 agreement {a.top1_agreement:.3f}, cosine {a.cosine_similarity:.6f}, SNR {a.snr_db:.1f} dB"
        )
        p = r.provenance
        print(
            f"   provenance {p.runtime_name} {p.runtime_version} {list(p.execution_providers)}, "
            f"model {p.model_sha256[:12]}, device {p.device_id[:12]}, "
            f"CPU {p.before.cpu_frequency_hz / 1e9:.2f}→{p.after.cpu_frequency_hz / 1e9:.2f} GHz"
        )
    return 0 if rows and all(r.status == pb.BENCHMARK_STATUS_SUCCEEDED for _, r, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
