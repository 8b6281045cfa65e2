"""Tests of coordinator/dispatch/plan.py: job ids, what each device can run, default runtimes, the job grid."""

from __future__ import annotations

import dataclasses

import pytest

from coordinator.dispatch.plan import NULL_RUNTIME, cell_verdict, default_runtimes, job_id, plan_jobs
from coordinator.dispatch.wire import offline_probe
from coordinator.types import Artifact, DeviceProbe, JobStatus, RuntimeStatus, Variant

ORT = RuntimeStatus(name="onnxruntime", available=True, version="1.18", formats=("onnx",))
OV = RuntimeStatus(name="openvino", available=True, version="2024.1", formats=("onnx", "openvino_ir"))
LITERT_MISSING = RuntimeStatus(
    name="litert", available=False, reason="ai-edge-litert is not installed (pip install edgebench[litert])"
)
NULL = RuntimeStatus(name=NULL_RUNTIME, available=True, formats=("null",))


def variant(name: str = "fp32", fmt: str = "onnx") -> Variant:
    return Variant(name=name, path=f"models/{name}.{fmt}", sha256=name[0] * 64, format=fmt, size_bytes=1_000)


def probe(name: str = "pi5", *runtimes: RuntimeStatus, **overrides: object) -> DeviceProbe:
    base = DeviceProbe(
        name=name,
        address=f"{name}.local:50051",
        online=True,
        protocol="1.0",
        compatible=True,
        compatibility="same protocol 1.0",
        runtimes=runtimes or (ORT, OV, LITERT_MISSING, NULL),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- job ids


def test_job_id_is_stable_per_cell_and_attempt() -> None:
    a = job_id("run-1", "pi5", "fp32", "onnxruntime")
    assert a == job_id("run-1", "pi5", "fp32", "onnxruntime")
    assert a == job_id("run-1", "pi5", "fp32", "onnxruntime", 1)
    assert a.startswith("run-1.") and a.endswith(".1")


def test_job_id_differs_across_cells_runs_and_attempts() -> None:
    cells = [
        ("run-1", "pi5", "fp32", "onnxruntime", 1),
        ("run-1", "pi5", "fp32", "onnxruntime", 2),
        ("run-1", "pi5", "fp32", "openvino", 1),
        ("run-1", "pi5", "int8", "onnxruntime", 1),
        ("run-1", "jetson", "fp32", "onnxruntime", 1),
        ("run-2", "pi5", "fp32", "onnxruntime", 1),
        # Field boundaries matter: ("ab", "c") is not ("a", "bc").
        ("run-1", "pi5a", "b", "onnxruntime", 1),
        ("run-1", "pi5", "ab", "onnxruntime", 1),
    ]
    ids = [job_id(*c) for c in cells]
    assert len(set(ids)) == len(ids)
    assert job_id("run-1", "pi5", "fp32", "onnxruntime", 2).endswith(".2")


# ---------------------------------------------------------------------------------------------- cell_verdict


def test_offline_device_is_unreachable_with_the_probe_error() -> None:
    down = offline_probe("pi5", "pi5.local:50051", "connection refused (is the agent running?)")
    status, message = cell_verdict(down, variant(), "onnxruntime")
    assert status is JobStatus.UNREACHABLE
    assert "pi5" in message
    assert "connection refused (is the agent running?)" in message


def test_incompatible_device_is_incompatible_with_the_reason() -> None:
    reason = "client speaks protocol 1.0, agent speaks 2.0: incompatible majors; upgrade the coordinator"
    old = probe(compatible=False, compatibility=reason)
    status, message = cell_verdict(old, variant(), "onnxruntime")
    assert status is JobStatus.INCOMPATIBLE
    assert reason in message
    assert "pi5" in message


def test_unknown_runtime_is_skipped_listing_known_runtimes() -> None:
    status, message = cell_verdict(probe(), variant(), "tensorrt")
    assert status is JobStatus.SKIPPED
    assert "'tensorrt'" in message
    assert "onnxruntime, openvino, litert, null" in message


def test_unavailable_runtime_is_skipped_with_the_agents_reason() -> None:
    status, message = cell_verdict(probe(), variant(fmt="tflite"), "litert")
    assert status is JobStatus.SKIPPED
    assert "litert unavailable on pi5" in message
    assert LITERT_MISSING.reason in message


def test_format_mismatch_is_skipped_naming_formats() -> None:
    status, message = cell_verdict(probe(), variant(fmt="tflite"), "openvino")
    assert status is JobStatus.SKIPPED
    assert "tflite" in message
    assert "onnx, openvino_ir" in message


@pytest.mark.parametrize(
    ("fmt", "runtime"), [("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino_ir", "openvino"), ("null", "null")]
)
def test_runnable_cell_is_pending(fmt: str, runtime: str) -> None:
    assert cell_verdict(probe(), variant(fmt=fmt), runtime) == (JobStatus.PENDING, "")


def test_offline_wins_over_everything_else() -> None:
    # An offline device knows no runtimes; it must still be UNREACHABLE (redone by --resume), not SKIPPED.
    down = offline_probe("pi5", "a:1", "timeout")
    for runtime in ("onnxruntime", "nonexistent"):
        assert cell_verdict(down, variant(fmt="tflite"), runtime)[0] is JobStatus.UNREACHABLE
    incompatible = probe(runtimes=(), compatible=False, compatibility="peer sent no protocol version")
    assert cell_verdict(incompatible, variant(), "nonexistent")[0] is JobStatus.INCOMPATIBLE


# ---------------------------------------------------------------------------------------------- default_runtimes


def test_default_runtimes_offered_for_the_variants_formats() -> None:
    probes = [probe("pi5", ORT, LITERT_MISSING, NULL), probe("nuc", OV, ORT, NULL)]
    assert default_runtimes(probes, [variant()]) == ("onnxruntime", "openvino")  # first-seen order
    assert default_runtimes(probes, [variant(fmt="openvino_ir")]) == ("openvino",)
    # litert is only offered unavailable: never picked.
    assert default_runtimes(probes, [variant(fmt="tflite")]) == ()


def test_default_runtimes_never_null_unless_the_format_is_null() -> None:
    anything = RuntimeStatus(name=NULL_RUNTIME, available=True, formats=("onnx", "tflite", "null"))
    probes = [probe("pi5", anything, ORT)]
    assert NULL_RUNTIME not in default_runtimes(probes, [variant()])
    assert NULL_RUNTIME not in default_runtimes(probes, [variant(fmt="tflite")])
    assert default_runtimes(probes, [variant(fmt="null")]) == (NULL_RUNTIME,)
    assert default_runtimes(probes, [variant(), variant("null", "null")]) == (NULL_RUNTIME, "onnxruntime")


def test_default_runtimes_ignore_offline_devices() -> None:
    probes = [offline_probe("pi5", "a:1", "refused"), probe("nuc", OV)]
    assert default_runtimes(probes, [variant()]) == ("openvino",)
    assert default_runtimes([offline_probe("pi5", "a:1", "refused")], [variant()]) == ()


# ---------------------------------------------------------------------------------------------- plan_jobs


def test_plan_jobs_one_job_per_cell_device_major() -> None:
    variants = [variant("fp32"), variant("int8"), variant("pruned", "tflite")]
    runtimes = ["onnxruntime", "openvino"]
    probes = {
        "pi5": probe("pi5", ORT),
        "nuc": probe("nuc", ORT, OV),
        "gone": offline_probe("gone", "a:1", "no route to host"),
    }
    devices = ["pi5", "nuc", "gone"]
    jobs = plan_jobs("run-7", devices, variants, runtimes, probes)

    assert [(j.device, j.variant, j.runtime) for j in jobs] == [
        (d, v.name, r) for d in devices for v in variants for r in runtimes
    ]
    assert len({j.job_id for j in jobs}) == len(jobs) == 3 * 3 * 2
    for j in jobs:
        assert j.run_id == "run-7"
        assert j.attempt == 1
        assert j.job_id == job_id("run-7", j.device, j.variant, j.runtime)
        fmt = next(v.format for v in variants if v.name == j.variant)
        assert (j.status, j.message) == cell_verdict(probes[j.device], variant(j.variant, fmt), j.runtime)

    status = {(j.device, j.variant, j.runtime): j.status for j in jobs}
    assert status["pi5", "fp32", "onnxruntime"] is JobStatus.PENDING
    assert status["pi5", "fp32", "openvino"] is JobStatus.SKIPPED  # pi5 does not know openvino
    assert status["nuc", "int8", "openvino"] is JobStatus.PENDING
    assert status["nuc", "pruned", "onnxruntime"] is JobStatus.SKIPPED  # format mismatch
    assert {status["gone", v.name, r] for v in variants for r in runtimes} == {JobStatus.UNREACHABLE}


def test_plan_jobs_empty_inputs_give_no_jobs() -> None:
    probes = {"pi5": probe()}
    assert plan_jobs("r", [], [variant()], ["onnxruntime"], probes) == []
    assert plan_jobs("r", ["pi5"], [], ["onnxruntime"], probes) == []
    assert plan_jobs("r", ["pi5"], [variant()], [], probes) == []


# ---------------------------------------------------------------------------------------------- formats


def test_a_runtime_gets_the_artifact_in_its_preferred_format() -> None:
    ir = Artifact("openvino_ir", "m/int8/model.xml", "c" * 64, 10, (("model.bin", "m/int8/model.bin", "d" * 64),))
    v = dataclasses.replace(variant("int8"), others=(ir,))
    # OpenVINO takes IR first (its probe lists formats in order of preference), then ONNX.
    assert v.artifact_for(("openvino_ir", "onnx")) == ir
    assert v.artifact_for(("onnx",)) == v.artifacts()[0]
    assert v.artifact_for(("tflite",)) is None
    assert cell_verdict(probe(), v, "openvino") == (JobStatus.PENDING, "")


def test_a_variant_without_the_runtimes_format_is_skipped_with_the_conversion_reason() -> None:
    litert = RuntimeStatus(name="litert", available=True, formats=("tflite",))
    v = dataclasses.replace(variant("fp16"), unconverted=(("tflite", "no TFLite form of fp16 in this version"),))
    status, message = cell_verdict(probe("pi5", ORT, litert), v, "litert")
    assert status is JobStatus.SKIPPED
    assert "litert runs tflite" in message and "exists as onnx" in message
    assert "no TFLite form of fp16" in message


def test_default_runtimes_include_those_whose_conversion_failed() -> None:
    # A wanted format that could not be made still gets its runtime planned, so the report shows why.
    litert = RuntimeStatus(name="litert", available=True, formats=("tflite",))
    v = dataclasses.replace(variant("fp32"), unconverted=(("tflite", "litert-torch is not installed"),))
    assert "litert" in default_runtimes([probe("pi5", ORT, litert)], [v])
