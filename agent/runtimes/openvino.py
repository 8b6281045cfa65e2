"""OpenVINO backend: an OpenVINO IR (`.xml` + its `.bin`) or an ONNX file, on any device OpenVINO has here.

Job settings (RuntimeConfig):

* `device`: an OpenVINO device name, CPU by default (GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, HETERO:..., ...).
  A device this agent does not have is RuntimeUnsupported, naming `Core.available_devices`.
* `precision_hint` -> INFERENCE_PRECISION_HINT (see PRECISIONS); the precision the compiled model reports
  is recorded beside the one asked for, since a device may ignore the hint (this CPU runs f16 as f32).
* `intra_op_threads` -> INFERENCE_NUM_THREADS (0: OpenVINO's default).
* option `performance_hint`: `latency` (default) or `throughput`.

An IR's weights arrive as a companion file next to `model.xml`, named `model.bin` (same stem). Both are
read with `Core.read_model(xml, bin)`; an IR whose `.xml` and `.bin` do not belong together is a
ModelLoadError that says so. ONNX input has its external-data locations checked in `prepare`.

Batch: a model whose batch axis (axis 0) is dynamic is reshaped to the job's batch (option ``batch``, which
the harness sets; 1 without it) and compiled static at load,
the way an application that knows its batch does it (and what `benchmark_app -shape` measures); its
inputs are still reported with a free batch axis. A batch of another size recompiles the model for that
size once, at its first run (so inside "first inference"), and stays compiled for it. Models with other
free dimensions are compiled dynamic as they are.

Timing: `run` copies each feed into the request's own input tensor and calls `InferRequest.infer()`,
the call `benchmark_app -api sync` times; outputs come back as copies the caller may keep.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.runtimes.base import (
    Array,
    DeclaredIO,
    InputMismatch,
    ModelLoadError,
    RuntimeUnsupported,
    batch_option,
    unavailable,
)
from agent.runtimes.onnx_guard import check_external_data
from agent.types import ModelFormat, PrecisionHint, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "openvino"
FORMATS = (ModelFormat.OPENVINO_IR, ModelFormat.ONNX)
DEFAULT_DEVICE = "CPU"

#: PrecisionHint -> INFERENCE_PRECISION_HINT. OpenVINO's own default is not FP32 everywhere: the CPU
#: plugin runs bf16 on CPUs with AMX/avx512_bf16 and GPUs run f16. A number edgebench reports must mean
#: FP32 unless the job asked for something else, so UNSPECIFIED asks for f32 explicitly too. INT8 is a
#: property of a quantized model (its FakeQuantize/QDQ nodes run in int8 whatever this hint says); the
#: hint sets the precision of the rest of the graph, which stays f32 for the same reason.
PRECISIONS = {
    PrecisionHint.UNSPECIFIED: "f32",
    PrecisionHint.FP32: "f32",
    PrecisionHint.FP16: "f16",
    PrecisionHint.BF16: "bf16",
    PrecisionHint.INT8: "f32",
}

PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}

#: Devices that are not hardware but schedule onto others (`AUTO:GPU,CPU`); only the listed ones are checked.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


class _NoTelemetry:
    """Stands in for openvino_telemetry's singleton: each method of its API does nothing (and it has no
    `backend`, which OpenVINO's own start-up checks for before using one)."""

    def init(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    send_event = start_session = end_session = send_error = send_stack_trace = send_opt_in_event = init
    force_shutdown = get_stats = init


def _telemetry_off() -> None:
    """`import openvino` sends a usage event (from a forked process that reaches for the network). An agent on
    a user's network must not phone home because it loaded a runtime, so the telemetry singleton is replaced
    by a no-op for this process before the import (the user's own consent file is not touched)."""
    try:
        telemetry = importlib.import_module("openvino_telemetry")
        attribute = "_SingletonMetaClass__single_instance"
        if hasattr(telemetry.Telemetry, attribute):
            setattr(telemetry.Telemetry, attribute, _NoTelemetry())
    except Exception:  # not installed, or another version: nothing to switch off here
        pass


def _openvino() -> Any:
    if "openvino" not in sys.modules:
        _telemetry_off()
    return importlib.import_module("openvino")


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    """One Core per process: probe and load share it (creating one enumerates the device plugins)."""
    return _openvino().Core()


def _version(ov: Any) -> str:
    return str(ov.__version__).split("-", maxsplit=1)[0]


def _ov_message(exc: BaseException) -> str:
    """OpenVINO's error without its 'Exception from src/...' and 'Check ... failed at ...' frames."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.startswith(("Exception from ", "Check '"))
    ]
    text = "; ".join(lines) or type(exc).__name__
    return text if len(text) <= 600 else text[:600] + "..."


def _has_device(name: str, available: Sequence[str]) -> bool:
    name = name.split("(", maxsplit=1)[0]  # MULTI:GPU(4),CPU(2) gives each device a request count
    if name in available or any(a.startswith(name + ".") for a in available):
        return True
    return name.endswith(".0") and name[:-2] in available  # GPU.0 is the only GPU, listed as "GPU"


def check_device(device: str, available: Sequence[str]) -> None:
    """Raise RuntimeUnsupported unless every hardware device named in `device` is in `available`."""
    base, _, targets = device.partition(":")
    wanted = [t for t in targets.split(",") if t] if base in VIRTUAL_DEVICES else [device]
    missing = [t for t in wanted if not _has_device(t, available)]
    if missing:
        raise RuntimeUnsupported(
            f"OpenVINO device {', '.join(missing)} is not available on this agent; available devices: "
            f"{', '.join(available) or 'none'}. Set the job's runtime device to one of them (or AUTO), or "
            "install that device's driver and OpenVINO plugin"
        )


def _text(value: Any) -> str:
    """A property value as plain text: element types as 'f32', enums by name, lists comma-separated."""
    if hasattr(value, "get_type_name"):
        return str(value.get_type_name())
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value)


def _property(compiled: Any, key: str) -> str:
    try:
        return _text(compiled.get_property(key))
    except Exception:  # virtual devices (AUTO) do not report every property of the device they picked
        return "not reported"


def _tensor_infos(ports: Sequence[Any], prefix: str) -> tuple[TensorInfo, ...]:
    infos = []
    for i, port in enumerate(ports):
        try:
            name = str(port.get_any_name())
        except RuntimeError:  # a tensor without names; feeds are bound by position anyway
            name = f"{prefix}_{i}"
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else -1 for d in shape) if shape.rank.is_static else ()
        element = port.get_element_type()
        try:
            dtype = str(element.to_dtype())
        except Exception:  # bf16 and other types numpy does not have
            dtype = str(element.get_type_name())
        infos.append(TensorInfo(name=name, shape=dims, dtype=dtype))
    return tuple(infos)


def _batch_plan(inputs: Sequence[TensorInfo], batch: int) -> tuple[bool, str]:
    """(reshape to `batch` at load?, what to record). Only a free axis 0 with every other axis fixed qualifies."""
    free = [(info, [ax for ax, d in enumerate(info.shape) if d < 0]) for info in inputs]
    if not any(axes for _, axes in free):
        return False, "static (as in the model)"
    if all(axes in ([], [0]) for _, axes in free) and all(info.shape for info in inputs):
        return (
            True,
            f"dynamic in the model: compiled for the job's batch {batch} at load; another batch size is compiled "
            "at its first run",
        )
    return False, "dynamic shapes beyond the batch axis: compiled dynamic"


class OpenVinoSession(DeclaredIO):
    def __init__(
        self,
        core: Any,
        model: Any,
        device: str,
        properties: dict[str, Any],
        inputs: tuple[TensorInfo, ...],
        outputs: tuple[TensorInfo, ...],
        reshapable: bool,
        details: dict[str, str],
        failure_hint: str = "",
    ) -> None:
        self._core = core
        self._model = model
        self._device = device
        self._properties = properties
        self._inputs = inputs
        self._outputs = outputs
        self._reshapable = reshapable
        self._details = details
        self._failure_hint = failure_hint
        self._compiled: Any = None
        self._request: Any = None
        #: (input name, the request's own input tensor as a numpy view); None when compiled dynamic.
        self._views: list[tuple[str, Any]] | None = None

    def compile(self) -> Any:
        try:
            compiled = self._core.compile_model(self._model, self._device, self._properties)
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not compile the model for device {self._device}: {_ov_message(exc)}"
                f"{self._failure_hint}"
            ) from None
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        if all(port.get_partial_shape().is_static for port in compiled.inputs):
            self._views = [(info.name, self._request.get_input_tensor(i).data) for i, info in enumerate(self._inputs)]
        else:
            self._views = None
        return compiled

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        views = self._views
        if views is None:
            result: Sequence[Array] = self._request.infer({i.name: feeds[i.name] for i in self._inputs}).to_tuple()
            return result
        for name, view in views:
            array = feeds[name]
            if array.shape != view.shape:  # checked: numpy would broadcast a batch of 1 silently
                return self._run_other_batch(feeds)
            view[...] = array
        # benchmark_app's sync loop times exactly this call; outputs are copied out of the request.
        outputs: Sequence[Array] = self._request.infer().to_tuple()
        return outputs

    def _run_other_batch(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        """Recompile for the batch size of `feeds` (a model with a free batch axis), then run."""
        assert self._views is not None
        shapes = [tuple(feeds[name].shape) for name, _ in self._views]
        batches = {s[0] for s in shapes if s}
        fits = all(
            len(s) == len(info.shape) and all(d < 0 or d == a for d, a in zip(info.shape, s, strict=True))
            for s, info in zip(shapes, self._inputs, strict=True)
        )
        if not (self._reshapable and fits and len(batches) == 1):
            expected = ", ".join(f"{n}{list(v.shape)}" for n, v in self._views)
            given = ", ".join(f"{n}{list(s)}" for (n, _), s in zip(self._views, shapes, strict=True))
            raise InputMismatch(f"the compiled model takes {expected}; the feeds are {given}")
        self._model.reshape({i: list(s) for i, s in enumerate(shapes)})
        self._compiled = self._request = self._views = None  # free the old compilation first
        self.compile()
        return self.run(feeds)

    def execution_providers(self) -> Sequence[str]:
        devices = _property(self._compiled, "EXECUTION_DEVICES")
        return tuple(devices.split(",")) if devices != "not reported" else (self._device,)

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        self._views = None
        self._request = None
        self._compiled = None
        self._model = None


class OpenVinoBackend:
    name = NAME
    formats = FORMATS

    def probe(self) -> RuntimeInfo:
        try:
            ov = _openvino()
        except ImportError as exc:
            return unavailable(NAME, FORMATS, f"not installed ({exc}); install edgebench[agent,openvino]")
        version = _version(ov)
        try:
            devices = tuple(str(d) for d in _core().available_devices)
        except Exception as exc:
            return unavailable(NAME, FORMATS, f"OpenVINO could not list its devices: {_ov_message(exc)}", version)
        return RuntimeInfo(
            name=NAME, available=True, version=version, execution_providers=devices, model_formats=FORMATS
        )

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        if model_path.suffix == ".xml":
            weights = model_path.with_suffix(".bin")
            if not weights.is_file():
                raise ModelLoadError(
                    f"the IR's weights are missing: {model_path.name} arrived without {weights.name}; send the "
                    f".bin saved together with this .xml as a companion file named {weights.name!r}"
                )
        else:
            check_external_data(model_path)

    def load(self, model_path: Path, config: RuntimeConfig) -> OpenVinoSession:
        try:
            ov = _openvino()
        except ImportError as exc:
            raise RuntimeUnsupported(f"openvino is not installed on this agent ({exc})") from None
        core = _core()
        device = (config.device or DEFAULT_DEVICE).upper()
        check_device(device, [str(d) for d in core.available_devices])
        hint_name = config.option("performance_hint", "latency").lower()
        if hint_name not in PERFORMANCE_HINTS:
            raise RuntimeUnsupported(
                f"performance_hint {hint_name!r} is not one of {', '.join(PERFORMANCE_HINTS)} (OpenVINO backend)"
            )
        precision = PRECISIONS[config.precision_hint]
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": PERFORMANCE_HINTS[hint_name],
            "INFERENCE_PRECISION_HINT": precision,
        }
        if config.intra_op_threads:
            properties["INFERENCE_NUM_THREADS"] = config.intra_op_threads

        model = _read_model(core, model_path)
        inputs = _tensor_infos(model.inputs, "input")
        outputs = _tensor_infos(model.outputs, "output")
        batch = batch_option(config, "OpenVINO")
        reshape, batch_note = _batch_plan(inputs, batch)
        if reshape:
            try:
                model.reshape({i: [batch, *info.shape[1:]] for i, info in enumerate(inputs)})
            except Exception as exc:  # a graph that hard-codes its batch somewhere: let OpenVINO run it dynamic
                reshape, batch_note = (
                    False,
                    f"dynamic in the model; batch {batch} did not apply ({_ov_message(exc)}): compiled dynamic",
                )
        details: dict[str, str] = {}
        is_ir = model_path.suffix == ".xml"
        hint = ". If the .bin came from another export than the .xml, send the matching one" if is_ir else ""
        session = OpenVinoSession(core, model, device, properties, inputs, outputs, reshape, details, hint)
        compiled = session.compile()

        executing = [d for d in _property(compiled, "EXECUTION_DEVICES").split(",") if d != "not reported"]
        names = []
        for d in executing or [device]:
            try:
                names.append(f"{d}: {core.get_property(d, 'FULL_DEVICE_NAME')}")
            except Exception:
                names.append(f"{d}: not reported")
        details.update(
            {
                "device": device,
                "device_full_name": "; ".join(names),
                "performance_hint": _property(compiled, "PERFORMANCE_HINT"),
                "inference_precision": _property(compiled, "INFERENCE_PRECISION_HINT"),
                "inference_precision_requested": f"{precision} (precision_hint {config.precision_hint.value})",
                "num_streams": _property(compiled, "NUM_STREAMS"),
                "inference_num_threads": _property(compiled, "INFERENCE_NUM_THREADS"),
                "inference_num_threads_requested": str(config.intra_op_threads or "default"),
                "batch": batch_note,
                "model_format": "openvino_ir" if is_ir else "onnx",
                "openvino_build": str(ov.get_version()),
            }
        )
        return session


def _read_model(core: Any, model_path: Path) -> Any:
    if model_path.suffix == ".xml":
        weights = model_path.with_suffix(".bin")
        try:
            return core.read_model(str(model_path), str(weights))
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not read the IR {model_path.name} with its weights {weights.name}: "
                f"{_ov_message(exc)}. The .xml and its .bin (weights) do not match, or one of them is truncated "
                f"or corrupt: send the .bin saved together with this .xml, as the companion file {weights.name!r}"
            ) from None
    try:
        return core.read_model(str(model_path))
    except Exception as exc:
        raise ModelLoadError(
            f"OpenVINO could not read the ONNX model {model_path.name}: {_ov_message(exc)}. The file is corrupt, "
            "truncated or not ONNX; export it again"
        ) from None


BACKEND = OpenVinoBackend()
