"""Check an ONNX file's external-data references before any runtime opens it.

An ONNX initializer may point at bytes in another file (`external_data` location). A hostile model could
name `../../etc/shadow` or an absolute path; recent ONNX Runtime refuses those, older builds on devices
may not. This parses just the fields involved, with a subset of the ONNX schema built at run time (same
field numbers as onnx.proto; protobuf skips every other field), so the agent needs no `onnx` package.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from agent.runtimes.base import ModelLoadError

# FieldDescriptorProto type and label numbers (descriptor.proto), so the schema table below needs no import.
_TYPE_INT32, _TYPE_STRING, _TYPE_MESSAGE = 5, 9, 11
_OPTIONAL, _REPEATED = 1, 3
# (message, [(field name, number, type, label, message type)]) - field numbers from onnx/onnx.proto.
_SCHEMA = [
    ("StringStringEntryProto", [("key", 1, _TYPE_STRING, _OPTIONAL, ""), ("value", 2, _TYPE_STRING, _OPTIONAL, "")]),
    (
        "TensorProto",
        [
            ("name", 8, _TYPE_STRING, _OPTIONAL, ""),
            ("external_data", 13, _TYPE_MESSAGE, _REPEATED, "StringStringEntryProto"),
            ("data_location", 14, _TYPE_INT32, _OPTIONAL, ""),
        ],
    ),
    (
        "SparseTensorProto",
        [
            ("values", 1, _TYPE_MESSAGE, _OPTIONAL, "TensorProto"),
            ("indices", 2, _TYPE_MESSAGE, _OPTIONAL, "TensorProto"),
        ],
    ),
    (
        "AttributeProto",
        [
            ("t", 5, _TYPE_MESSAGE, _OPTIONAL, "TensorProto"),
            ("g", 6, _TYPE_MESSAGE, _OPTIONAL, "GraphProto"),
            ("tensors", 10, _TYPE_MESSAGE, _REPEATED, "TensorProto"),
            ("graphs", 11, _TYPE_MESSAGE, _REPEATED, "GraphProto"),
            ("sparse_tensor", 22, _TYPE_MESSAGE, _OPTIONAL, "SparseTensorProto"),
            ("sparse_tensors", 23, _TYPE_MESSAGE, _REPEATED, "SparseTensorProto"),
        ],
    ),
    ("NodeProto", [("attribute", 5, _TYPE_MESSAGE, _REPEATED, "AttributeProto")]),
    (
        "GraphProto",
        [
            ("node", 1, _TYPE_MESSAGE, _REPEATED, "NodeProto"),
            ("initializer", 5, _TYPE_MESSAGE, _REPEATED, "TensorProto"),
            ("sparse_initializer", 15, _TYPE_MESSAGE, _REPEATED, "SparseTensorProto"),
        ],
    ),
    ("FunctionProto", [("node", 7, _TYPE_MESSAGE, _REPEATED, "NodeProto")]),
    (
        "ModelProto",
        [
            ("graph", 7, _TYPE_MESSAGE, _OPTIONAL, "GraphProto"),
            ("functions", 25, _TYPE_MESSAGE, _REPEATED, "FunctionProto"),
        ],
    ),
]
_PACKAGE = "edgebench_onnx_subset"
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _model_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2")
    for message, fields in _SCHEMA:
        msg = file.message_type.add(name=message)
        for name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


def _tensors(graph: Any) -> list[Any]:
    found = list(graph.initializer)
    found += [t for s in graph.sparse_initializer for t in (s.values, s.indices)]
    for node in graph.node:
        found += _node_tensors(node)
    return found


def _node_tensors(node: Any) -> list[Any]:
    found: list[Any] = []
    for attr in node.attribute:
        found += [attr.t, *attr.tensors]
        found += [t for s in (attr.sparse_tensor, *attr.sparse_tensors) for t in (s.values, s.indices)]
        for sub in (attr.g, *attr.graphs):
            found += _tensors(sub)
    return found


def external_locations(model_bytes: bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored outside the file, in subgraphs and functions too."""
    model = _model_class().FromString(model_bytes)
    tensors = _tensors(model.graph) + [t for f in model.functions for n in f.node for t in _node_tensors(n)]
    out = []
    for t in tensors:
        if t.data_location == _EXTERNAL or len(t.external_data):
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            out.append((t.name, location))
    return out


def check_external_data(model_path: Path) -> None:
    """Raise ModelLoadError if any external-data location could read outside the model's folder."""
    # Every external reference carries the key "location"; a file without those bytes has none, and
    # scanning a memory map for them costs far less than parsing (which would hold a copy of the weights).
    with model_path.open("rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if mm.find(b"location") < 0:
                    return
        except ValueError:  # empty file
            return
    try:
        locations = external_locations(model_path.read_bytes())
    except Exception as exc:  # DecodeError and friends: let the runtime give its own, more precise error
        del exc
        return
    folder = model_path.parent.resolve()
    for tensor, location in locations:
        bad = (
            not location
            or PurePosixPath(location).is_absolute()
            or PureWindowsPath(location).is_absolute()
            or ".." in PurePosixPath(location.replace("\\", "/")).parts
        )
        if not bad:
            resolved = (folder / location).resolve()
            bad = os.path.commonpath([folder, resolved]) != str(folder)
        if bad:
            raise ModelLoadError(
                f"initializer {tensor!r} points at external data {location[:200]!r}, outside the model's own "
                "folder; refused before any runtime opened it. Send external data as companion files with "
                "plain names"
            )
