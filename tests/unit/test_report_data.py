"""Synthetic RunData for the report tests (imported by test_report_model/test_report_render), plus checks of it.

Two devices, three variants (fp32 baseline, int8, pruned), two runtimes. Latencies are lognormal around a
chosen median (numpy RNG, fixed seed). The cells each test relies on:

* dev_a/onnxruntime: fp32 20 ms, int8 10 ms (exactly 2x faster, 0.3 pp top-1 drop), pruned 8 ms but a
  6 pp drop: the recommendation must be int8 and say why pruned was passed over.
* dev_a/tflite: int8 has a heavy tail (CV well above 10%); pruned FAILED with a message.
* dev_b/onnxruntime: int8 has only 40 samples (no p99); pruned ran while the CPU clock fell 2.4 -> 1.8 GHz.
* dev_b/tflite: int8 SKIPPED with a message.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from coordinator.types import (
    DeviceProbe,
    JobRecord,
    JobStatus,
    MeasurementSettings,
    ResultData,
    RunData,
    RunSpec,
    Variant,
)

RUN_ID = "run-0001"
RUNTIMES = ("onnxruntime", "tflite")
MIB = 2**20
FAIL_MESSAGE = "tflite: op SPARSE_TO_DENSE is not supported by this delegate"
SKIP_MESSAGE = "tflite has no int8 kernels for this device"


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def latencies(rng: np.random.Generator, median_ms: float, n: int, sigma: float = 0.03) -> tuple[int, ...]:
    """n lognormal latencies whose population median is `median_ms`."""
    return tuple(int(x) for x in median_ms * 1e6 * np.exp(rng.normal(0.0, sigma, n)))


def provenance(device: str, variant: Variant, runtime: str, throttled: bool = False) -> dict[str, Any]:
    """Shaped like json_format.MessageToDict(Provenance, preserving_proto_field_name=True)."""
    after_hz = "1800000000" if throttled else "2400000000"
    return {
        "device_id": f"id-{device}",
        "agent_version": "0.1.0",
        "os": "Linux",
        "architecture": "aarch64",
        "runtime_name": runtime,
        "runtime_version": "1.18.0",
        "execution_providers": ["CPUExecutionProvider"],
        "intra_op_threads": 4,
        "precision_hint": "PRECISION_HINT_FP32",
        "model_sha256": variant.sha256,
        "batch_size": 1,
        "before": {"cpu_frequency_hz": "2400000000", "temperature_millicelsius": "55000", "load_average_1m": 0.3},
        "after": {"cpu_frequency_hz": after_hz, "temperature_millicelsius": "71000" if throttled else "58000"},
        "runtime_details": {"graph_optimization_level": "ORT_ENABLE_ALL"},
    }


def make_run(
    dev_a: str = "rpi5",
    dev_b: str = "jetson",
    pruned: str = "pruned",
    fail_message: str = FAIL_MESSAGE,
    seed: int = 7,
    n: int = 2000,
) -> RunData:
    rng = np.random.default_rng(seed)
    variants = {
        "fp32": Variant("fp32", "m/fp32.onnx", sha("fp32"), "onnx", 100 * MIB),
        "int8": Variant("int8", "m/int8.onnx", sha("int8"), "onnx", 25 * MIB, recipe="int8 dynamic"),
        pruned: Variant(
            pruned, "m/p.onnx", sha(pruned), "onnx", 100 * MIB, recipe="50% sparse", compressed_bytes=40 * MIB
        ),
    }
    # (device, variant, runtime) -> (median ms, top1, samples, sigma, throttled) or (status, message)
    plan: dict[tuple[str, str, str], tuple[Any, ...]] = {
        (dev_a, "fp32", "onnxruntime"): (20.0, 0.761, n, 0.03, False),
        (dev_a, "int8", "onnxruntime"): (10.0, 0.758, n, 0.03, False),
        (dev_a, pruned, "onnxruntime"): (8.0, 0.701, n, 0.03, False),
        (dev_a, "fp32", "tflite"): (25.0, 0.761, n, 0.03, False),
        (dev_a, "int8", "tflite"): (12.0, 0.757, n, 0.45, False),
        (dev_a, pruned, "tflite"): (JobStatus.FAILED, fail_message),
        (dev_b, "fp32", "onnxruntime"): (5.0, 0.761, n, 0.03, False),
        (dev_b, "int8", "onnxruntime"): (3.0, 0.759, 40, 0.03, False),
        (dev_b, pruned, "onnxruntime"): (2.5, 0.752, n, 0.03, True),
        (dev_b, "fp32", "tflite"): (6.0, 0.761, n, 0.03, False),
        (dev_b, "int8", "tflite"): (JobStatus.SKIPPED, SKIP_MESSAGE),
        (dev_b, pruned, "tflite"): (4.0, 0.755, n, 0.03, False),
    }
    jobs = []
    for i, ((device, vname, runtime), entry) in enumerate(plan.items()):
        job_id = f"job-{i:02d}"
        if isinstance(entry[0], JobStatus):
            status, message = entry
            result = ResultData(status=status, message=message) if status is JobStatus.FAILED else None
            jobs.append(JobRecord(job_id, RUN_ID, device, vname, runtime, status, message, result=result))
            continue
        median_ms, top1, count, sigma, throttled = entry
        v = variants[vname]
        before = 60 * MIB
        result = ResultData(
            status=JobStatus.SUCCEEDED,
            latencies_ns=latencies(rng, median_ms, count, sigma),
            load_ns=300_000_000,
            first_inference_ns=int(median_ms * 3e6),
            warmup_iterations=10,
            warmup_ns=int(median_ms * 1e7),
            steady_wall_ns=int(median_ms * 1e6 * count),
            stop_reason="STOP_REASON_MINIMUMS_MET",
            rss_before_load_bytes=before,
            rss_after_load_bytes=before + v.size_bytes,
            peak_rss_bytes=before + v.size_bytes + 20 * MIB,
            has_memory=True,
            accuracy_samples=1000,
            top1=top1,
            top5=min(1.0, top1 + 0.17),
            top1_agreement=1.0 - (0.761 - top1) * 2,
            cosine_similarity=0.999,
            max_abs_error=0.02,
            snr_db=35.0,
            provenance=provenance(device, v, runtime, throttled),
            started_at_ns=1_700_000_000_000_000_000,
            finished_at_ns=1_700_000_060_000_000_000,
        )
        jobs.append(JobRecord(job_id, RUN_ID, device, vname, runtime, JobStatus.SUCCEEDED, result=result))
    spec = RunSpec(
        run_id=RUN_ID,
        name="resnet-ish",
        model_path="models/resnet.onnx",
        dataset_path="data/val.npz",
        dataset_sha256=sha("data"),
        devices=(dev_a, dev_b),
        runtimes=RUNTIMES,
        variants=tuple(variants),
        settings=MeasurementSettings(batch=1, min_iterations=100),
        created_at_ns=1_700_000_000_000_000_000,
    )
    probes = (
        DeviceProbe(dev_a, "10.0.0.2:50051", True, device_id=f"id-{dev_a}", cpu_cores=4, memory_bytes=8 << 30),
        DeviceProbe(dev_b, "10.0.0.3:50051", True, device_id=f"id-{dev_b}", cpu_cores=6, memory_bytes=8 << 30),
    )
    return RunData(spec, tuple(variants.values()), probes, tuple(jobs), finished_at_ns=1_700_000_900_000_000_000)


def test_fixture_has_the_cells_the_tests_rely_on() -> None:
    run = make_run()
    assert len(run.jobs) == 12
    statuses = [j.status for j in run.jobs]
    assert statuses.count(JobStatus.FAILED) == 1 and statuses.count(JobStatus.SKIPPED) == 1
    assert sorted(len(j.result.latencies_ns) for j in run.jobs if j.result and j.result.latencies_ns)[0] == 40
