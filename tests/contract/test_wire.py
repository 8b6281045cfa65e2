"""Contract tests of agent/wire.py: every dataclass <-> protobuf conversion pair round-trips.

Each round trip goes dataclass -> message -> bytes -> message -> dataclass, so the assertions prove that
the serialised wire bytes (not just the in-memory message) carry every field. Decoding errors must be
WireError naming the offending field path.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import wire
from agent.types import (
    AccuracyReport,
    BenchmarkJob,
    BenchmarkResult,
    BenchmarkStatus,
    CompanionFile,
    DeviceInfo,
    EnvironmentSample,
    GpuInfo,
    InputSpec,
    JobEvent,
    JobLimits,
    JobPhase,
    JobState,
    MeasurementPlan,
    MemoryReport,
    ModelFormat,
    ModelRef,
    PrecisionHint,
    Provenance,
    RuntimeConfig,
    RuntimeInfo,
    SandboxControl,
    StopReason,
    TensorInfo,
    TimingReport,
)
from agent.validate import MAX_ITERATIONS
from protos.edgebench.agent.v1 import agent_pb2 as pb

M = TypeVar("M", bound=Message)

SHA_MODEL = "a" * 64
SHA_DATA = "b" * 64
SHA_COMPANION = "c" * 64
NS_2024 = 1_717_000_000_123_456_789  # a realistic Timestamp in nanoseconds, with a sub-second part

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def over_the_wire(msg: M) -> M:
    """Serialise and parse back: what the peer actually receives."""
    data = msg.SerializeToString()
    parsed = type(msg).FromString(data)
    assert parsed == msg
    return parsed


# ---------------------------------------------------------------------------------------------- builders


def full_device_info() -> DeviceInfo:
    return DeviceInfo(
        protocol_major=1,
        protocol_minor=3,
        agent_version="0.1.0",
        device_id="dev-1234",
        hostname="pi5",
        os_name="Linux",
        os_release="6.6.31+rpt-rpi-2712",
        os_version="#1 SMP PREEMPT Debian",
        architecture="aarch64",
        python_version="3.11.2",
        cpu_model="Cortex-A76",
        cpu_physical_cores=4,
        cpu_logical_cores=4,
        cpu_frequency_max_hz=2_400_000_000,
        cpu_frequency_current_hz=1_500_000_000,
        cpu_features=("fp", "asimd", "asimddp"),
        memory_total_bytes=8 * 2**30,
        board_model="Raspberry Pi 5 Model B Rev 1.0",
        board_model_source="device-tree",
        gpus=(
            GpuInfo("Orin", "NVIDIA", 8 * 2**30, "540.3", "GPU-1234"),
            GpuInfo("iGPU"),
        ),
        runtimes=(
            RuntimeInfo("onnxruntime", True, "1.20.1", "", ("CPUExecutionProvider",), (ModelFormat.ONNX,)),
            RuntimeInfo("openvino", False, "", "missing", (), (ModelFormat.OPENVINO_IR, ModelFormat.ONNX)),
            RuntimeInfo("everything", True, model_formats=tuple(ModelFormat)),
        ),
        collected_at_ns=NS_2024,
        sandbox=(SandboxControl("processes", True, "own PID namespace"), SandboxControl("network", False, "no")),
        sandbox_mode="auto",
    )


def make_job(
    inputs: InputSpec, *, fmt: ModelFormat = ModelFormat.ONNX, hint: PrecisionHint = PrecisionHint.FP16
) -> BenchmarkJob:
    return BenchmarkJob(
        job_id="job-1:a/b@c",
        model=ModelRef(
            SHA_MODEL,
            fmt,
            (CompanionFile("model.bin", SHA_COMPANION), CompanionFile("weights.onnx.data", SHA_DATA)),
        ),
        runtime=RuntimeConfig(
            name="onnxruntime",
            intra_op_threads=4,
            inter_op_threads=2,
            execution_provider="CPUExecutionProvider",
            device="CPU",
            precision_hint=hint,
            # decoding sorts map entries, so a sorted tuple with unique keys is the canonical form
            options=(("graph_optimization_level", "all"), ("session.use_arena", "0")),
        ),
        inputs=inputs,
        plan=MeasurementPlan(
            warmup_iterations=7,
            warmup_duration_ns=250_000_001,
            min_iterations=50,
            min_duration_ns=2_000_000_003,
            max_duration_ns=60_000_000_007,
            max_iterations=5_000,
            target_relative_ci=0.015,
        ),
        accuracy_pass=True,
        memory_pass=False,
        limits=JobLimits(wall_time_ns=120_000_000_009, memory_bytes=512 * 2**20),
    )


def env_sample(offset: int) -> EnvironmentSample:
    return EnvironmentSample(
        cpu_frequency_hz=1_800_000_000 + offset,
        temperature_millicelsius=-5_500 + offset,  # int64: below freezing must survive
        load_average_1m=0.75 + offset,
        at_ns=NS_2024 + offset,
    )


def full_result(latencies: tuple[int, ...] = tuple(range(1_000_000, 1_001_000))) -> BenchmarkResult:
    return BenchmarkResult(
        job_id="job-1",
        status=BenchmarkStatus.SUCCEEDED,
        message="ok",
        timing=TimingReport(
            load_ns=123_456_789,
            first_inference_ns=9_876_543,
            warmup_iterations=10,
            warmup_ns=45_000_001,
            latencies_ns=latencies,
            steady_wall_ns=1_234_567_890,
            stop_reason=StopReason.CI_CONVERGED,
        ),
        memory=MemoryReport(
            rss_before_load_bytes=40 * 2**20, rss_after_load_bytes=90 * 2**20, peak_rss_bytes=2**40 + 1
        ),
        accuracy=AccuracyReport(
            samples=640,
            has_labels=True,
            top1=0.71875,
            top5=0.9,
            has_reference=True,
            top1_agreement=0.984375,
            cosine_similarity=0.9999,
            max_abs_error=1.5e-3,
            snr_db=float("inf"),
        ),
        provenance=Provenance(
            device_id="dev-1234",
            agent_version="0.1.0",
            os="Linux",
            kernel="6.6.31",
            architecture="aarch64",
            python_version="3.11.2",
            runtime_name="onnxruntime",
            runtime_version="1.20.1",
            execution_providers=("XnnpackExecutionProvider", "CPUExecutionProvider"),
            intra_op_threads=4,
            inter_op_threads=1,
            precision_hint=PrecisionHint.INT8,
            model_sha256=SHA_MODEL,
            dataset_sha256=SHA_DATA,
            batch_size=8,
            inputs=(TensorInfo("input", (-1, 3, 224, 224), "float32"), TensorInfo("mask", (), "bool")),
            outputs=(TensorInfo("logits", (-1, 1000), "float32"),),
            before=env_sample(0),
            after=env_sample(17),
            runtime_details=(("graph_optimization_level", "ORT_ENABLE_ALL"), ("version", "1.20.1")),
            sandbox=(SandboxControl("secrets", True, "hidden"),),
        ),
        started_at_ns=NS_2024,
        finished_at_ns=NS_2024 + 3_000_000_001,
        diagnostics="last\nlines",
    )


# ---------------------------------------------------------------------------------------------- device info


def test_device_info_round_trips() -> None:
    info = full_device_info()
    msg = over_the_wire(wire.device_info_to_pb(info))
    assert (msg.protocol.major, msg.protocol.minor) == (1, 3)
    assert msg.collected_at.ToNanoseconds() == NS_2024
    assert list(msg.runtimes[2].model_formats) == [pb.ModelFormat.Value(f"MODEL_FORMAT_{f.name}") for f in ModelFormat]
    assert wire.device_info_from_pb(msg) == info


def test_minimal_device_info_round_trips() -> None:
    info = dataclasses.replace(
        full_device_info(),
        gpus=(),
        runtimes=(),
        cpu_features=(),
        collected_at_ns=0,
        board_model="",
        board_model_source="",
    )
    msg = over_the_wire(wire.device_info_to_pb(info))
    assert not msg.HasField("collected_at")
    assert wire.device_info_from_pb(msg) == info


def test_version_from_pb() -> None:
    assert str(wire.version_from_pb(pb.ProtocolVersion(major=2, minor=7))) == "2.7"


# ---------------------------------------------------------------------------------------------- jobs

INPUT_SOURCES = {
    "dataset": (InputSpec(batch_size=8, dataset_sha256=SHA_DATA), "dataset_sha256"),
    "generated": (InputSpec(batch_size=4, seed=2**64 - 1, num_batches=3), "generated"),
    # seed 0 is the proto default: the oneof must still say "generated"
    "generated_seed0": (InputSpec(batch_size=1, seed=0, num_batches=1), "generated"),
}


@pytest.mark.parametrize("source", sorted(INPUT_SOURCES))
def test_job_round_trips_both_input_sources(source: str) -> None:
    spec, oneof = INPUT_SOURCES[source]
    job = make_job(spec)
    msg = over_the_wire(wire.job_to_pb(job))
    assert msg.inputs.WhichOneof("source") == oneof
    assert dict(msg.runtime.options) == dict(job.runtime.options)
    assert [c.name for c in msg.model.companions] == ["model.bin", "weights.onnx.data"]
    assert msg.plan.min_duration.ToNanoseconds() == 2_000_000_003
    assert msg.limits.wall_time.ToNanoseconds() == 120_000_000_009
    assert wire.job_from_pb(msg) == job


@pytest.mark.parametrize("fmt", list(ModelFormat))
@pytest.mark.parametrize("hint", list(PrecisionHint))
def test_job_round_trips_every_format_and_precision_hint(fmt: ModelFormat, hint: PrecisionHint) -> None:
    job = make_job(InputSpec(batch_size=2, seed=5, num_batches=2), fmt=fmt, hint=hint)
    msg = over_the_wire(wire.job_to_pb(job))
    assert msg.model.format == pb.ModelFormat.Value(f"MODEL_FORMAT_{fmt.name}")
    assert msg.runtime.precision_hint == pb.PrecisionHint.Value(f"PRECISION_HINT_{hint.name}")
    assert wire.job_from_pb(msg) == job


def test_minimal_job_round_trips() -> None:
    job = BenchmarkJob("j", ModelRef(SHA_MODEL, ModelFormat.NULL), RuntimeConfig("null"))
    assert wire.job_from_pb(over_the_wire(wire.job_to_pb(job))) == job


text_st = st.text(st.characters(codec="utf-8"), max_size=24)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
duration_ns = st.integers(min_value=0, max_value=10**18)
sorted_map = st.dictionaries(text_st, text_st, max_size=5).map(lambda d: tuple(sorted(d.items())))


@st.composite
def jobs(draw: st.DrawFn) -> BenchmarkJob:
    if draw(st.booleans()):
        inputs = InputSpec(batch_size=draw(u32), dataset_sha256=draw(st.text("0123456789abcdef", min_size=1)))
    else:
        inputs = InputSpec(batch_size=draw(u32), seed=draw(u64), num_batches=draw(u32))
    return BenchmarkJob(
        job_id=draw(text_st),
        model=ModelRef(
            draw(text_st),
            draw(st.sampled_from(ModelFormat)),
            tuple(draw(st.lists(st.builds(CompanionFile, text_st, text_st), max_size=3))),
        ),
        runtime=RuntimeConfig(
            name=draw(text_st),
            intra_op_threads=draw(u32),
            inter_op_threads=draw(u32),
            execution_provider=draw(text_st),
            device=draw(text_st),
            precision_hint=draw(st.sampled_from(PrecisionHint)),
            options=draw(sorted_map),
        ),
        inputs=inputs,
        plan=MeasurementPlan(
            warmup_iterations=draw(u32),
            warmup_duration_ns=draw(duration_ns),
            min_iterations=draw(u32),
            min_duration_ns=draw(duration_ns),
            max_duration_ns=draw(duration_ns),
            max_iterations=draw(st.integers(min_value=1, max_value=2**32 - 1)),  # 0 means "the cap"
            target_relative_ci=draw(st.floats(allow_nan=False)),
        ),
        accuracy_pass=draw(st.booleans()),
        memory_pass=draw(st.booleans()),
        limits=JobLimits(draw(duration_ns), draw(u64)),
    )


@FAST
@given(jobs())
def test_random_jobs_round_trip(job: BenchmarkJob) -> None:
    assert wire.job_from_pb(over_the_wire(wire.job_to_pb(job))) == job


def test_plan_max_iterations_zero_decodes_to_the_agent_cap() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.plan.max_iterations = 0
    job = wire.job_from_pb(over_the_wire(msg))
    assert job.plan.max_iterations == MAX_ITERATIONS
    assert job.plan.min_iterations == 50  # the rest of the plan is kept


def test_job_without_plan_gets_measurement_plan_defaults() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.ClearField("plan")
    job = wire.job_from_pb(over_the_wire(msg))
    assert job.plan == MeasurementPlan()
    assert job.plan.max_iterations == MAX_ITERATIONS


def test_job_with_unset_inputs_oneof_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.inputs.ClearField("generated")
    assert msg.inputs.WhichOneof("source") is None
    with pytest.raises(wire.WireError, match=r"job\.inputs"):
        wire.job_from_pb(over_the_wire(msg))


def test_job_without_inputs_message_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.ClearField("inputs")
    with pytest.raises(wire.WireError, match=r"job\.inputs"):
        wire.job_from_pb(over_the_wire(msg))


def test_empty_dataset_digest_is_a_wire_error_not_generated_inputs() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(dataset_sha256=SHA_DATA)))
    msg.inputs.dataset_sha256 = ""  # the oneof still says "dataset"
    msg = over_the_wire(msg)
    assert msg.inputs.WhichOneof("source") == "dataset_sha256"
    with pytest.raises(wire.WireError, match=r"job\.inputs\.dataset_sha256"):
        wire.job_from_pb(msg)


def test_unknown_model_format_number_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.model.format = 99  # type: ignore[assignment]  # what a newer peer could send (open enum)
    with pytest.raises(wire.WireError, match=r"job\.model\.format.*99"):
        wire.job_from_pb(over_the_wire(msg))


def test_unknown_precision_hint_number_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.runtime.precision_hint = 42  # type: ignore[assignment]
    with pytest.raises(wire.WireError, match=r"job\.runtime\.precision_hint.*42"):
        wire.job_from_pb(over_the_wire(msg))


def test_unspecified_model_format_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.model.format = pb.MODEL_FORMAT_UNSPECIFIED
    with pytest.raises(wire.WireError, match=r"job\.model\.format.*MODEL_FORMAT_UNSPECIFIED"):
        wire.job_from_pb(over_the_wire(msg))


def test_job_without_model_message_is_a_wire_error() -> None:
    msg = wire.job_to_pb(make_job(InputSpec(seed=1)))
    msg.ClearField("model")
    with pytest.raises(wire.WireError, match=r"job\.model\.format"):
        wire.job_from_pb(over_the_wire(msg))


# ---------------------------------------------------------------------------------------------- results


def test_full_result_round_trips() -> None:
    result = full_result()
    msg = over_the_wire(wire.result_to_pb(result))
    assert len(msg.timing.latencies_ns) == 1000
    assert msg.provenance.before.at.ToNanoseconds() == NS_2024
    assert msg.provenance.after.temperature_millicelsius == -5_483
    assert dict(msg.provenance.runtime_details) == dict(result.provenance.runtime_details)
    assert msg.finished_at.ToNanoseconds() == NS_2024 + 3_000_000_001
    assert wire.result_from_pb(msg) == result


def test_minimal_failed_result_keeps_absent_reports_absent() -> None:
    result = BenchmarkResult("job-2", BenchmarkStatus.FAILED, message="model did not load", diagnostics="Traceback ...")
    msg = over_the_wire(wire.result_to_pb(result))
    for name in ("timing", "memory", "accuracy", "started_at", "finished_at"):
        assert not msg.HasField(name), name
    back = wire.result_from_pb(msg)
    assert back.timing is None
    assert back.memory is None
    assert back.accuracy is None
    assert back == result


def test_all_zero_reports_stay_present() -> None:
    """A report that is present but all zeros (e.g. RSS unreadable) must not decode as None."""
    result = BenchmarkResult(
        "j",
        BenchmarkStatus.SUCCEEDED,
        timing=TimingReport(),
        memory=MemoryReport(),
        accuracy=AccuracyReport(),
    )
    assert wire.result_from_pb(over_the_wire(wire.result_to_pb(result))) == result


@pytest.mark.parametrize("status", list(BenchmarkStatus))
@pytest.mark.parametrize("stop", list(StopReason))
def test_every_status_and_stop_reason_round_trips(status: BenchmarkStatus, stop: StopReason) -> None:
    result = dataclasses.replace(full_result((1, 2, 3)), status=status)
    assert result.timing is not None
    result = dataclasses.replace(result, timing=dataclasses.replace(result.timing, stop_reason=stop))
    assert wire.result_from_pb(over_the_wire(wire.result_to_pb(result))) == result


def test_unspecified_status_is_a_wire_error() -> None:
    msg = wire.result_to_pb(full_result((1,)))
    msg.status = pb.BENCHMARK_STATUS_UNSPECIFIED
    with pytest.raises(wire.WireError, match=r"result\.status"):
        wire.result_from_pb(over_the_wire(msg))


latencies_st = st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=300).map(tuple)
floats_st = st.floats(allow_nan=False)  # NaN != NaN; infinities are legitimate (snr_db of an exact match)
tensor_st = st.builds(
    TensorInfo, text_st, st.lists(st.integers(min_value=-1, max_value=2**62), max_size=5).map(tuple), text_st
)


@st.composite
def results(draw: st.DrawFn) -> BenchmarkResult:
    """The full result with random latencies and random values in a sample of fields of every kind."""
    base = full_result(draw(latencies_st))
    assert base.accuracy is not None
    assert base.memory is not None
    tensors = tuple(draw(st.lists(tensor_st, max_size=3)))
    return dataclasses.replace(
        base,
        job_id=draw(text_st),
        message=draw(text_st),
        accuracy=dataclasses.replace(base.accuracy, top1=draw(floats_st), snr_db=draw(floats_st)),
        memory=dataclasses.replace(base.memory, peak_rss_bytes=draw(u64)),
        provenance=dataclasses.replace(
            base.provenance,
            kernel=draw(text_st),
            execution_providers=tuple(draw(st.lists(text_st, max_size=4))),
            runtime_details=draw(sorted_map),
            inputs=tensors,
            outputs=tensors[::-1],
            after=dataclasses.replace(
                base.provenance.after,
                temperature_millicelsius=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
            ),
        ),
    )


@FAST
@given(results())
def test_random_results_round_trip(result: BenchmarkResult) -> None:
    back = wire.result_from_pb(over_the_wire(wire.result_to_pb(result)))
    assert back == result
    assert back.timing is not None
    assert result.timing is not None
    assert back.timing.latencies_ns == result.timing.latencies_ns  # order and multiplicity preserved


# ---------------------------------------------------------------------------------------------- events


def event_round_trip(event: JobEvent) -> tuple[pb.RunBenchmarkResponse, JobEvent]:
    msg = over_the_wire(wire.event_to_pb(event))
    return msg, wire.event_from_pb(msg)


@pytest.mark.parametrize(("position", "reattached"), [(0, False), (0, True), (7, False)])
def test_accepted_event_round_trips(position: int, reattached: bool) -> None:
    event = JobEvent("job-1", accepted_queue_position=position, reattached=reattached)
    msg, back = event_round_trip(event)
    assert msg.WhichOneof("event") == "accepted"  # "starts now" (position 0) is still an accepted event
    assert back == event


@pytest.mark.parametrize("phase", list(JobPhase))
def test_progress_event_round_trips_every_phase(phase: JobPhase) -> None:
    event = JobEvent("job-1", phase=phase, queue_position=2, iterations_done=2**40 + 3, message=phase.value)
    msg, back = event_round_trip(event)
    assert msg.WhichOneof("event") == "progress"
    assert msg.progress.phase == pb.JobPhase.Value(f"JOB_PHASE_{phase.name}")
    assert back == event


@pytest.mark.parametrize(
    "result",
    [full_result(), BenchmarkResult("job-1", BenchmarkStatus.CANCELLED, "stopped")],
    ids=["full", "minimal"],
)
def test_result_event_round_trips(result: BenchmarkResult) -> None:
    event = JobEvent("job-1", result=result)
    msg, back = event_round_trip(event)
    assert msg.WhichOneof("event") == "result"
    assert back == event


def test_event_without_payload_is_a_wire_error() -> None:
    with pytest.raises(wire.WireError, match="no event"):
        wire.event_from_pb(over_the_wire(pb.RunBenchmarkResponse(job_id="job-1")))


def test_progress_event_with_unspecified_phase_is_a_wire_error() -> None:
    msg = pb.RunBenchmarkResponse(job_id="job-1", progress=pb.JobProgress(iterations_done=1))
    with pytest.raises(wire.WireError, match=r"progress\.phase"):
        wire.event_from_pb(over_the_wire(msg))


# ---------------------------------------------------------------------------------------------- job state


def test_every_job_state_has_its_own_wire_value() -> None:
    numbers = {state: wire.job_state_to_pb(state) for state in JobState}
    assert all(n != pb.JOB_STATE_UNSPECIFIED for n in numbers.values())
    assert len(set(numbers.values())) == len(JobState)
    for state, number in numbers.items():
        assert pb.JobState.Name(number) == f"JOB_STATE_{state.name}"  # type: ignore[arg-type]
