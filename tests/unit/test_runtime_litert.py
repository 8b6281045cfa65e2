"""The LiteRT backend with real interpreters on a tiny model: float, full-integer INT8, and broken files."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model is built with torch (coordinator/dev install)")
litert_interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")
pytest.importorskip("litert_torch", reason="litert-torch builds the test models (edgebench[convert-tflite])")

from agent.runtimes.base import ModelLoadError, RuntimeUnsupported  # noqa: E402
from agent.runtimes.litert import BACKEND, LiteRtSession, missing_operator  # noqa: E402
from agent.types import ModelFormat, RuntimeConfig  # noqa: E402
from tests.runtime_models import (  # noqa: E402
    build_dynamic_batch_tflite,
    build_int8_tflite,
    build_onnx,
    build_tflite,
    patch_tflite_operator,
    pooled_module,
    reference,
    sample_input,
    tiny_module,
)

#: FP32 on both sides: only kernels (XNNPACK) and summation order differ.
ATOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("litert")
    fp32 = build_tflite(d / "model.tflite")
    return {"fp32": fp32, "int8": build_int8_tflite(fp32, d / "int8.tflite")}


def load(path: Path, **config: Any) -> LiteRtSession:
    cfg = RuntimeConfig("litert", **config)
    BACKEND.prepare(path, cfg)
    return BACKEND.load(path, cfg)


def raw_interpreter(path: Path, **kwargs: Any) -> Any:
    interpreter = litert_interpreter.Interpreter(model_path=str(path), **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def test_probe_names_the_package_and_version() -> None:
    import ai_edge_litert

    info = BACKEND.probe()
    assert info.available, info.unavailable_reason
    assert info.version == f"{ai_edge_litert.__version__} (ai-edge-litert)"
    assert info.model_formats == (ModelFormat.TFLITE,)


def test_float_outputs_match_torch_and_are_copies(models: dict[str, Path]) -> None:
    session = load(models["fp32"], intra_op_threads=1)
    (inp,) = session.inputs
    assert inp.shape == (1, 3, 8, 8) and inp.dtype == "float32"
    assert [(o.shape, o.dtype) for o in session.outputs] == [((1, 5), "float32")]
    x1, x2 = sample_input(seed=1), sample_input(seed=2)
    first = session.run({inp.name: x1})
    kept = first[0].copy()
    second = session.run({inp.name: x2})
    np.testing.assert_allclose(first[0], reference(tiny_module(), x1), rtol=0, atol=ATOL)
    np.testing.assert_allclose(second[0], reference(tiny_module(), x2), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(first[0], kept)
    d = session.details()
    assert d["io_quantization"] == "none (float I/O)"
    assert d["num_threads"] == "1" and d["package"].startswith("ai-edge-litert ")


def test_xnnpack_is_applied_by_default_and_can_be_turned_off(models: dict[str, Path]) -> None:
    on = load(models["fp32"])
    assert on.details()["xnnpack"] == "applied" and on.details()["xnnpack_requested"] == "yes"
    assert on.execution_providers() == ("XNNPACK", "CPU")
    off = load(models["fp32"], options=(("xnnpack", "0"),))
    assert off.details()["xnnpack"] == "not applied"
    assert off.details()["op_resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    assert off.execution_providers() == ("CPU",)
    x = sample_input()
    np.testing.assert_allclose(off.run({off.inputs[0].name: x})[0], reference(tiny_module(), x), rtol=0, atol=ATOL)


def test_bad_xnnpack_option_is_unsupported(models: dict[str, Path]) -> None:
    with pytest.raises(RuntimeUnsupported, match="option xnnpack='yes' must be '1'"):
        load(models["fp32"], options=(("xnnpack", "yes"),))


def test_int8_model_presents_float_io_and_quantizes_in_run(models: dict[str, Path]) -> None:
    raw = raw_interpreter(models["int8"])
    (raw_in,), (raw_out,) = raw.get_input_details(), raw.get_output_details()
    assert raw_in["dtype"] == np.int8 and raw_out["dtype"] == np.int8  # a fully-integer model
    in_scale, in_zp = raw_in["quantization"]
    out_scale, out_zp = raw_out["quantization"]

    session = load(models["int8"], intra_op_threads=1)
    assert [i.dtype for i in session.inputs] == ["float32"] and [o.dtype for o in session.outputs] == ["float32"]
    q = session.details()["io_quantization"]
    assert f"input {raw_in['name']}: int8 scale={in_scale:.6g} zero_point={in_zp}, quantized in run()" in q
    assert f"output {raw_out['name']}: int8 scale={out_scale:.6g} zero_point={out_zp}, dequantized in run()" in q

    x = sample_input(seed=7)
    out = session.run({session.inputs[0].name: x})[0]
    assert out.dtype == np.float32
    # What an application does by hand with the raw interpreter gives the same numbers...
    raw.set_tensor(raw_in["index"], np.clip(np.round(x / in_scale) + in_zp, -128, 127).astype(np.int8))
    raw.invoke()
    by_hand = (raw.get_tensor(raw_out["index"]).astype(np.float32) - out_zp) * out_scale
    np.testing.assert_allclose(out, by_hand, rtol=0, atol=1e-6)
    # ...and they approximate the float model within a few quantization steps of the output.
    np.testing.assert_allclose(out, reference(tiny_module(), x), rtol=0, atol=8 * out_scale)


def test_free_batch_axis_follows_the_batch_that_runs(tmp_path: Path) -> None:
    session = load(build_dynamic_batch_tflite(tmp_path / "model.tflite"), intra_op_threads=1)
    (inp,) = session.inputs
    assert inp.shape == (-1, 3, 8, 8)  # reported free, so the harness feeds its own batch size
    for batch in (3, 3, 1, 2):
        x = sample_input(batch=batch, seed=batch)
        (out,) = session.run({inp.name: x})
        assert out.shape == (batch, 5)
        np.testing.assert_allclose(out, reference(pooled_module(), x), rtol=0, atol=ATOL)


def test_missing_custom_op_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    bad = patch_tflite_operator(
        models["fp32"], tmp_path / "model.tflite", "FULLY_CONNECTED", custom_code="EdgebenchMissingOp"
    )
    BACKEND.prepare(bad, RuntimeConfig("litert"))  # still a valid flatbuffer
    with pytest.raises(ModelLoadError) as err:
        BACKEND.load(bad, RuntimeConfig("litert"))
    message = str(err.value)
    assert "the model uses operator EdgebenchMissingOp, which this LiteRT interpreter" in message
    assert "builtin operators only" in message


def test_builtin_op_newer_than_the_interpreter_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    bad = patch_tflite_operator(models["fp32"], tmp_path / "model.tflite", "CONV_2D", version=999)
    with pytest.raises(ModelLoadError, match="the model uses operator CONV_2D version 999"):
        load(bad)


def test_missing_operator_parser() -> None:
    assert missing_operator("Encountered unresolved custom op: MyOp.\nSee instructions") == "MyOp"
    assert missing_operator("Didn't find op for builtin opcode 'GELU' version '3'. An older") == "GELU version 3"
    assert missing_operator("Op builtin_code out of range: 250. Are you") == "builtin code 250"
    assert missing_operator("The model is not a valid Flatbuffer buffer") is None


def test_onnx_file_sent_as_tflite_is_refused_in_prepare(tmp_path: Path) -> None:
    onnx_as_tflite = tmp_path / "model.tflite"
    onnx_as_tflite.write_bytes(build_onnx(tmp_path / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError, match=r"model\.tflite is not a TFLite flatbuffer.*looks like a protobuf"):
        BACKEND.prepare(onnx_as_tflite, RuntimeConfig("litert"))


def test_truncated_flatbuffer_is_a_load_error(models: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "model.tflite"
    cut.write_bytes(models["fp32"].read_bytes()[:400])
    with pytest.raises(ModelLoadError, match="could not load the model: The model is not a valid Flatbuffer"):
        load(cut)


# ---------------------------------------------------------------------------------------------- tflite-runtime


def _fake_tflite_runtime(monkeypatch: pytest.MonkeyPatch, *, with_resolver: bool = True) -> None:
    """A device with only tflite-runtime: ai_edge_litert cannot be imported, `tflite_runtime.interpreter`
    provides the interpreter (the real class, re-exported as tflite-runtime would)."""
    package = types.ModuleType("tflite_runtime")
    package.__version__ = "2.14.0"  # type: ignore[attr-defined]
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = litert_interpreter.Interpreter  # type: ignore[attr-defined]
    if with_resolver:
        module.OpResolverType = litert_interpreter.OpResolverType  # type: ignore[attr-defined]
    package.interpreter = module  # type: ignore[attr-defined]
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` fail
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)


def test_falls_back_to_tflite_runtime(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tflite_runtime(monkeypatch)
    info = BACKEND.probe()
    assert info.available and info.version == "2.14.0 (tflite-runtime)"
    session = load(models["fp32"], options=(("xnnpack", "0"),))
    assert session.details()["package"] == "tflite-runtime 2.14.0"
    x = sample_input()
    np.testing.assert_allclose(session.run({session.inputs[0].name: x})[0], reference(tiny_module(), x), atol=ATOL)


def test_interpreter_without_op_resolver_cannot_turn_xnnpack_off(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tflite_runtime(monkeypatch, with_resolver=False)
    with pytest.raises(RuntimeUnsupported, match=r"tflite-runtime 2\.14\.0 cannot turn its default XNNPACK"):
        load(models["fp32"], options=(("xnnpack", "0"),))


def test_neither_package_makes_the_probe_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    info = BACKEND.probe()
    assert not info.available
    assert "ai-edge-litert:" in info.unavailable_reason and "tflite-runtime:" in info.unavailable_reason
    assert "install edgebench[agent,litert]" in info.unavailable_reason
    with pytest.raises(RuntimeUnsupported, match="no LiteRT interpreter on this agent"):
        BACKEND.load(Path("model.tflite"), RuntimeConfig("litert"))


def test_the_jobs_batch_is_resized_at_load(tmp_path: Path) -> None:
    model = build_dynamic_batch_tflite(tmp_path / "dyn.tflite")
    session = BACKEND.load(model, RuntimeConfig(name="litert", options=(("batch", "3"),)))
    assert session.details()["batch"] == "free in the model: resized to the job's batch 3 at load"
    x = sample_input(batch=3)
    (out,) = session.run({session.inputs[0].name: x})
    assert out.shape[0] == 3
    fixed = BACKEND.load(build_tflite(tmp_path / "fixed.tflite"), RuntimeConfig(name="litert"))
    assert fixed.details()["batch"] == "fixed in the model"
