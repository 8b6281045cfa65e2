"""Eager PyTorch backend: `torch.export` programs (`.pt2`, written by `torch.export.save`), the uncompressed
baseline. The only agent module that imports torch, and only inside its functions.

Loading a `.pt2` must not run code from the file, and `torch.export.load` alone does not promise that
(it uses pickle and, in places, Python `eval`). So `prepare` first checks the archive without torch and
writes a fresh copy of it, in the job folder, made only of the bytes it checked
(`agent.runtimes.pt2_guard.write_checked_pt2`: what a hostile archive could do, and what the check allows,
is described there). `load` gives torch that copy, never the received file, so a zip that torch's reader
would see differently from the check's cannot slip anything past it; `load` without `prepare` checks and
copies first too. The copy is deleted once torch has read it. `torch.export.load` runs with
`TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`, so every `torch.load` inside it is restricted to tensors whatever its
call site asks (the sample inputs, which the archive check lets through, still load that way).

`run` calls `program.module()(*inputs)` under `torch.inference_mode()` and returns numpy arrays.
Threads: `torch.set_num_threads(intra_op_threads)` (and inter-op threads when given).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, ModelLoadError, RuntimeUnsupported, unavailable
from agent.runtimes.pt2_guard import write_checked_pt2
from agent.types import ModelFormat, PrecisionHint, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "torch"
FORMATS = (ModelFormat.TORCH_EXPORT,)
INSTALL_HINT = "optional: install edgebench[torch]"


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load in the block to weights_only=True (torch reads this at each call)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _info(name: str, value: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else -1 for d in getattr(value, "shape", ()))
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    return TensorInfo(name, shape, dtype)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


class TorchSession(DeclaredIO):
    def __init__(
        self,
        torch: Any,
        module: Any,
        inputs: tuple[TensorInfo, ...],
        outputs: tuple[TensorInfo, ...],
        details: dict[str, str],
    ) -> None:
        self._torch = torch
        self._module = module
        self._inputs = inputs
        self._outputs = outputs
        self._names = [i.name for i in inputs]
        self._details = details

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        torch = self._torch
        with torch.inference_mode():
            result = self._module(*[torch.from_numpy(feeds[n]) for n in self._names])
        return [t.numpy() for t in _leaves(result)]

    def execution_providers(self) -> Sequence[str]:
        return ("cpu",)

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        self._module = None


class TorchBackend:
    name = NAME
    formats = FORMATS

    def __init__(self) -> None:
        #: received model path -> the checked copy `prepare` wrote for it, which `load` gives torch.
        self._checked: dict[Path, Path] = {}

    def _checked_copy(self, model_path: Path) -> Path:
        previous = self._checked.pop(model_path, None)
        if previous is not None:
            previous.unlink(missing_ok=True)
        copy = write_checked_pt2(model_path, model_path.parent)
        self._checked[model_path] = copy
        return copy

    def probe(self) -> RuntimeInfo:
        version = _torch_version()
        if version is None:
            return unavailable(NAME, FORMATS, f"torch is not installed; {INSTALL_HINT}")
        return RuntimeInfo(
            name=NAME, available=True, version=version, execution_providers=("cpu",), model_formats=FORMATS
        )

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        if _torch_version() is None:
            raise RuntimeUnsupported(
                f"runtime 'torch' is unavailable on this device: torch is not installed; {INSTALL_HINT}"
            )
        if config.device.strip().lower() not in ("", "cpu"):
            raise RuntimeUnsupported(
                f"the torch backend runs on the CPU only; device {config.device!r} is not supported"
            )
        if config.precision_hint not in (PrecisionHint.UNSPECIFIED, PrecisionHint.FP32):
            raise RuntimeUnsupported(
                f"the torch backend runs the program in the dtypes it was exported with; precision "
                f"{config.precision_hint.value} is not applied. Leave the precision unspecified (or FP32)"
            )
        self._checked_copy(model_path)

    def load(self, model_path: Path, config: RuntimeConfig) -> TorchSession:
        try:
            import torch
        except ImportError as exc:
            raise RuntimeUnsupported(
                f"runtime 'torch' is unavailable on this device: torch does not import ({exc}); {INSTALL_HINT}"
            ) from None
        if config.intra_op_threads:
            torch.set_num_threads(config.intra_op_threads)
        notes: dict[str, str] = {}
        if config.inter_op_threads:
            try:
                torch.set_num_interop_threads(config.inter_op_threads)
            except RuntimeError as exc:  # only possible before any inter-op work in the process
                notes["inter_op_threads_note"] = str(exc)[:200]
        checked = self._checked.get(model_path) or self._checked_copy(model_path)
        try:
            with _weights_only_loads():
                program = torch.export.load(checked)
            module = program.module()
        except Exception as exc:  # torch raises many types for bad archives (RuntimeError, KeyError, ...)
            raise ModelLoadError(f"torch could not load the exported program: {type(exc).__name__}: {exc}") from None
        finally:  # torch.export.load reads every record into memory: the copy is not needed afterwards
            self._checked.pop(model_path, None)
            checked.unlink(missing_ok=True)
        nodes = {n.name: n for n in program.graph.nodes}
        signature = program.graph_signature
        inputs = tuple(_info(n, nodes[n].meta.get("val")) for n in signature.user_inputs if n in nodes)
        outputs = tuple(_info(str(n), nodes[n].meta.get("val")) for n in signature.user_outputs if n in nodes)
        if len(inputs) != len(signature.user_inputs):
            raise ModelLoadError("the exported program's user inputs are not all graph placeholders")
        details = {
            "torch_version": str(torch.__version__),
            "intra_op_threads": str(torch.get_num_threads()),
            "inter_op_threads": str(torch.get_num_interop_threads()),
            "mode": "eager program.module() under torch.inference_mode()",
            "load_guard": (
                "archive layout and contents checked (no pickles, allow-listed names/expressions/targets); "
                "torch read a fresh copy of the checked bytes; weights_only loads"
            ),
            **notes,
        }
        return TorchSession(torch, module, inputs, outputs, details)


BACKEND = TorchBackend()
