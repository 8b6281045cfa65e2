"""Tests of `coordinator.analyze` (static ONNX analysis) and its CLI command `coordinator.cli.analyze`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

import typer  # noqa: E402
from onnx import NodeProto, TensorProto, ValueInfoProto, helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from coordinator.analyze import TARGETS, AnalyzeError, analyze_onnx  # noqa: E402
from coordinator.cli import analyze as cli_analyze  # noqa: E402
from coordinator.models.synthetic import build_cnn, build_mlp  # noqa: E402


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Conv 3->4 (8x8), MaxPool, Conv 4->8 (4x4), Conv 8->16 stride 2 (2x2), GAP, Flatten, Gemm 16->10.
    return build_cnn(tmp_path_factory.mktemp("m") / "cnn.onnx", channels=4, blocks=3, input_hw=8, batch=None)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mlp(tmp_path_factory.mktemp("m") / "mlp.onnx", features=6, hidden=5, num_classes=3)


def _save(
    path: Path, nodes: list[NodeProto], inputs: list[ValueInfoProto], initializer: list[TensorProto] | None = None
) -> Path:
    """Save a graph of `nodes` with output "y" importing opset 17 and the domain com.example."""
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=initializer)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save_model(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_cnn_macs_params_bytes_and_histogram(cnn: Path) -> None:
    a = analyze_onnx(cnn, batch=1)
    layers = {layer.name: layer for layer in a.layers}
    # N*Cout*Hout*Wout*(Cin/groups)*kH*kW
    assert layers["block0.conv"].macs == 1 * 4 * 8 * 8 * 3 * 3 * 3
    assert layers["block1.conv"].macs == 1 * 8 * 4 * 4 * 4 * 3 * 3
    assert layers["block2.conv"].macs == 1 * 16 * 2 * 2 * 8 * 3 * 3
    assert layers["fc"].macs == 1 * 10 * 16  # M*N*K
    assert layers["block0.relu"].macs == 0
    assert a.total_macs == sum(layer.macs or 0 for layer in a.layers)
    assert a.total_flops == 2 * a.total_macs

    model = onnx.load(str(cnn))
    sizes = {t.name: int(onnx.numpy_helper.to_array(t).size) for t in model.graph.initializer}
    assert a.total_params == sum(sizes.values()) == sum(layer.params for layer in a.layers)
    assert {p.name: p.count for p in a.parameters} == sizes
    assert layers["block0.conv"].params == 4 * 3 * 9 + 4
    assert a.weight_bytes == {"float32": 4 * a.total_params}
    assert a.op_histogram == {"Conv": 3, "Relu": 3, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "MaxPool": 1}
    assert layers["block2.conv"].output_shape == (1, 16, 2, 2)


def test_peak_activation_bounds(cnn: Path) -> None:
    a = analyze_onnx(cnn, batch=2)
    sizes = [act.bytes for act in a.activations]
    assert all(s is not None for s in sizes)
    known = [s for s in sizes if s is not None]
    assert a.peak_activation_bytes is not None
    assert max(known) <= a.peak_activation_bytes <= sum(known)
    # input (2*3*8*8 floats) is dead after conv0; conv0 output and relu0 output are live together
    assert a.peak_activation_bytes == 2 * (2 * 4 * 8 * 8 * 4)


def test_batch_scaling(cnn: Path, mlp: Path) -> None:
    one, four = analyze_onnx(cnn, batch=1), analyze_onnx(cnn, batch=4)
    assert one.total_macs is not None and four.total_macs == 4 * one.total_macs
    assert four.total_params == one.total_params
    m1, m4 = analyze_onnx(mlp, batch=1), analyze_onnx(mlp, batch=4)
    assert m1.total_macs == 6 * 5 + 5 * 3
    assert m4.total_macs == 4 * (6 * 5 + 5 * 3)
    assert m4.layers[0].output_shape == (4, 5)


def test_fixed_batch_is_kept_and_noted(tmp_path: Path) -> None:
    fixed = build_mlp(tmp_path / "fixed.onnx", features=6, hidden=5, num_classes=3, batch=2)
    a = analyze_onnx(fixed, batch=8)
    assert a.total_macs == 2 * (6 * 5 + 5 * 3)
    assert any("fixed batch of 2" in note for note in a.notes)


def test_custom_domain_flagged_for_every_target(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "custom.onnx",
        [helper.make_node("MyOp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    )
    a = analyze_onnx(path)
    assert a.op_histogram == {"com.example:MyOp": 1}
    assert set(a.support) == set(TARGETS)
    for target, notes in a.support.items():
        flagged = [n for n in notes if n.subject == "com.example:MyOp"]
        assert flagged and flagged[0].level == "unsupported", target
    assert any("custom-domain" in note for note in a.notes)
    json.dumps(a.to_dict())


def test_op_missing_from_default_opset_flagged(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "bogus.onnx",
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    )
    a = analyze_onnx(path)
    for notes in a.support.values():
        assert any(n.subject == "NoSuchOp" and n.level == "unsupported" for n in notes)


def test_dynamic_non_batch_dim_gives_none_with_reason(tmp_path: Path) -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.0] * 12)
    path = _save(
        tmp_path / "dyn.onnx",
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        initializer=[w],
    )
    a = analyze_onnx(path, batch=2)
    assert a.total_macs is None and "not counted" in a.macs_note
    assert a.layers[1].macs is None and a.layers[1].note
    assert a.peak_activation_bytes is None and "unknown" in a.peak_note
    assert a.total_params == 12 and a.weight_bytes == {"float32": 48}
    assert any("dynamic non-batch dims" in note for note in a.notes)
    assert any(n.subject == "dynamic dims" for n in a.support["tensorrt"])


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(AnalyzeError, match="not an ONNX model"):
        analyze_onnx(garbage)
    text = tmp_path / "text.onnx"
    text.write_text("hello, not a model\n")
    with pytest.raises(AnalyzeError, match="not an ONNX model"):
        analyze_onnx(text)
    with pytest.raises(AnalyzeError, match="no such file"):
        analyze_onnx(tmp_path / "missing.onnx")


@pytest.fixture()
def runner_app() -> typer.Typer:
    app = typer.Typer()
    app.command("analyze")(cli_analyze.analyze)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing the group
        """Unused."""

    return app


def test_cli_table_and_json(runner_app: typer.Typer, cnn: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(runner_app, ["analyze", str(cnn), "--batch", "2"])
    assert table.exit_code == 0, table.output
    assert "total" in table.output and "total params: 1746" in table.output
    assert "peak activations" in table.output and "support:" in table.output
    as_json = runner.invoke(runner_app, ["analyze", str(cnn), "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["total_params"] == 1746 and data["batch"] == 1 and set(data["support"]) == set(TARGETS)


def test_cli_bad_input_exits_2(runner_app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\xff" * 64)
    for path, message in (
        (garbage, "not an ONNX model"),
        (tmp_path / "missing.onnx", "does not exist"),
        (tmp_path / "model.pt2", "export to ONNX first"),
    ):
        result = runner.invoke(runner_app, ["analyze", str(path)])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
