"""ONNX Runtime backend: CPU and any execution provider the installed build offers, selectable per job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, ModelLoadError, RuntimeUnsupported, unavailable
from agent.runtimes.onnx_guard import check_external_data
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "onnxruntime"
FORMATS = (ModelFormat.ONNX,)

#: ONNX Runtime's type strings -> numpy dtype names.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

GRAPH_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _tensor_infos(args: Sequence[Any]) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(
            name=a.name,
            shape=tuple(d if isinstance(d, int) else -1 for d in (a.shape or ())),
            dtype=ORT_DTYPES.get(a.type, a.type),
        )
        for a in args
    )


class OrtSession(DeclaredIO):
    def __init__(self, session: Any, details: dict[str, str]) -> None:
        self._session = session
        self._inputs = _tensor_infos(session.get_inputs())
        self._outputs = _tensor_infos(session.get_outputs())
        self._details = details
        self._ort_run = session.run

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        # Exactly what a user's own loop would call, so the harness adds nothing but the clock reads.
        result: Sequence[Array] = self._ort_run(None, feeds)
        return result

    def execution_providers(self) -> Sequence[str]:
        providers: list[str] = self._session.get_providers()
        return providers

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend:
    name = NAME
    formats = FORMATS

    def probe(self) -> RuntimeInfo:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return unavailable(NAME, FORMATS, f"not installed ({exc}); install edgebench[agent,onnxruntime]")
        return RuntimeInfo(
            name=NAME,
            available=True,
            version=ort.__version__,
            execution_providers=tuple(ort.get_available_providers()),
            model_formats=FORMATS,
        )

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        check_external_data(model_path)

    def load(self, model_path: Path, config: RuntimeConfig) -> OrtSession:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnsupported(f"onnxruntime is not installed on this agent ({exc})") from None
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if config.execution_provider and config.execution_provider != "CPUExecutionProvider":
            if config.execution_provider not in available:
                raise RuntimeUnsupported(
                    f"execution provider {config.execution_provider!r} is not in this onnxruntime build "
                    f"({ort.__version__}); available: {', '.join(available)}"
                )
            providers = [config.execution_provider, "CPUExecutionProvider"]
        options = ort.SessionOptions()
        if config.intra_op_threads:
            options.intra_op_num_threads = config.intra_op_threads
        if config.inter_op_threads:
            options.inter_op_num_threads = config.inter_op_threads
        level_name = config.option("graph_optimization_level", "all")
        if level_name not in GRAPH_OPT_LEVELS:
            raise RuntimeUnsupported(
                f"graph_optimization_level {level_name!r} is not one of {', '.join(GRAPH_OPT_LEVELS)}"
            )
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[level_name])
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, NoSuchFile...)
            raise ModelLoadError(f"onnxruntime could not load the model: {type(exc).__name__}: {exc}") from None
        details = {
            "graph_optimization_level": level_name,
            "intra_op_threads": str(config.intra_op_threads or "default"),
            "inter_op_threads": str(config.inter_op_threads or "default"),
            "onnxruntime_build_providers": ",".join(available),
        }
        return OrtSession(session, details)


BACKEND = OnnxRuntimeBackend()
