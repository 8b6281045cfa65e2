"""The only agent module that touches generated protobuf classes: dataclasses <-> wire messages.

One generic rule set, driven by the message descriptors and the dataclasses' type hints: same-named fields
copy; a dataclass field `x_ns` maps to a Timestamp or Duration field `x`; `tuple[tuple[str, str], ...]`
maps to a `map<string, string>`; Python enum members map to wire values named `<ENUM_PREFIX>_<MEMBER>`;
an optional nested dataclass is absent on the wire when None. The few irregular shapes (the input
oneof, the protocol version, stream events) are converted explicitly below. Every pair has a round-trip
test. Decoding raises WireError with the field path on anything out of contract.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from functools import cache
from typing import Any, TypeVar

from google.protobuf.message import Message

from agent.types import (
    BenchmarkJob,
    BenchmarkResult,
    DeviceInfo,
    InputSpec,
    JobEvent,
    JobState,
    MeasurementPlan,
)
from agent.validate import MAX_ITERATIONS
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.version import Version

T = TypeVar("T")
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"


class WireError(ValueError):
    """A message that breaks the contract; the text names the field."""


def _enum_prefix(enum_descriptor: Any) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_descriptor.name).upper() + "_"


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _wire_name(msg_descriptor: Any, py_name: str) -> str:
    fields = msg_descriptor.fields_by_name
    if py_name in fields:
        return py_name
    if py_name.endswith("_ns") and py_name[:-3] in fields:
        return py_name[:-3]
    raise KeyError(f"{msg_descriptor.full_name} has no field for {py_name}")


def fill(msg: Message, obj: Any, skip: tuple[str, ...] = ()) -> Message:
    """Copy dataclass `obj` into `msg` by the generic rules."""
    desc = msg.DESCRIPTOR
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        name = _wire_name(desc, f.name)
        fd = desc.fields_by_name[name]
        target = getattr(msg, name)
        mt = fd.message_type
        if mt is not None and mt.full_name in (TIMESTAMP, DURATION):
            if value:
                target.FromNanoseconds(value)
        elif mt is not None and mt.GetOptions().map_entry:
            target.update(dict(value))
        elif mt is not None:
            if value is None:
                continue
            if isinstance(value, tuple):
                for item in value:
                    fill(target.add(), item)
            else:
                fill(target, value)
        elif fd.enum_type is not None:
            prefix = _enum_prefix(fd.enum_type)
            if isinstance(value, tuple):
                target.extend(fd.enum_type.values_by_name[prefix + v.name].number for v in value)
            else:
                setattr(msg, name, fd.enum_type.values_by_name[prefix + value.name].number)
        elif isinstance(value, tuple):
            target.extend(value)
        else:
            setattr(msg, name, value)
    return msg


def _enum_from(fd: Any, py_enum: type[enum.Enum], number: int, path: str) -> enum.Enum:
    value = fd.enum_type.values_by_number.get(number)
    if value is None:
        raise WireError(f"{path}: unknown {fd.enum_type.name} value {number} (is the peer newer?)")
    member = value.name[len(_enum_prefix(fd.enum_type)) :]
    try:
        return py_enum[member]
    except KeyError:
        raise WireError(f"{path}: {value.name} is not allowed here (set it)") from None


def read(cls: type[T], msg: Message, path: str = "", skip: tuple[str, ...] = (), **extra: Any) -> T:
    """Build dataclass `cls` from `msg` by the generic rules; `extra` supplies the skipped fields."""
    desc = msg.DESCRIPTOR
    kwargs: dict[str, Any] = dict(extra)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in skip:
            continue
        tp, optional = _unwrap_optional(_hints(typing.cast(type, cls))[f.name])
        name = _wire_name(desc, f.name)
        fd = desc.fields_by_name[name]
        here = f"{path}.{name}" if path else name
        raw = getattr(msg, name)
        mt = fd.message_type
        if mt is not None and mt.full_name in (TIMESTAMP, DURATION):
            kwargs[f.name] = raw.ToNanoseconds() if msg.HasField(name) else 0
        elif mt is not None and mt.GetOptions().map_entry:
            kwargs[f.name] = tuple(sorted(raw.items()))
        elif mt is not None:
            if typing.get_origin(tp) is tuple:
                item_tp = typing.get_args(tp)[0]
                kwargs[f.name] = tuple(read(item_tp, m, f"{here}[{i}]") for i, m in enumerate(raw))
            elif optional and not msg.HasField(name):
                kwargs[f.name] = None
            else:
                kwargs[f.name] = read(tp, raw, here)
        elif fd.enum_type is not None:
            if typing.get_origin(tp) is tuple:
                item_tp = typing.get_args(tp)[0]
                kwargs[f.name] = tuple(_enum_from(fd, item_tp, n, here) for n in raw)
            else:
                kwargs[f.name] = _enum_from(fd, tp, raw, here)
        elif typing.get_origin(tp) is tuple:
            kwargs[f.name] = tuple(raw)
        else:
            kwargs[f.name] = raw
    return cls(**kwargs)


# ---------------------------------------------------------------------- explicit shapes


def device_info_to_pb(info: DeviceInfo) -> pb.DeviceInfo:
    msg = pb.DeviceInfo(protocol=pb.ProtocolVersion(major=info.protocol_major, minor=info.protocol_minor))
    fill(msg, info, skip=("protocol_major", "protocol_minor"))
    return msg


def device_info_from_pb(msg: pb.DeviceInfo) -> DeviceInfo:
    return read(
        DeviceInfo,
        msg,
        "device",
        skip=("protocol_major", "protocol_minor"),
        protocol_major=msg.protocol.major,
        protocol_minor=msg.protocol.minor,
    )


def version_from_pb(msg: pb.ProtocolVersion) -> Version:
    return Version(msg.major, msg.minor)


def _input_spec_to_pb(spec: InputSpec) -> pb.InputSpec:
    msg = pb.InputSpec(batch_size=spec.batch_size)
    if spec.dataset_sha256:
        msg.dataset_sha256 = spec.dataset_sha256
    else:
        msg.generated.seed = spec.seed
        msg.generated.num_batches = spec.num_batches
    return msg


def _input_spec_from_pb(msg: pb.InputSpec) -> InputSpec:
    source = msg.WhichOneof("source")
    if source is None:
        raise WireError("job.inputs: set either dataset_sha256 or generated")
    if source == "dataset_sha256":
        if not msg.dataset_sha256:
            raise WireError("job.inputs.dataset_sha256: empty digest; set a sha256 or use generated inputs")
        return InputSpec(batch_size=msg.batch_size, dataset_sha256=msg.dataset_sha256)
    return InputSpec(batch_size=msg.batch_size, seed=msg.generated.seed, num_batches=msg.generated.num_batches)


def job_to_pb(job: BenchmarkJob) -> pb.BenchmarkJob:
    msg = pb.BenchmarkJob()
    fill(msg, job, skip=("inputs",))
    msg.inputs.CopyFrom(_input_spec_to_pb(job.inputs))
    return msg


def job_from_pb(msg: pb.BenchmarkJob) -> BenchmarkJob:
    """Decode a job; fields the client left unset get the agent's defaults (documented in the README)."""
    plan = read(MeasurementPlan, msg.plan, "job.plan") if msg.HasField("plan") else MeasurementPlan()
    if plan.max_iterations == 0:
        plan = dataclasses.replace(plan, max_iterations=MAX_ITERATIONS)
    return read(BenchmarkJob, msg, "job", skip=("inputs", "plan"), inputs=_input_spec_from_pb(msg.inputs), plan=plan)


def result_to_pb(result: BenchmarkResult) -> pb.BenchmarkResult:
    return typing.cast(pb.BenchmarkResult, fill(pb.BenchmarkResult(), result))


def result_from_pb(msg: pb.BenchmarkResult) -> BenchmarkResult:
    return read(BenchmarkResult, msg, "result")


def event_to_pb(event: JobEvent) -> pb.RunBenchmarkResponse:
    msg = pb.RunBenchmarkResponse(job_id=event.job_id)
    if event.result is not None:
        msg.result.CopyFrom(result_to_pb(event.result))
    elif event.accepted_queue_position is not None:
        msg.accepted.queue_position = event.accepted_queue_position
        msg.accepted.reattached = event.reattached
    else:
        assert event.phase is not None
        msg.progress.phase = pb.JobPhase.Value(f"JOB_PHASE_{event.phase.name}")
        msg.progress.queue_position = event.queue_position
        msg.progress.iterations_done = event.iterations_done
        msg.progress.message = event.message
    return msg


def event_from_pb(msg: pb.RunBenchmarkResponse) -> JobEvent:
    from agent.types import JobPhase

    kind = msg.WhichOneof("event")
    if kind == "result":
        return JobEvent(msg.job_id, result=result_from_pb(msg.result))
    if kind == "accepted":
        return JobEvent(
            msg.job_id,
            accepted_queue_position=msg.accepted.queue_position,
            reattached=msg.accepted.reattached,
        )
    if kind == "progress":
        fd = pb.JobProgress.DESCRIPTOR.fields_by_name["phase"]
        phase = _enum_from(fd, JobPhase, msg.progress.phase, "progress.phase")
        return JobEvent(
            msg.job_id,
            phase=typing.cast(JobPhase, phase),
            queue_position=msg.progress.queue_position,
            iterations_done=msg.progress.iterations_done,
            message=msg.progress.message,
        )
    raise WireError("RunBenchmarkResponse has no event set")


def job_state_to_pb(state: JobState) -> int:
    number: int = pb.JobState.Value(f"JOB_STATE_{state.name}")
    return number
