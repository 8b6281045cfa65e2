"""The small interface every runtime backend implements, and the errors that become result statuses.

A backend module may import its heavy SDK only inside its own functions: the server process never loads
a model, only job child processes do (and the probe child, see `agent.runtimes.probe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo, TensorInfo

Array = Any  # numpy.ndarray; kept loose so this module imports without numpy


class RuntimeUnsupported(Exception):
    """The runtime cannot run this job on this device (not installed, wrong format, missing provider)."""


class ModelLoadError(Exception):
    """The runtime is fine but the model could not be loaded (corrupt, truncated, unsupported op...)."""


class InputMismatch(Exception):
    """The inputs given do not fit what the model declares."""


class Session(Protocol):
    """A loaded model, ready to run. `run` is the timed call and must do nothing but inference."""

    @property
    def inputs(self) -> Sequence[TensorInfo]: ...

    @property
    def outputs(self) -> Sequence[TensorInfo]: ...

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]: ...

    def execution_providers(self) -> Sequence[str]:
        """What the runtime actually uses (may differ from what was asked)."""
        ...

    def details(self) -> Mapping[str, str]:
        """Runtime settings worth recording in provenance (precision, optimisation level...)."""
        ...

    def close(self) -> None: ...


class DeclaredIO:
    """The `inputs`/`outputs` half of a Session, for backends that read them once at load into `_inputs` and
    `_outputs`."""

    _inputs: Sequence[TensorInfo]
    _outputs: Sequence[TensorInfo]

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return self._outputs


class Backend(Protocol):
    name: str
    formats: tuple[ModelFormat, ...]

    def probe(self) -> RuntimeInfo:
        """Whether this runtime can be used here, its version and providers, or why not. Never raises."""
        ...

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        """Safety checks that must pass before load and must not count as load time (the harness calls this
        first; e.g. ONNX external-data locations). Raise ModelLoadError or RuntimeUnsupported."""
        ...

    def load(self, model_path: Path, config: RuntimeConfig) -> Session:
        """Load the model; raise RuntimeUnsupported or ModelLoadError with a message a user can act on."""
        ...


def batch_option(config: RuntimeConfig, backend: str) -> int:
    """The job's batch (option ``batch``, set by the harness; 1 without it) for backends that compile or
    allocate for a shape at load. RuntimeUnsupported for anything but a positive whole number."""
    raw = config.option("batch", "1") or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise RuntimeUnsupported(f"option batch={raw!r} must be a positive whole number ({backend} backend)")
    return int(raw)


def unavailable(name: str, formats: tuple[ModelFormat, ...], reason: str, version: str = "") -> RuntimeInfo:
    return RuntimeInfo(name=name, available=False, version=version, unavailable_reason=reason, model_formats=formats)
