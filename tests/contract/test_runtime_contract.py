"""One contract for every runtime backend this machine can run, and every model format each one takes.

The cases come from the registry (`agent.runtimes.REGISTRY` x each backend's `formats`), so a backend added
there is held to the contract without editing this file; a runtime whose probe says it is unavailable here
is skipped with the probe's reason. Every case uses the same tiny model (`tests/runtime_models.py`), written
in the case's format from one seeded torch module:

* the backend computes what torch computes: FP32 outputs within ATOL of torch's;
* a real job through a real agent on loopback is measured the same way for all: load time and first
  inference recorded, warm-up done, at least `min_iterations` steady-state samples, RSS before load <=
  RSS after load <= peak, and provenance naming the runtime and the version its probe reports.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model is built with torch (coordinator/dev install)")

from agent.runtimes import REGISTRY, load_backend
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo
from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests import runtime_models
from tests.helpers import make_job

#: FP32 everywhere (OpenVINO is asked for f32 explicitly): only kernels and summation order differ. The
#: tiny model's logits are O(0.1-1), so 1e-4 absolute is ~1e-4 relative or tighter.
ATOL = 1e-4
MIN_ITERATIONS = 20

Built = tuple[Path, tuple[tuple[str, Path], ...]]  # model file, companions (declared name, file)


def _ir(folder: Path) -> Built:
    pytest.importorskip("openvino", reason="building an OpenVINO IR needs openvino")
    xml = runtime_models.build_ir(folder)
    return xml, (("model.bin", xml.with_suffix(".bin")),)


def _tflite(folder: Path) -> Built:
    pytest.importorskip("litert_torch", reason="building a .tflite needs litert-torch (edgebench[convert-tflite])")
    return runtime_models.build_tflite(folder / "model.tflite"), ()


BUILDERS: dict[ModelFormat, Callable[[Path], Built]] = {
    ModelFormat.ONNX: lambda folder: (runtime_models.build_onnx(folder / "model.onnx"), ()),
    ModelFormat.OPENVINO_IR: _ir,
    ModelFormat.TFLITE: _tflite,
    ModelFormat.TORCH_EXPORT: lambda folder: (runtime_models.build_pt2(folder / "model.pt2"), ()),
}

CASES = [(name, fmt) for name in REGISTRY if name != "null" for fmt in load_backend(name).formats]


@cache
def _probe(name: str) -> RuntimeInfo:
    return load_backend(name).probe()


def _require(name: str, fmt: ModelFormat) -> RuntimeInfo:
    info = _probe(name)
    if not info.available:
        pytest.skip(f"{name} is unavailable here: {info.unavailable_reason}")
    if fmt not in BUILDERS:
        pytest.skip(f"tests/runtime_models.py has no builder for {fmt.value} models yet")
    return info


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[ModelFormat], Built]:
    """The tiny model in a format, built on first use (once per module)."""
    cache_: dict[ModelFormat, Built] = {}

    def get(fmt: ModelFormat) -> Built:
        if fmt not in cache_:
            cache_[fmt] = BUILDERS[fmt](tmp_path_factory.mktemp(fmt.value))
        return cache_[fmt]

    return get


@pytest.mark.parametrize(("runtime", "fmt"), CASES, ids=[f"{n}-{f.value}" for n, f in CASES])
def test_outputs_agree_with_torch(runtime: str, fmt: ModelFormat, built: Callable[[ModelFormat], Built]) -> None:
    _require(runtime, fmt)
    model, _companions = built(fmt)
    backend = load_backend(runtime)
    config = RuntimeConfig(runtime, intra_op_threads=1)
    backend.prepare(model, config)
    session = backend.load(model, config)
    (inp,) = session.inputs
    assert inp.dtype == "float32" and inp.shape[1:] == runtime_models.INPUT_SHAPE[1:]
    module = runtime_models.tiny_module()
    for seed in (1, 2):
        x = runtime_models.sample_input(seed=seed)
        (out,) = session.run({inp.name: x})
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out, runtime_models.reference(module, x), rtol=0, atol=ATOL)
    assert list(session.execution_providers())
    session.close()


@pytest.mark.parametrize(("runtime", "fmt"), CASES, ids=[f"{n}-{f.value}" for n, f in CASES])
def test_measured_the_same_way_through_an_agent(
    runtime: str, fmt: ModelFormat, built: Callable[[ModelFormat], Built], agent: LocalAgent
) -> None:
    info = _require(runtime, fmt)
    model, companions = built(fmt)
    with agent.client() as client:
        sha = client.upload(model).sha256
        job = make_job(
            sha,
            fmt=getattr(pb, f"MODEL_FORMAT_{fmt.name}"),
            runtime=runtime,
            min_iterations=MIN_ITERATIONS,
            min_ms=50,
            max_s=20,
        )
        for name, path in companions:
            job.model.companions.add(name=name, sha256=client.upload(path).sha256)
        result = client.run_to_result(job)
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, f"{result.message}\n{result.diagnostics}"
    t = result.timing
    assert t.load_ns > 0 and t.first_inference_ns > 0
    assert t.warmup_iterations >= 3
    assert len(t.latencies_ns) >= MIN_ITERATIONS and min(t.latencies_ns) > 0
    assert t.stop_reason == pb.STOP_REASON_MINIMUMS_MET
    m = result.memory
    assert 0 < m.rss_before_load_bytes <= m.rss_after_load_bytes <= m.peak_rss_bytes
    p = result.provenance
    assert p.runtime_name == runtime and p.runtime_version == info.version and p.runtime_version
    assert list(p.execution_providers) and p.intra_op_threads == 1 and p.batch_size == 1
    assert p.inputs[0].dtype == "float32" and list(p.inputs[0].shape[1:]) == list(runtime_models.INPUT_SHAPE[1:])
