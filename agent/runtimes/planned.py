"""Runtimes the registry names but this agent version does not drive yet.

Their probes are honest: they say whether the SDK is installed (without importing it) and that the
edgebench backend for it is not built in this version, so a device report shows why they were not run.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path

from agent.runtimes.base import RuntimeUnsupported, Session, unavailable
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo


@dataclass(frozen=True)
class PlannedBackend:
    name: str
    formats: tuple[ModelFormat, ...]
    distributions: tuple[str, ...]
    platform_note: str = ""

    def _reason(self) -> tuple[str, str]:
        for dist in self.distributions:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            return version, (f"{dist} {version} is installed, but this agent version has no {self.name} backend yet")
        hint = f" ({self.platform_note})" if self.platform_note else ""
        return "", f"not installed: none of {', '.join(self.distributions)} found{hint}"

    def probe(self) -> RuntimeInfo:
        version, reason = self._reason()
        return unavailable(self.name, self.formats, reason, version)

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        pass

    def load(self, model_path: Path, config: RuntimeConfig) -> Session:
        raise RuntimeUnsupported(f"runtime {self.name!r} is unavailable on this device: {self._reason()[1]}")


OPENVINO = PlannedBackend("openvino", (ModelFormat.OPENVINO_IR, ModelFormat.ONNX), ("openvino",))
LITERT = PlannedBackend("litert", (ModelFormat.TFLITE,), ("ai-edge-litert", "tflite-runtime"))
TENSORRT = PlannedBackend(
    "tensorrt", (ModelFormat.ONNX,), ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "needs an NVIDIA GPU"
)
COREML = PlannedBackend(
    "coreml",
    (ModelFormat.COREML,),
    ("coremltools",),
    "prediction needs macOS" if platform.system() != "Darwin" else "",
)
TORCH = PlannedBackend("torch", (ModelFormat.TORCH_EXPORT,), ("torch",))
