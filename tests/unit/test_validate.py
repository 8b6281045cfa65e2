"""Tests of agent.validate.validate_job: every contract problem is reported and names its field."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from agent.runtimes import REGISTRY
from agent.types import (
    BenchmarkJob,
    CompanionFile,
    InputSpec,
    JobLimits,
    MeasurementPlan,
    ModelFormat,
    ModelRef,
    RuntimeConfig,
)
from agent.validate import MAX_BATCH, MAX_ITERATIONS, validate_job

SHA = hashlib.sha256(b"model").hexdigest()
DATASET_SHA = hashlib.sha256(b"dataset").hexdigest()


def make_job(**overrides: Any) -> BenchmarkJob:
    job = BenchmarkJob(
        job_id="job-1",
        model=ModelRef(SHA, ModelFormat.ONNX, companions=(CompanionFile("weights.bin", SHA),)),
        runtime=RuntimeConfig("onnxruntime", intra_op_threads=4),
        inputs=InputSpec(batch_size=8, dataset_sha256=DATASET_SHA),
        plan=MeasurementPlan(),
        accuracy_pass=True,
    )
    return dataclasses.replace(job, **overrides)


def with_plan(**overrides: Any) -> BenchmarkJob:
    return make_job(plan=dataclasses.replace(MeasurementPlan(), **overrides))


def test_valid_job_has_no_problems() -> None:
    assert validate_job(make_job()) == []


def test_valid_job_with_generated_inputs_and_every_runtime() -> None:
    for name in REGISTRY:
        job = make_job(
            runtime=RuntimeConfig(name), inputs=InputSpec(batch_size=1, seed=3, num_batches=4), accuracy_pass=False
        )
        assert validate_job(job) == []


def test_boundary_values_are_valid() -> None:
    job = make_job(
        job_id="a" * 200,
        inputs=InputSpec(batch_size=MAX_BATCH, dataset_sha256=DATASET_SHA),
        plan=MeasurementPlan(
            min_iterations=1,
            max_iterations=MAX_ITERATIONS,
            min_duration_ns=5,
            max_duration_ns=5,
            target_relative_ci=0.999,
        ),
    )
    assert validate_job(job) == []


@pytest.mark.parametrize(
    ("job", "field"),
    [
        (make_job(job_id=""), "job_id"),
        (make_job(job_id="a" * 201), "job_id"),
        (make_job(job_id="has space"), "job_id"),
        (make_job(model=ModelRef("abc", ModelFormat.ONNX)), "model.sha256"),
        (make_job(model=ModelRef(SHA.upper(), ModelFormat.ONNX)), "model.sha256"),
        (make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("sub/w.bin", SHA),))), "sub/w.bin"),
        (make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("..", SHA),))), "'..'"),
        (make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("a..b", SHA),))), "a..b"),
        (make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("", SHA),))), "companion file name"),
        (make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("w.bin", "xyz"),))), "companion 'w.bin'"),
        (make_job(inputs=InputSpec(batch_size=0, dataset_sha256=DATASET_SHA)), "inputs.batch_size"),
        (make_job(inputs=InputSpec(batch_size=MAX_BATCH + 1, dataset_sha256=DATASET_SHA)), "inputs.batch_size"),
        (make_job(inputs=InputSpec(dataset_sha256="nope")), "inputs.dataset_sha256"),
        (make_job(inputs=InputSpec(num_batches=0), accuracy_pass=False), "inputs.generated.num_batches"),
        (make_job(inputs=InputSpec(num_batches=257), accuracy_pass=False), "inputs.generated.num_batches"),
        (make_job(runtime=RuntimeConfig("onnxruntime", intra_op_threads=5000)), "thread"),
        (with_plan(min_iterations=0), "plan.min_iterations"),
        (with_plan(warmup_duration_ns=-1), "plan.warmup_duration"),
        (with_plan(min_duration_ns=-1), "plan.min_duration"),
        (with_plan(max_duration_ns=-1), "plan.max_duration"),
        (with_plan(max_duration_ns=0, min_duration_ns=0), "plan.max_duration"),
        (with_plan(min_duration_ns=10, max_duration_ns=9), "plan.max_duration must be at least plan.min_duration"),
        (with_plan(max_iterations=MAX_ITERATIONS + 1), "plan.max_iterations"),
        (with_plan(min_iterations=100, max_iterations=99), "plan.max_iterations"),
        (with_plan(target_relative_ci=1.0), "plan.target_relative_ci"),
        (with_plan(target_relative_ci=-0.1), "plan.target_relative_ci"),
        (make_job(limits=JobLimits(wall_time_ns=-1)), "limits.wall_time"),
        (make_job(inputs=InputSpec(seed=1), accuracy_pass=True), "accuracy_pass"),
    ],
)
def test_each_malformed_field_is_named(job: BenchmarkJob, field: str) -> None:
    problems = validate_job(job)
    assert problems, "the malformed job was accepted"
    assert any(field in p for p in problems), problems


def test_unknown_runtime_lists_the_valid_ones() -> None:
    problems = validate_job(make_job(runtime=RuntimeConfig("tensorflow")))
    assert len(problems) == 1
    assert "unknown runtime 'tensorflow'" in problems[0]
    for name in REGISTRY:
        assert name in problems[0]


def test_every_problem_is_reported_at_once() -> None:
    job = make_job(
        job_id="",
        model=ModelRef("bad", ModelFormat.ONNX),
        runtime=RuntimeConfig("nope"),
        inputs=InputSpec(batch_size=0),
        plan=MeasurementPlan(min_iterations=0, target_relative_ci=1.0),
        accuracy_pass=True,
    )
    problems = " | ".join(validate_job(job))
    for field in (
        "job_id",
        "model.sha256",
        "unknown runtime",
        "inputs.batch_size",
        "plan.min_iterations",
        "plan.target_relative_ci",
        "accuracy_pass",
    ):
        assert field in problems


@pytest.mark.parametrize(
    "job",
    [
        make_job(job_id="job-1\n"),
        make_job(model=ModelRef(SHA + "\n", ModelFormat.ONNX)),
        make_job(model=ModelRef(SHA, ModelFormat.ONNX, (CompanionFile("weights.bin\n", SHA),))),
    ],
    ids=["job_id", "model.sha256", "companion"],
)
def test_trailing_newline_is_rejected(job: BenchmarkJob) -> None:
    assert validate_job(job) != []


def with_companions(*names: str, fmt: ModelFormat = ModelFormat.ONNX) -> BenchmarkJob:
    return make_job(model=ModelRef(SHA, fmt, tuple(CompanionFile(n, DATASET_SHA) for n in names)))


@pytest.mark.parametrize(
    "name",
    [
        "model.onnx",
        "MODEL.ONNX",  # one file with model.onnx on macOS and Windows
        "Model.Onnx",
        "model.onnx.",  # Windows drops trailing dots
        "model.xml",
        "model.tflite",
        "model.pt2",
        "model.json",
        "model.mlpackage.zip",
        "model.mlpackage",  # where a Core ML package is unpacked
    ],
)
def test_companion_named_like_the_model_file_is_refused(name: str) -> None:
    """F1: such a companion was linked, then copied, over the model's hard link: into the stored blob."""
    problems = validate_job(with_companions("weights.bin", name))
    assert len(problems) == 1, problems
    assert f"companion file name {name!r} is reserved for the model itself in the job's folder" in problems[0]
    assert "rename the companion" in problems[0]


def test_a_name_reserved_for_one_format_is_refused_for_every_format() -> None:
    assert validate_job(with_companions("model.onnx", fmt=ModelFormat.OPENVINO_IR)) != []
    assert validate_job(with_companions("model.xml", fmt=ModelFormat.ONNX)) != []


@pytest.mark.parametrize(
    "names", [("model.bin",), ("model.onnx.data", "model.bin"), ("modelx.onnx",), ("weights.bin",)]
)
def test_other_model_names_stay_valid(names: tuple[str, ...]) -> None:
    """An OpenVINO IR's weights arrive as the companion model.bin; ONNX external data is often model.onnx.data."""
    assert validate_job(with_companions(*names, fmt=ModelFormat.OPENVINO_IR)) == []


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("w.bin", "w.bin"), "file name 'w.bin' is declared twice"),
        (("w.bin", "W.BIN"), "file names 'w.bin' and 'W.BIN' are one file on a case-insensitive filesystem"),
        (("w.bin", "w.bin."), "file names 'w.bin' and 'w.bin.' are one file"),
    ],
)
def test_duplicate_companion_names_are_refused(names: tuple[str, ...], expected: str) -> None:
    problems = validate_job(with_companions(*names))
    assert len(problems) == 1, problems
    assert expected in problems[0] and "give each companion its own name" in problems[0]
