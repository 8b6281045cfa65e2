"""Which converter makes which format of a variant, why a format is not made, and the conversion cache.

The converters themselves are tested with real SDKs in test_convert_{openvino,tflite,coreml}.py; here a
format's converter is replaced by a function that writes a file, to isolate the mapping and cache logic.
What happens to each case:
- a step with no equivalent in a format, or a PyTorch-only format for an ONNX model: a reason, no file;
- a converter that crashes in an unforeseen way: a reason naming the exception, the other formats still made;
- a cached converted file that was changed: detected by its sha256 and converted again;
- a conversion killed half-way: its temporary folder never looks like a finished one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.compress.base import NotApplicable
from coordinator.compress.pipeline import Stage
from coordinator.compress.recipe import parse_recipes
from coordinator.convert import targets
from coordinator.convert.targets import convert, convert_all, onnx_steps, precision_of
from coordinator.dispatch.client import sha256_file


def recipe(text: str) -> Any:
    return parse_recipes(text)[0]


ONNX_ONLY = Stage(Path("m.onnx"), None, "the model was given as ONNX; converters that start from PyTorch need it")


def test_precision_follows_the_onnx_level_steps() -> None:
    assert precision_of(recipe("fp32")) == "fp32"
    assert precision_of(recipe("channels:0.5")) == "fp32"
    assert precision_of(recipe("fp16")) == "fp16"
    assert precision_of(recipe("channels:0.5+int8")) == "int8"
    assert precision_of(recipe("int8dyn")) == "int8"
    assert onnx_steps(recipe("channels:0.5+int8")) == ("int8",)


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        ("openvino_ir", "int8dyn", "no OpenVINO form of int8dyn"),
        ("tflite", "fp32", "tflite is made from the PyTorch model: the model was given as ONNX"),
        ("coreml", "fp32", "coreml is made from the PyTorch model"),
        ("torch_export", "fp32", "torch_export is made from the PyTorch model"),
        ("onnx2", "fp32", "unknown target format 'onnx2'"),
    ],
)
def test_formats_that_cannot_be_made_say_why(fmt: str, text: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(NotApplicable, match=reason):
        convert(fmt, ONNX_ONLY, recipe(text), None, tmp_path, lambda _m: None)
    assert not (tmp_path / "targets" / fmt).exists()


@pytest.mark.parametrize(
    ("fmt", "text", "reason"),
    [
        ("tflite", "fp16", "no TFLite form of fp16"),
        ("coreml", "int8", "no Core ML form of int8"),
        ("torch_export", "int8", "eager PyTorch runs the network as trained"),
    ],
)
def test_steps_without_an_equivalent_in_a_format_say_why(fmt: str, text: str, reason: str, tmp_path: Path) -> None:
    stage = Stage(Path("m.onnx"), tmp_path / "m.pt2", "", (1, 1, 8, 8))
    with pytest.raises(NotApplicable, match=reason):
        convert(fmt, stage, recipe(text), None, tmp_path, lambda _m: None)


def test_int8_without_a_dataset_says_calibration_needs_one(tmp_path: Path) -> None:
    with pytest.raises(NotApplicable, match="calibrates on the dataset"):
        convert("openvino_ir", ONNX_ONLY, recipe("int8"), None, tmp_path, lambda _m: None)


class FakeConverter:
    """Stands in for a converter SDK: writes a main file and a companion, counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def plan(self, fmt: str, stage: Stage, steps: tuple[str, ...], data: Any) -> tuple[Any, str]:
        from coordinator.convert.base import Converted

        def make(folder: Path) -> Any:
            self.calls += 1
            (folder / "model.xml").write_text(f"<net version='{self.calls}'/>")
            (folder / "model.bin").write_bytes(b"\0" * 16)
            return Converted(fmt, folder / "model.xml", (folder / "model.bin",), {"check": "ok"})

        return make, "fake IR"


def test_a_converted_variant_is_cached_and_a_changed_file_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeConverter()
    monkeypatch.setattr(targets, "_plan", fake.plan)
    logs: list[str] = []
    first = convert("openvino_ir", ONNX_ONLY, recipe("fp32"), None, tmp_path, logs.append)
    assert first.format == "openvino_ir" and Path(first.path).name == "model.xml"
    assert [c[0] for c in first.companions] == ["model.bin"]
    manifest = json.loads((tmp_path / "targets" / "openvino_ir" / "manifest.json").read_text())
    assert manifest["files"]["model.xml"] == first.sha256 and manifest["notes"] == {"check": "ok"}
    again = convert("openvino_ir", ONNX_ONLY, recipe("fp32"), None, tmp_path, logs.append)
    assert again == first and fake.calls == 1  # from the cache
    Path(first.companions[0][1]).write_bytes(b"\1" * 16)  # the .bin changed behind our back
    rebuilt = convert("openvino_ir", ONNX_ONLY, recipe("fp32"), None, tmp_path, logs.append)
    assert fake.calls == 2 and rebuilt.companions == first.companions  # converted again: the .bin restored
    assert sha256_file(Path(rebuilt.companions[0][1])) == rebuilt.companions[0][2]
    assert any("hash mismatch" in m for m in logs)
    # No temporary folders are left next to the finished one.
    assert [p.name for p in (tmp_path / "targets").iterdir()] == ["openvino_ir"]


def test_a_conversion_that_dies_leaves_no_finished_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plan(fmt: str, stage: Stage, steps: tuple[str, ...], data: Any) -> tuple[Any, str]:
        def make(folder: Path) -> Any:
            (folder / "model.tflite").write_bytes(b"half")
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a conversion

        return make, "dies"

    monkeypatch.setattr(targets, "_plan", plan)
    with pytest.raises(KeyboardInterrupt):
        convert("tflite", ONNX_ONLY, recipe("fp32"), None, tmp_path, lambda _m: None)
    assert list((tmp_path / "targets").iterdir()) == []


def test_a_crashing_converter_becomes_a_reason_and_the_other_formats_are_still_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeConverter()

    def plan(fmt: str, stage: Stage, steps: tuple[str, ...], data: Any) -> tuple[Any, str]:
        if fmt == "tflite":

            def boom(folder: Path) -> Any:
                raise RuntimeError("flatbuffer builder exploded")

            return boom, "crashes"
        return fake.plan(fmt, stage, steps, data)

    monkeypatch.setattr(targets, "_plan", plan)
    made, missing = convert_all(("tflite", "openvino_ir"), ONNX_ONLY, recipe("fp32"), None, tmp_path, lambda _m: None)
    assert [a.format for a in made] == ["openvino_ir"]
    assert missing == (("tflite", "conversion crashed: RuntimeError: flatbuffer builder exploded"),)
