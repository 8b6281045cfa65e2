"""The committed gRPC stubs match the committed proto, and the proto follows the house rules.

House rules (see the header of agent.proto): every enum starts with `<ENUM_NAME>_UNSPECIFIED = 0`; the
package is versioned (`edgebench.agent.v1`); units are in field names (see `test_integer_quantities_*`);
time is carried as google.protobuf Timestamp/Duration.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from protos.edgebench.agent.v1 import agent_pb2

ROOT = Path(__file__).resolve().parents[2]
FILE = agent_pb2.DESCRIPTOR
TIME_TYPES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}
INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}

# The unit rule, kept deliberately simple: an integer field whose name contains one of UNIT_WORDS measures
# a physical quantity, so its name must end in one of UNIT_SUFFIXES. Counts (iterations, samples, cores,
# queue positions) carry no unit and contain none of the words. COUNT_EXCEPTIONS lists the names that contain
# a word but are counts.
UNIT_WORDS = ("latenc", "rss", "memory", "size", "frequency", "temperature", "duration", "wall", "offset")
UNIT_SUFFIXES = ("_ns", "_bytes", "_hz", "_millicelsius")
COUNT_EXCEPTIONS = {"batch_size"}  # samples per inference call, not bytes


def _plugins_missing() -> str | None:
    if importlib.util.find_spec("grpc_tools") is None:
        return "grpcio-tools is not installed (dev extra)"
    bindir = Path(sys.executable).parent  # where scripts/gen_protos.py looks for mypy-protobuf's plugins
    for plugin in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        if not (bindir / plugin).exists():
            return f"mypy-protobuf plugin {plugin} is not installed beside the interpreter (dev extra)"
    return None


def test_committed_stubs_are_up_to_date() -> None:
    missing = _plugins_missing()
    if missing:
        pytest.skip(f"cannot regenerate stubs: {missing}")
    proc = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"stubs are stale or generation failed:\n{proc.stdout}\n{proc.stderr}"
    assert "stubs up to date" in proc.stdout


def test_package_is_versioned() -> None:
    assert FILE.package == "edgebench.agent.v1"
    assert descriptor_pb2.FileDescriptorProto.FromString(FILE.serialized_pb).syntax == "proto3"


def _all_messages() -> Iterator[Any]:
    stack = list(FILE.message_types_by_name.values())
    while stack:
        msg = stack.pop()
        if msg.GetOptions().map_entry:
            continue
        yield msg
        stack.extend(msg.nested_types)


def _all_enums() -> Iterator[Any]:
    yield from FILE.enum_types_by_name.values()
    for msg in _all_messages():
        yield from msg.enum_types


def _screaming_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def test_the_rule_helpers_see_the_schema() -> None:
    """Guard against the rules below passing vacuously."""
    assert {e.name for e in _all_enums()} >= {"ModelFormat", "PrecisionHint", "JobPhase", "JobState"}
    assert len(list(_all_messages())) > 30
    assert _screaming_snake("BenchmarkStatus") == "BENCHMARK_STATUS"


@pytest.mark.parametrize("enum", list(_all_enums()), ids=lambda e: e.name)
def test_every_enum_starts_with_unspecified_zero(enum: Any) -> None:
    first = enum.values[0]
    assert first.name == f"{_screaming_snake(enum.name)}_UNSPECIFIED"
    assert first.number == 0
    prefix = _screaming_snake(enum.name) + "_"
    assert all(v.name.startswith(prefix) for v in enum.values), "values must carry the enum's prefix"
    assert enum.values_by_number[0] is first


def test_integer_quantities_carry_a_unit_suffix() -> None:
    offenders = []
    for msg in _all_messages():
        for f in msg.fields:
            if f.type not in INTEGER_TYPES or f.name in COUNT_EXCEPTIONS:
                continue
            if any(w in f.name for w in UNIT_WORDS) and not f.name.endswith(UNIT_SUFFIXES):
                offenders.append(f"{msg.name}.{f.name}")
    assert not offenders, f"integer quantities without a unit suffix {UNIT_SUFFIXES}: {offenders}"


def test_time_fields_use_well_known_types_without_a_redundant_suffix() -> None:
    """A Timestamp/Duration carries its own unit, so `wall_time`, not `wall_time_ns`."""
    offenders = [
        f"{msg.name}.{f.name}"
        for msg in _all_messages()
        for f in msg.fields
        if f.message_type is not None and f.message_type.full_name in TIME_TYPES and f.name.endswith(UNIT_SUFFIXES)
    ]
    assert not offenders
    # the integer *_ns fields are raw measurements (latencies, phase durations), never points in time
    points_in_time = [
        f"{msg.name}.{f.name}"
        for msg in _all_messages()
        for f in msg.fields
        if f.type in INTEGER_TYPES and f.name.endswith(("_at_ns", "_time_ns", "timestamp_ns"))
    ]
    assert not points_in_time
