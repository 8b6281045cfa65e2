"""The one explicit registry of runtime backends, as lazy import paths.

Nothing here imports a runtime SDK: `load_backend` imports one backend module when a job child needs it.
"""

from __future__ import annotations

import importlib

from agent.runtimes.base import Backend

#: name -> "module:attribute" of a Backend instance. Every name appears in device info, available or not.
REGISTRY: dict[str, str] = {
    "onnxruntime": "agent.runtimes.onnxruntime:BACKEND",
    "openvino": "agent.runtimes.openvino:BACKEND",
    "litert": "agent.runtimes.litert:BACKEND",
    "tensorrt": "agent.runtimes.tensorrt.backend:BACKEND",
    "coreml": "agent.runtimes.coreml:BACKEND",
    "torch": "agent.runtimes.torch_export:BACKEND",
    "null": "agent.runtimes.null:BACKEND",
}


class UnknownRuntime(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown runtime {name!r}; valid runtimes: {', '.join(sorted(REGISTRY))}")


def load_backend(name: str) -> Backend:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UnknownRuntime(name) from None
    module_name, attr = target.split(":")
    backend: Backend = getattr(importlib.import_module(module_name), attr)
    return backend
