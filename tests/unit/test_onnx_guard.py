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


def test_garbage_is_left_to_the_runtime(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe not protobuf")
    check_external_data(path)  # no verdict: the runtime reports its own parse error
