"""The null runtime: a deterministic fake for tests and for measuring the harness's own overhead.

Its "model" is a small JSON file describing inputs and outputs, e.g.
    {"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10}
Its output is the first `num_classes` values of each flattened sample (zero-padded), so accuracy and
fidelity passes have something real to compute. Options (RuntimeConfig.options) simulate behaviour the
fault tests need: `latency_ns` (busy-wait per run), `sleep_ns` (sleep per run: a device whose accelerator
does the work while the host CPU waits, used to simulate many devices on one machine), `load_ns`
(busy-wait at load), `allocate_mb` (memory
touched at load), `crash` ("load" or "run": the process aborts), `hang_s` (sleep at load), `hostile`
(a hostile behaviour from agent.runtimes.faults, on agents started with --fault-injection only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, ModelLoadError, RuntimeUnsupported
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "null"
FORMATS = (ModelFormat.NULL,)


def _busy_wait(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


class NullSession(DeclaredIO):
    def __init__(
        self,
        inputs: tuple[TensorInfo, ...],
        num_classes: int,
        latency_ns: int,
        crash_on_run: bool,
        ballast: Any,
        sleep_ns: int = 0,
    ) -> None:
        import numpy as np

        self._np = np
        self._inputs = inputs
        self._num_classes = num_classes
        self._outputs = (TensorInfo("logits", (inputs[0].shape[0], num_classes), "float32"),)
        self._latency_ns = latency_ns
        self._sleep_s = sleep_ns / 1e9
        self._crash_on_run = crash_on_run
        self._ballast = ballast

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        if self._crash_on_run:
            os.abort()
        if self._latency_ns:
            _busy_wait(self._latency_ns)
        if self._sleep_s:
            time.sleep(self._sleep_s)
        x = feeds[self._inputs[0].name]
        flat = x.reshape(x.shape[0], -1)[:, : self._num_classes].astype(self._np.float32)
        if flat.shape[1] < self._num_classes:
            flat = self._np.pad(flat, ((0, 0), (0, self._num_classes - flat.shape[1])))
        return [flat]

    def execution_providers(self) -> Sequence[str]:
        return ("null",)

    def details(self) -> Mapping[str, str]:
        from agent.runtimes.faults import FINDINGS

        return {"latency_ns": str(self._latency_ns), **FINDINGS}

    def close(self) -> None:
        self._ballast = None


def _int_option(config: RuntimeConfig, key: str) -> int:
    raw = config.option(key, "0")
    try:
        return int(float(raw))
    except ValueError:
        raise RuntimeUnsupported(f"null runtime option {key}={raw!r} is not a number") from None


class NullBackend:
    name = NAME
    formats = FORMATS

    def probe(self) -> RuntimeInfo:
        return RuntimeInfo(name=NAME, available=True, version="1", execution_providers=("null",), model_formats=FORMATS)

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        pass

    def load(self, model_path: Path, config: RuntimeConfig) -> NullSession:
        if hostile := config.option("hostile"):
            from agent.runtimes import faults

            faults.act(hostile, model_path)
        crash = config.option("crash")
        if crash == "load":
            os.abort()
        if hang := float(config.option("hang_s", "0") or 0):
            time.sleep(hang)
        _busy_wait(_int_option(config, "load_ns"))
        ballast = None
        if mb := _int_option(config, "allocate_mb"):
            ballast = bytearray(os.urandom(1024)) * (mb * 1024)  # touched, so it counts in RSS
        try:
            spec = json.loads(model_path.read_text())
            inputs = tuple(
                TensorInfo(str(i["name"]), tuple(int(d) for d in i["shape"]), str(i.get("dtype", "float32")))
                for i in spec["inputs"]
            )
            num_classes = int(spec.get("num_classes", 10))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"not a null-runtime model (expected JSON with an 'inputs' list): {type(exc).__name__}: {exc}"
            ) from None
        if not inputs:
            raise ModelLoadError("null-runtime model declares no inputs")
        return NullSession(
            inputs,
            num_classes,
            _int_option(config, "latency_ns"),
            crash == "run",
            ballast,
            sleep_ns=_int_option(config, "sleep_ns"),
        )


BACKEND = NullBackend()
