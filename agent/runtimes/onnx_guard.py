"""Check an ONNX file's external-data references before any runtime opens it.

An ONNX initializer may point at bytes in another file (`external_data` location). A hostile model could
name `../../etc/shadow` or an absolute path; recent ONNX Runtime refuses those, older builds on devices
may not. This parses just the fields involved, with a subset of the ONNX schema built at run time (same
field numbers as onnx.proto; protobuf skips every other field), so the agent needs no `onnx` package.

Every tensor is looked at (main graph, subgraphs at any depth, training graphs, model functions and
their attribute defaults), and every `location` entry of each: runtimes take the last entry, so a tensor
with more than one is refused outright (never legitimate), as is a tensor marked external with none. It
fails closed: a file that mentions external data but does not parse is refused, never waved through.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
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
    (
        "FunctionProto",
        [
            ("node", 7, _TYPE_MESSAGE, _REPEATED, "NodeProto"),
            ("attribute_proto", 11, _TYPE_MESSAGE, _REPEATED, "AttributeProto"),
        ],
    ),
    (
        "TrainingInfoProto",
        [
            ("initialization", 1, _TYPE_MESSAGE, _OPTIONAL, "GraphProto"),
            ("algorithm", 2, _TYPE_MESSAGE, _OPTIONAL, "GraphProto"),
        ],
    ),
    (
        "ModelProto",
        [
            ("graph", 7, _TYPE_MESSAGE, _OPTIONAL, "GraphProto"),
            ("training_info", 20, _TYPE_MESSAGE, _REPEATED, "TrainingInfoProto"),
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


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto in the model: initializers and attribute tensors (sparse ones too) of the main graph,
    of training graphs, of every subgraph at any depth, of model functions' nodes and their attribute
    defaults. Iterative, so a deeply nested model cannot exhaust Python's stack."""
    graphs = [model.graph] + [g for info in model.training_info for g in (info.initialization, info.algorithm)]
    attributes: list[Any] = [a for f in model.functions for a in f.attribute_proto]
    attributes += [a for f in model.functions for n in f.node for a in n.attribute]
    while graphs or attributes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            attributes += [a for n in graph.node for a in n.attribute]
            continue
        attr = attributes.pop()
        yield from (attr.t, *attr.tensors)
        for sparse in (attr.sparse_tensor, *attr.sparse_tensors):
            yield from (sparse.values, sparse.indices)
        graphs += [attr.g, *attr.graphs]


def external_locations(model_bytes: bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored outside the file (see `_all_tensors`). A tensor marked
    external without a location gives ''. Raises ModelLoadError for a tensor with several location entries
    (runtimes read the last one; a check that read another would be blind), and the protobuf library's
    errors for a file that does not parse."""
    model = _model_class().FromString(model_bytes)
    out = []
    for t in _all_tensors(model):
        locations = [e.value for e in t.external_data if e.key == "location"]
        if len(locations) > 1:
            raise ModelLoadError(
                f"tensor {t.name[:200]!r} has {len(locations)} external-data location entries "
                f"({', '.join(repr(loc[:100]) for loc in locations[:4])}); a tensor has at most one. Refused "
                "before any runtime opened the model; save it again with onnx.save(..., save_as_external_data=True)"
            )
        if t.data_location == _EXTERNAL or len(t.external_data):
            out.append((t.name, locations[0] if locations else ""))
    return out


def _bad_location(folder: Path, location: str) -> bool:
    if (
        not location
        or "\0" in location
        or PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or ".." in PurePosixPath(location.replace("\\", "/")).parts
    ):
        return True
    resolved = (folder / location).resolve()
    return os.path.commonpath([folder, resolved]) != str(folder)


def check_external_data(model_path: Path) -> None:
    """Raise ModelLoadError if any external-data location could read outside the model's folder, if a tensor
    is external without a location or with several, or if a model that mentions external data does not
    parse as ONNX (fail closed: what this check cannot read, no runtime is given)."""
    # Every external reference carries the key "location", which protobuf stores verbatim (a string in a
    # length-delimited field, never split or encoded), so a file without those bytes references no external
    # data; scanning a memory map for them costs far less than parsing (which would hold a copy of the weights).
    with model_path.open("rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if mm.find(b"location") < 0:
                    return
        except ValueError:  # empty file
            return
    try:
        locations = external_locations(model_path.read_bytes())
    except ModelLoadError:
        raise
    except Exception as exc:  # DecodeError, RecursionError, UnicodeDecodeError, ...
        raise ModelLoadError(
            f"the model file is not a valid ONNX protobuf ({type(exc).__name__}: {str(exc)[:200]}), and it "
            "mentions external data, so it was refused before any runtime opened it. Save the model again with "
            "onnx.save (check it with onnx.checker.check_model) and send its external data as companion files"
        ) from None
    folder = model_path.parent.resolve()
    for tensor, location in locations:
        if not location:
            raise ModelLoadError(
                f"tensor {tensor[:200]!r} is marked as external data but names no location; refused before any "
                "runtime opened it. Save the model again with onnx.save(..., save_as_external_data=True)"
            )
        if _bad_location(folder, location):
            raise ModelLoadError(
                f"tensor {tensor[:200]!r} points at external data {location[:200]!r}, outside the model's own "
                "folder; refused before any runtime opened it. Send external data as companion files with "
                "plain names"
            )
