"""Compression targets on the built-in model, measured side by side on this machine.

Builds fp32, INT8 (static), channel pruning at 50% + fine-tune, unstructured pruning, FP16 and a distilled
student of the built-in digits CNN through the same pipeline `edgebench compress` uses, then times every
variant with ONNX Runtime in this process, interleaved round by round (so drift and heat fall on all of
them alike), and prints size, speed-up, accuracy and the targets with PASS/FAIL.

    .venv/bin/python benchmarks/compression.py [--rounds 7] [--seconds 1.0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPES = "fp32,int8,channels:0.5,prune:0.5,fp16,distill:0.5"


def time_session(path: Path, sample: np.ndarray, seconds: float, threads: int) -> list[int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: sample})
    samples: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        session.run(None, {name: sample})
        samples.append(time.perf_counter_ns() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="steady-state seconds per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipes", default=RECIPES)
    args = parser.parse_args()

    import onnxruntime as ort

    from coordinator.compress.base import load_splits
    from coordinator.prepare import prepare

    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vnni = "avx512_vnni" in cpu_flags or "avx_vnni" in cpu_flags
    print(f"machine : {platform.processor() or platform.machine()}, VNNI: {vnni}")
    print(f"versions: onnxruntime {ort.__version__}; threads {args.threads}; rounds {args.rounds} x {args.seconds} s")
    with tempfile.TemporaryDirectory(prefix="edgebench-bench-") as tmp:
        started = time.monotonic()
        prepared = prepare("builtin", args.recipes, None, Path(tmp), log=lambda m: print(f"  {m}", flush=True))
        print(f"built {len(prepared.variants)} variants in {time.monotonic() - started:.0f} s")
        assert prepared.dataset is not None
        data = load_splits(prepared.dataset)
        sample = data.test.inputs[:1].astype(np.float32)
        built = [v for v in prepared.variants if v.sha256]
        for v in prepared.variants:
            if not v.sha256:
                print(f"  skipped {v.name}: {v.notes}")
        medians: dict[str, list[float]] = {v.name: [] for v in built}
        for _ in range(args.rounds):
            for v in built:
                medians[v.name].append(
                    statistics.median(time_session(Path(v.path), sample, args.seconds, args.threads))
                )
        manifests = {}
        for v in built:
            m = Path(v.path).parent / "manifest.json"
            manifests[v.name] = json.loads(m.read_text()) if m.exists() and v.name != "fp32" else {}
        from coordinator.compress.pipeline import top1_onnx

        base = next(v for v in built if v.name == "fp32")
        base_acc = top1_onnx(Path(base.path), data) or 0.0
        base_median = statistics.median(medians["fp32"])
        print(f"\n{'variant':<28} {'size':>9} {'size %':>7} {'median':>10} {'speed-up':>9} {'top-1':>7} {'drop pp':>8}")
        rows = {}
        for v in built:
            acc = top1_onnx(Path(v.path), data) or 0.0
            med = statistics.median(medians[v.name])
            # Speed-up: median over rounds of the per-round ratio, so slow rounds cancel.
            ratio = statistics.median(b / m for b, m in zip(medians["fp32"], medians[v.name], strict=True))
            rows[v.name] = (v.size_bytes / base.size_bytes, ratio, (base_acc - acc) * 100)
            print(
                f"{v.name:<28} {v.size_bytes / 1e6:8.2f}M {100 * v.size_bytes / base.size_bytes:6.1f}% "
                f"{med / 1e6:8.3f}ms {ratio:8.2f}x {acc:7.3f} {(base_acc - acc) * 100:8.2f}"
            )
        print(f"\nfp32 median {base_median / 1e6:.3f} ms, top-1 {base_acc:.3f}")
        targets = []
        if "int8:calib=minmax" in rows or "int8" in rows:
            key = "int8" if "int8" in rows else "int8:calib=minmax"
            size, speed, drop = rows[key]
            targets += [
                ("INT8 static: size <= 27% of FP32", f"{size:.1%}", size <= 0.27),
                ("INT8 static: >= 1.8x faster (ONNX Runtime)", f"{speed:.2f}x", speed >= 1.8),
                ("INT8 static: accuracy drop <= 1 point", f"{drop:.2f} pp", drop <= 1.0),
            ]
        key = next((k for k in rows if k.startswith("channels:amount=0.5")), None)
        if key:
            _, speed, drop = rows[key]
            targets += [
                ("channel pruning 50% + fine-tune: >= 1.8x faster", f"{speed:.2f}x", speed >= 1.8),
                ("channel pruning 50% + fine-tune: drop <= 1.5 points", f"{drop:.2f} pp", drop <= 1.5),
            ]
        key = next((k for k in manifests if k.startswith("distill")), None)
        if key and manifests[key].get("steps"):
            notes = manifests[key]["steps"][0]["notes"]
            kd, no_kd = notes.get("student_kd_accuracy"), notes.get("student_no_kd_accuracy")
            targets.append(
                (
                    "distilled student beats the same student without KD",
                    f"{kd} vs {no_kd}",
                    kd is not None and no_kd is not None and kd > no_kd,
                )
            )
        print()
        for name, value, ok in targets:
            print(f"{name:<55} {value:>16}  {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
