"""The agent's own check of ONNX external-data locations, run before any runtime opens a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.runtimes.base import ModelLoadError
from agent.runtimes.onnx_guard import check_external_data, external_locations


def _external(name: str, location: str) -> TensorProto:
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _graph(
    initializers: list[TensorProto], nodes: list[onnx.NodeProto] | None = None, name: str = "g"
) -> onnx.GraphProto:
    return helper.make_graph(
        nodes or [helper.make_node("MatMul", ["x", initializers[0].name], ["y"])] if initializers else nodes or [],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializers,
    )


def _save(tmp_path: Path, graph: onnx.GraphProto) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize(
    "location", ["../../etc/passwd", "/etc/passwd", "a/../../x", "..\\..\\win.ini", "C:\\x.bin", ""]
)
def test_escaping_locations_are_refused(tmp_path: Path, location: str) -> None:
    path = _save(tmp_path, _graph([_external("w", location)]))
    with pytest.raises(ModelLoadError, match="refused before any runtime opened it"):
        check_external_data(path)


def test_plain_companion_names_are_allowed(tmp_path: Path) -> None:
    path = _save(tmp_path, _graph([_external("w", "weights.bin")]))
    check_external_data(path)
    assert external_locations(path.read_bytes()) == [("w", "weights.bin")]


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    model_dir = tmp_path / "job"
    model_dir.mkdir()
    (model_dir / "link").symlink_to(tmp_path / "outside")
    path = _save(model_dir, _graph([_external("w", "link/weights.bin")]))
    with pytest.raises(ModelLoadError):
        check_external_data(path)


def test_subgraphs_are_searched(tmp_path: Path) -> None:
    inner = helper.make_graph(
        [helper.make_node("Identity", ["w_in"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])],
        [_external("w_in", "../secret")],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    path = _save(tmp_path, graph)
    assert ("w_in", "../secret") in external_locations(path.read_bytes())
    with pytest.raises(ModelLoadError, match="w_in"):
        check_external_data(path)


def test_garbage_without_external_data_is_left_to_the_runtime(tmp_path: Path) -> None:
    """No "location" bytes: no external reference is possible, so the fast path gives no verdict and the
    runtime reports its own parse error."""
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe not protobuf")
    check_external_data(path)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unparseable_file_that_mentions_external_data_is_refused(tmp_path: Path, kind: str) -> None:
    """F11: the check used to return (fail open) when it could not parse the file, leaving the decision to
    whatever the runtime would make of it. Now it refuses what it cannot read."""
    path = tmp_path / "model.onnx"
    if kind == "garbage":
        path.write_bytes(b"\xff\xfe not protobuf, but it says location=../../token")
    else:
        whole = _save(tmp_path, _graph([_external("w", "weights.bin")])).read_bytes()
        path.write_bytes(whole[: whole.index(b"weights.bin") + 3])  # cut inside the location string
    with pytest.raises(ModelLoadError, match="the model file is not a valid ONNX protobuf") as err:
        check_external_data(path)
    assert "onnx.checker.check_model" in str(err.value)


@pytest.mark.parametrize(
    "locations",
    [["weights.bin", "../../token"], ["../../token", "weights.bin"], ["weights.bin", "weights.bin"]],
    ids=["benign-then-escaping", "escaping-then-benign", "both-benign"],
)
def test_a_tensor_with_several_location_entries_is_refused(tmp_path: Path, locations: list[str]) -> None:
    """F11: runtimes read the last `location` entry and the check read only the first, so a benign first
    entry hid an escaping last one. More than one entry is never legitimate: refused whatever they say."""
    tensor = _external("w", locations[0])
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", locations[1]
    path = _save(tmp_path, _graph([tensor]))
    with pytest.raises(ModelLoadError, match="tensor 'w' has 2 external-data location entries"):
        check_external_data(path)


def test_an_external_tensor_without_location_is_refused(tmp_path: Path) -> None:
    tensor = _external("w", "weights.bin")
    del tensor.external_data[0]  # offset and length stay; the file still mentions "location" elsewhere
    graph = _graph([tensor, _external("v", "v.bin")])
    path = _save(tmp_path, graph)
    with pytest.raises(ModelLoadError, match="tensor 'w' is marked as external data but names no location"):
        check_external_data(path)


def _function_model(tmp_path: Path, *, default: TensorProto | None = None, nested: TensorProto | None = None) -> Path:
    """A model whose only external tensor sits in a model-level function: as an attribute default, or as an
    initializer of an If branch inside the function's body."""
    nodes = []
    if nested is not None:
        branch = helper.make_graph(
            [helper.make_node("Identity", [nested.name], ["out"])],
            "branch",
            [],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])],
            [nested],
        )
        nodes.append(helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    function = helper.make_function("custom", "F", ["c"], ["y"], nodes, [helper.make_opsetid("", 17)])
    if default is not None:
        function.attribute_proto.append(helper.make_attribute("w", default))
    graph = helper.make_graph(
        [helper.make_node("F", ["c"], ["y"], domain="custom")],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    model = helper.make_model(
        graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["attribute default", "subgraph in a function"])
def test_functions_are_searched(tmp_path: Path, where: str) -> None:
    evil = _external("fw", "../../token")
    path = _function_model(tmp_path, **({"default": evil} if where == "attribute default" else {"nested": evil}))
    assert set(external_locations(path.read_bytes())) == {("fw", "../../token")}
    with pytest.raises(ModelLoadError, match="'fw' points at external data"):
        check_external_data(path)


def test_training_graphs_and_sparse_initializers_are_searched(tmp_path: Path) -> None:
    model = helper.make_model(_graph([_external("w", "weights.bin")]), opset_imports=[helper.make_opsetid("", 17)])
    info = model.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external("t", "../t.bin")]))
    sparse = helper.make_sparse_tensor(_external("sv", "../sv.bin"), numpy_helper.from_array(np.array([0])), [4])
    model.graph.sparse_initializer.append(sparse)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    found = dict(external_locations(path.read_bytes()))
    assert found == {"w": "weights.bin", "t": "../t.bin", "sv": "../sv.bin"}
    with pytest.raises(ModelLoadError, match="refused before any runtime opened it"):
        check_external_data(path)
