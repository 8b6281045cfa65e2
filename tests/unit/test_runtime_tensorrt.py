"""The TensorRT backend's pure logic, tested without TensorRT or a GPU, plus the real job path on this machine.

TensorRT needs an NVIDIA GPU; on machines without one the backend must say why through the probe and as
an UNSUPPORTED result of a real job. The build/run path itself is exercised by the `hardware` test at the
end (skipped without a GPU) and by benchmarks/tensorrt_gpu_check.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from agent.runtimes.base import ModelLoadError, RuntimeUnsupported
from agent.runtimes.tensorrt import backend, build, probe
from agent.runtimes.tensorrt.backend import BACKEND, TensorRtBackend
from agent.runtimes.tensorrt.build import ParserErrorInfo, format_parser_errors
from agent.runtimes.tensorrt.cache import (
    CacheEntry,
    cache_dir,
    cache_entries,
    engine_cache_key,
    evict,
    model_digest,
    plan_eviction,
    read_sidecar,
)
from agent.runtimes.tensorrt.gpu import GpuIdentity
from agent.runtimes.tensorrt.memory import (
    jetson_gpu_memory,
    nvmap_process_bytes,
    nvml_gpu_memory,
    parse_meminfo,
    pci_bus_id,
)
from agent.runtimes.tensorrt.options import (
    BuildOptions,
    PrecisionPlan,
    ProfileRequest,
    build_options,
    options_from_json,
    options_to_json,
    parse_device_index,
    parse_input_shapes,
    precision_plan,
    profile_request,
    profile_shapes,
)
from agent.runtimes.tensorrt.probe import ProbeFacts, probe_problems
from agent.types import PrecisionHint, RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
TRT10_FLAGS = frozenset({"FP16", "BF16", "INT8", "TF32", "REFIT", "SPARSE_WEIGHTS"})
TRT11_FLAGS = frozenset({"TF32", "REFIT", "SPARSE_WEIGHTS"})  # 11.x removed the weakly typed precision flags
READY = ProbeFacts(tensorrt_version="10.3.0", cuda_python=True, dev_nvidia0=True, cuda_device_count=1)


def config(precision: PrecisionHint = PrecisionHint.UNSPECIFIED, device: str = "", **options: str) -> RuntimeConfig:
    return RuntimeConfig(name="tensorrt", device=device, precision_hint=precision, options=tuple(options.items()))


# ---------------------------------------------------------------------------------------------- probe reasoning


def test_probe_problems_name_every_missing_piece() -> None:
    assert probe_problems(READY) == []
    bare = probe_problems(ProbeFacts(tensorrt_version=None))
    assert len(bare) == 3
    assert bare[0].startswith("no `tensorrt` Python module") and "edgebench[tensorrt]" in bare[0]
    assert "no NVIDIA GPU visible: /dev/nvidia0 does not exist" in bare[1]
    assert "cuda-python is missing" in bare[2]
    broken = dataclasses.replace(READY, tensorrt_version="", tensorrt_error="OSError: libnvinfer.so.10: not found")
    assert probe_problems(broken) == ["the `tensorrt` module failed to import: OSError: libnvinfer.so.10: not found"]
    nvml = dataclasses.replace(READY, nvml_error="NVMLError_DriverNotLoaded: Driver Not Loaded")
    assert probe_problems(nvml) == [
        "no NVIDIA GPU usable: NVML failed to initialise (NVMLError_DriverNotLoaded: Driver Not Loaded); "
        "check the driver"
    ]
    cuda = dataclasses.replace(READY, cuda_error="CUDA cudaGetDeviceCount failed: cudaErrorInsufficientDriver")
    assert probe_problems(cuda) == ["CUDA is not usable: CUDA cudaGetDeviceCount failed: cudaErrorInsufficientDriver"]
    assert "CUDA sees no GPU" in probe_problems(dataclasses.replace(READY, cuda_device_count=0))[0]


def test_a_jetson_needs_no_dev_nvidia0_and_no_nvml() -> None:
    jetson = ProbeFacts(
        tensorrt_version="10.3.0", cuda_python=True, is_tegra=True, nvml_error="not supported", cuda_device_count=1
    )
    assert probe_problems(jetson) == []


def test_probe_on_this_machine_says_why_and_never_raises() -> None:
    info = BACKEND.probe()
    if info.available:
        pytest.skip("this machine has TensorRT and an NVIDIA GPU")
    assert info.unavailable_reason
    assert "; ".join(probe_problems(probe.gather_probe_facts())) == info.unavailable_reason


def test_probe_reports_available_from_complete_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake facts isolate the decision: a machine with everything is available, with TensorRT's version."""
    monkeypatch.setattr(backend, "gather_probe_facts", lambda: READY)
    info = BACKEND.probe()
    assert info.available and info.version == "10.3.0" and info.execution_providers == ("cuda",)

    def broken() -> ProbeFacts:
        raise RuntimeError("boom")

    monkeypatch.setattr(backend, "gather_probe_facts", broken)
    info = BACKEND.probe()
    assert not info.available and "probe failed: RuntimeError: boom" in info.unavailable_reason


# ---------------------------------------------------------------------------------------------- precision -> flags


def test_fp32_is_true_fp32_unless_tf32_is_asked_for() -> None:
    plan = precision_plan(PrecisionHint.UNSPECIFIED, builder_flags=TRT10_FLAGS)
    assert plan == PrecisionPlan("fp32", (), ("TF32",), False, False)
    assert precision_plan(PrecisionHint.FP32, builder_flags=TRT10_FLAGS) == plan
    tf32 = precision_plan(PrecisionHint.FP32, builder_flags=TRT10_FLAGS, tf32=True)
    assert tf32.set_flags == () and tf32.clear_flags == () and tf32.label == "fp32+tf32"


def test_reduced_precisions_map_to_builder_flags_on_tensorrt_10() -> None:
    fp16 = precision_plan(PrecisionHint.FP16, builder_flags=TRT10_FLAGS)
    assert fp16.set_flags == ("FP16",) and fp16.clear_flags == ("TF32",) and not fp16.strongly_typed
    assert precision_plan(PrecisionHint.BF16, builder_flags=TRT10_FLAGS).set_flags == ("BF16",)
    int8 = precision_plan(PrecisionHint.INT8, builder_flags=TRT10_FLAGS)
    assert int8.set_flags == ("INT8",) and int8.requires_qdq and "explicit quantization" in int8.label


def test_strong_typing_takes_precision_from_the_model() -> None:
    for flags, kwargs in ((TRT11_FLAGS, {}), (TRT10_FLAGS, {"strongly_typed": True})):
        int8 = precision_plan(PrecisionHint.INT8, builder_flags=flags, **kwargs)  # type: ignore[arg-type]
        assert int8.set_flags == () and int8.strongly_typed and int8.requires_qdq
        assert precision_plan(PrecisionHint.FP32, builder_flags=flags, **kwargs).strongly_typed  # type: ignore[arg-type]
        with pytest.raises(RuntimeUnsupported, match="send a variant converted to FP16"):
            precision_plan(PrecisionHint.FP16, builder_flags=flags, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RuntimeUnsupported, match="no weakly typed precision flags"):
        precision_plan(PrecisionHint.BF16, builder_flags=TRT11_FLAGS)
    with pytest.raises(RuntimeUnsupported, match="no BF16 builder flag"):
        precision_plan(PrecisionHint.BF16, builder_flags=TRT10_FLAGS - {"BF16"})


def test_build_options_read_and_check_the_job_options() -> None:
    options = build_options(
        config(PrecisionHint.FP16, workspace_mb="512", builder_optimization_level="5", batch="8", max_batch="16"),
        TRT10_FLAGS,
    )
    assert options == BuildOptions(
        PrecisionPlan("fp16", ("FP16",), ("TF32",), False), 512 * 2**20, 5, ProfileRequest(8, 16, ())
    )
    assert build_options(config(), TRT10_FLAGS).describe()["workspace_bytes"] == "default"
    for bad, message in (
        ({"workspace_mb": "-1"}, "workspace_mb='-1' must be an integer >= 0"),
        ({"builder_optimization_level": "6"}, r"builder_optimization_level='6' must be an integer 0\.\.5"),
        ({"tf32": "maybe"}, "tf32='maybe' must be true or false"),
        ({"batch": "0"}, "batch='0' must be an integer >= 1"),
        ({"batch": "8", "max_batch": "4"}, "max_batch=4 is below batch=8"),
    ):
        with pytest.raises(RuntimeUnsupported, match=message):
            build_options(config(**bad), TRT10_FLAGS)


def test_options_travel_to_the_build_process_unchanged() -> None:
    options = build_options(
        config(PrecisionHint.INT8, input_shapes="ids:1x128,mask:1x128", max_batch="64", strongly_typed="true"),
        TRT10_FLAGS,
    )
    sent = json.loads(json.dumps(options_to_json(options)))
    assert options_from_json(sent) == options


# ---------------------------------------------------------------------------------------------- profile shapes


def test_profile_request_defaults_and_input_shapes() -> None:
    assert profile_request(config()) == ProfileRequest(1, 32, ())
    assert profile_request(config(batch="64")) == ProfileRequest(64, 64, ())
    assert parse_input_shapes(" mask:1x128 , ids:2X128 ") == (("ids", (2, 128)), ("mask", (1, 128)))
    assert parse_input_shapes("scope:encoder:1x4") == (("scope:encoder", (1, 4)),)
    for bad in ("ids", "ids:", "ids:1xa", ":1x2", "ids:0x3"):
        with pytest.raises(RuntimeUnsupported, match="must look like name:1x3x224x224"):
            parse_input_shapes(bad)


def test_static_inputs_need_no_profile_and_a_dynamic_batch_gets_one() -> None:
    assert profile_shapes([("x", (1, 3, 224, 224))], ProfileRequest()) == {}
    shapes = profile_shapes([("x", (-1, 3, 32, 32)), ("k", (4,))], ProfileRequest(8, 16))
    assert shapes == {"x": ((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))}


def test_other_dynamic_axes_need_input_shapes() -> None:
    inputs = [("ids", (-1, -1)), ("mask", (-1, -1))]
    with pytest.raises(RuntimeUnsupported, match=r"'ids' \(\?x\?\) has dynamic axes \[1\].*input_shapes=ids:1x1"):
        profile_shapes(inputs, ProfileRequest())
    request = ProfileRequest(4, 8, parse_input_shapes("ids:4x128,mask:4x128"))
    assert profile_shapes(inputs, request)["ids"] == ((1, 128), (4, 128), (8, 128))
    # A named shape also pins a static-batch input, and cannot contradict a fixed axis.
    assert profile_shapes([("x", (2, -1))], ProfileRequest(1, 32, (("x", (2, 7)),))) == {"x": ((2, 7), (2, 7), (2, 7))}
    with pytest.raises(RuntimeUnsupported, match="where axis 0 is 2"):
        profile_shapes([("x", (2, -1))], ProfileRequest(1, 32, (("x", (3, 7)),)))
    with pytest.raises(RuntimeUnsupported, match="3 dimensions; the model declares 2"):
        profile_shapes([("x", (2, -1))], ProfileRequest(1, 32, (("x", (2, 7, 1)),)))
    with pytest.raises(RuntimeUnsupported, match="names nope, which the model does not have; its inputs: x"):
        profile_shapes([("x", (-1, 3))], ProfileRequest(1, 32, (("nope", (1, 3)),)))


# ---------------------------------------------------------------------------------------------- cache key


def test_cache_key_is_a_pure_function_of_everything_an_engine_depends_on() -> None:
    gpu = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))
    options = build_options(config(PrecisionHint.FP16, batch="8"), TRT10_FLAGS)
    key = engine_cache_key("10.3.0", gpu, options, "a" * 64)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == engine_cache_key("10.3.0", GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0)), options, "a" * 64)
    variants = [
        engine_cache_key("10.4.0", gpu, options, "a" * 64),
        engine_cache_key("10.3.0", dataclasses.replace(gpu, name="Orin (nvgpu)"), options, "a" * 64),
        engine_cache_key("10.3.0", dataclasses.replace(gpu, compute_capability=(8, 7)), options, "a" * 64),
        engine_cache_key("10.3.0", gpu, options, "b" * 64),
        engine_cache_key("10.3.0", gpu, build_options(config(PrecisionHint.FP32, batch="8"), TRT10_FLAGS), "a" * 64),
        engine_cache_key("10.3.0", gpu, build_options(config(PrecisionHint.FP16, batch="4"), TRT10_FLAGS), "a" * 64),
        engine_cache_key("10.3.0", gpu, dataclasses.replace(options, workspace_bytes=2**30), "a" * 64),
        engine_cache_key("10.3.0", gpu, dataclasses.replace(options, optimization_level=5), "a" * 64),
        engine_cache_key(
            "10.3.0", gpu, build_options(config(PrecisionHint.FP16, batch="8", tf32="true"), TRT10_FLAGS), "a" * 64
        ),
    ]
    assert len({key, *variants}) == len(variants) + 1
    # Strongly typed FP32 and INT8 set the same flags, but only INT8 insists on Q/DQ: different engines.
    fp32 = build_options(config(PrecisionHint.FP32), TRT11_FLAGS)
    int8 = build_options(config(PrecisionHint.INT8), TRT11_FLAGS)
    assert engine_cache_key("11.0", gpu, fp32, "a" * 64) != engine_cache_key("11.0", gpu, int8, "a" * 64)


def test_model_digest_covers_external_data(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), model, save_as_external_data=True, location="weights.bin", size_threshold=0)
    first = model_digest(model)
    assert first == model_digest(model)
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\x00" * data.stat().st_size)
    assert model_digest(model) != first, "new weights in the same file name must give a new key"
    inline = tmp_path / "inline.onnx"
    onnx.save(helper.make_model(graph), inline)
    assert model_digest(inline) == hashlib.sha256(inline.read_bytes()).hexdigest()


def test_the_cache_folder_is_beside_the_job_folders_and_no_job_can_move_it(tmp_path: Path) -> None:
    model = tmp_path / "jobs" / "0123456789abcdef01234567" / "model.onnx"
    assert cache_dir(model) == tmp_path / "jobs" / "tensorrt-engines"
    for value in (str(tmp_path / "elsewhere"), "engines", ""):
        with pytest.raises(RuntimeUnsupported, match="engine_cache_dir is an agent setting, not a job option"):
            build_options(config(engine_cache_dir=value), TRT10_FLAGS)


def test_a_job_sending_engine_cache_dir_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """On any machine, GPU or not: the refusal comes first, and nothing is created where the job pointed."""
    model = tmp_path / "jobs" / "0123456789abcdef01234567" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"unused")
    target = tmp_path / "chosen-by-the-job"
    for step in (BACKEND.prepare, BACKEND.load):
        with pytest.raises(RuntimeUnsupported, match="engine_cache_dir is an agent setting, not a job option"):
            step(model, config(engine_cache_dir=str(target)))
    assert not target.exists() and not cache_dir(model).exists()


def test_a_cached_engine_is_used_only_when_its_hash_matches(tmp_path: Path) -> None:
    engine = tmp_path / "k.engine"
    engine.write_bytes(b"serialized engine")
    meta = {"engine_sha256": hashlib.sha256(b"serialized engine").hexdigest(), "engine_build_s": "1.5"}
    engine.with_suffix(".json").write_text(json.dumps(meta))
    assert read_sidecar(engine) == meta
    engine.write_bytes(b"serialized engin")  # truncated
    assert read_sidecar(engine) is None
    assert not engine.exists() and not engine.with_suffix(".json").exists(), "a corrupt entry is removed"
    assert read_sidecar(engine) is None


def _key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _entry(folder: Path, n: int, size: int, age_s: float, now: float) -> str:
    """A cache entry (engine + sidecar) last used `age_s` seconds before `now`."""
    key = _key(n)
    for path, data in ((folder / f"{key}.engine", b"e" * size), (folder / f"{key}.json", b"{}")):
        path.write_bytes(data)
        os.utime(path, (now - age_s, now - age_s))
    return key


def test_eviction_plan_is_least_recently_used_first_and_never_touches_kept_engines() -> None:
    def e(n: int, nbytes: int, used: int) -> CacheEntry:
        return CacheEntry(_key(n), (), nbytes, used)

    entries = [e(1, 10, 100), e(2, 10, 400), e(3, 10, 300), e(4, 10, 200)]
    assert [v.key for v in plan_eviction(entries, set(), 2, 10**9)] == [_key(4), _key(1)]
    # The kept engine is the oldest here, yet stays; it counts toward the bound first.
    assert [v.key for v in plan_eviction(entries, {_key(1)}, 2, 10**9)] == [_key(3), _key(4)]
    # A byte cap: once an entry does not fit, it and every older one go (strict LRU, no skipping).
    sized = [e(1, 50, 100), e(2, 30, 400), e(3, 80, 300), e(4, 10, 200)]
    assert [v.key for v in plan_eviction(sized, set(), 10, 100)] == [_key(3), _key(4), _key(1)]
    # A kept engine larger than the cap alone is still kept; everything else goes.
    assert [v.key for v in plan_eviction(sized, {_key(3)}, 10, 60)] == [_key(2), _key(4), _key(1)]
    assert plan_eviction(entries, set(), 4, 40) == []


def test_evict_bounds_the_folder_and_removes_only_cache_files(tmp_path: Path) -> None:
    now = time.time()
    keys = [_entry(tmp_path, n, size=100, age_s=1000 - n * 10, now=now) for n in range(6)]  # keys[5] newest
    in_use = keys[0]  # the oldest, but the running job's
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not an engine")
    old_temp = tmp_path / f".{_key(99)}.engine.abc123.tmp"
    old_temp.write_bytes(b"half an engine")
    os.utime(old_temp, (now - 2 * 3600, now - 2 * 3600))
    fresh_temp = tmp_path / f".{_key(98)}.engine.def456.tmp"  # a build may be writing it
    fresh_temp.write_bytes(b"half an engine")

    evicted = evict(tmp_path, {in_use}, max_engines=3, max_bytes=10**9, now=now)
    assert sorted(evicted) == sorted(keys[1:4])
    assert {e.key for e in cache_entries(tmp_path)} == {in_use, keys[4], keys[5]}
    assert unrelated.exists() and fresh_temp.exists() and not old_temp.exists()

    # Byte cap: each entry is 102 bytes (engine + sidecar), so 250 bytes hold the kept one and one more.
    assert evict(tmp_path, {in_use}, max_engines=10, max_bytes=250, now=now) == [keys[4]]
    assert {e.key for e in cache_entries(tmp_path)} == {in_use, keys[5]}
    assert evict(tmp_path / "missing", {in_use}) == [], "a missing folder is not an error"


def test_prepare_builds_once_hits_after_and_keeps_the_cache_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare with TensorRT and CUDA faked: the build helper is asked once per engine, a hit refreshes
    the engine's time, and eviction runs after each prepare without removing the engine about to load."""
    flags = types.SimpleNamespace(__members__=dict.fromkeys(TRT10_FLAGS))
    monkeypatch.setattr(backend, "gather_probe_facts", lambda: READY)
    monkeypatch.setattr(backend, "import_tensorrt", lambda: types.SimpleNamespace(BuilderFlag=flags))
    monkeypatch.setattr(backend, "import_cudart", lambda: None)
    monkeypatch.setattr(backend, "gpu_identity", lambda _cudart, _index: (GpuIdentity("Fake GPU", (8, 7)), None))
    built: list[str] = []

    def fake_build(request: dict[str, object]) -> None:
        engine = Path(str(request["engine"]))
        data = b"engine " + engine.stem.encode()
        engine.write_bytes(data)
        sidecar = {**request["sidecar"], "engine_sha256": hashlib.sha256(data).hexdigest()}  # type: ignore[dict-item]
        engine.with_suffix(".json").write_text(json.dumps(sidecar))
        built.append(engine.stem)

    monkeypatch.setattr(backend, "run_build_helper", fake_build)
    trt = TensorRtBackend()
    trt.max_cached_engines = 2
    jobs = tmp_path / "jobs"
    models = []
    for n in range(3):
        model = jobs / f"job{n}" / "model.onnx"
        model.parent.mkdir(parents=True)
        model.write_bytes(f"model {n}".encode())
        models.append(model)

    trt.prepare(models[0], config())
    trt.prepare(models[0], config())
    assert len(built) == 1 and trt._prepared[models[0]].built_here is False
    first = jobs / "tensorrt-engines" / f"{built[0]}.engine"
    os.utime(first, (1, 1))  # long unused ...
    trt._prepared.clear()
    trt.prepare(models[1], config())
    trt.prepare(models[0], config())  # ... until this job uses it again: a hit, and the newest entry
    assert len(built) == 2 and first.exists()
    trt._prepared.clear()
    trt.prepare(models[2], config())  # a third engine: the least recently used one (models[1]'s) goes
    assert len(built) == 3
    assert {e.key for e in cache_entries(jobs / "tensorrt-engines")} == {built[0], built[2]}
    # Every engine this process prepared and has not loaded yet is in use: even beyond the bound, both stay.
    trt.max_cached_engines = 1
    trt.prepare(models[1], config())  # evicted above, so built again
    assert len(built) == 4 and built[3] == built[1]
    assert {e.key for e in cache_entries(jobs / "tensorrt-engines")} == {built[2], built[3]}
    assert set(trt._prepared) == {models[2], models[1]}


# ---------------------------------------------------------------------------------------------- devices and memory


def test_device_index_and_pci_bus_id() -> None:
    assert [parse_device_index(d) for d in ("", "GPU", "cuda", "cuda:1", "GPU:2", " 3 ")] == [0, 0, 0, 1, 2, 3]
    with pytest.raises(RuntimeUnsupported, match="not a GPU index"):
        parse_device_index("NPU")
    assert pci_bus_id(0, 0x65, 0) == "00000000:65:00.0"


def test_nvml_memory_prefers_this_processes_figure() -> None:
    assert nvml_gpu_memory(42, [(7, 100), (42, 300), (42, 50)], 1000, 2000) == (
        350,
        "nvml: this process's GPU memory after load",
    )
    figure, method = nvml_gpu_memory(42, [(42, None)], 1000, 1800)  # NVML cannot tell (e.g. some vGPUs)
    assert figure == 800 and "device memory used after load minus before" in method
    assert nvml_gpu_memory(42, [(7, 100)], 1000, 900)[0] == 0  # another process freed memory meanwhile
    assert nvml_gpu_memory(42, [], None, None)[0] is None


MEMINFO = """MemTotal:        7999488 kB
MemFree:          512000 kB
MemAvailable:    5000000 kB
NvMapMemFree:      94784 kB
NvMapMemUsed:     805068 kB
HugePages_Total:       0
"""
CLIENTS = """CLIENT                        PROCESS      PID        SIZE
user                       gnome-shell     1435      39044K
user                           python3     4242     210000K
user                           python3     4242        100K
  0x0000000012 1024K
total                                              249144K
"""


def test_jetson_meminfo_and_nvmap_parsing() -> None:
    info = parse_meminfo(MEMINFO)
    assert info["NvMapMemUsed"] == 805068 * 1024 and info["HugePages_Total"] == 0
    assert nvmap_process_bytes(CLIENTS, 4242) == 210100 * 1024
    assert nvmap_process_bytes(CLIENTS, 1) is None
    assert nvmap_process_bytes("", 4242) is None


def test_jetson_memory_uses_the_best_counter_available() -> None:
    before = parse_meminfo(MEMINFO)
    after = {
        **before,
        "NvMapMemUsed": before["NvMapMemUsed"] + 64 * 2**20,
        "MemAvailable": before["MemAvailable"] - 2**27,
    }
    assert jetson_gpu_memory(4242, before, after, CLIENTS) == (
        210100 * 1024,
        "jetson nvmap clients: this process's GPU allocations after load",
    )
    figure, method = jetson_gpu_memory(4242, before, after, None)  # debugfs is root-only
    assert figure == 64 * 2**20 and "NvMapMemUsed" in method
    plain = {k: v for k, v in before.items() if not k.startswith("NvMap")}
    plain_after = {k: v for k, v in after.items() if not k.startswith("NvMap")}
    figure, method = jetson_gpu_memory(4242, plain, plain_after, None)
    assert figure == 2**27 and "shared RAM" in method
    assert jetson_gpu_memory(4242, {}, {}, None)[0] is None


def test_parser_errors_name_node_and_operator() -> None:
    message = format_parser_errors(
        [
            ParserErrorInfo(
                "Assertion failed: axes must be an initializer", "UNSUPPORTED_NODE", 3, "/Unsqueeze_2", "Unsqueeze"
            ),
            ParserErrorInfo("bad", node=7),
        ]
    )
    assert (
        "operator Unsqueeze, node '/Unsqueeze_2': Assertion failed: axes must be an initializer [UNSUPPORTED_NODE]"
        in message
    )
    assert "node #7: bad" in message and "edgebench analyze" in message
    many = format_parser_errors([ParserErrorInfo(f"e{i}") for i in range(8)], limit=2)
    assert "(and 6 more)" in many
    assert "without saying why" in format_parser_errors([])


# ---------------------------------------------------------------------------------------------- this machine


def test_prepare_and_load_without_tensorrt_are_unsupported_with_the_reasons(tmp_path: Path) -> None:
    if BACKEND.probe().available:
        pytest.skip("this machine has TensorRT and an NVIDIA GPU")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"unused")
    for step in (BACKEND.prepare, BACKEND.load):
        with pytest.raises(RuntimeUnsupported, match="runtime 'tensorrt' is unavailable on this device: ") as err:
            step(model, config())
        assert BACKEND.probe().unavailable_reason in str(err.value)


def test_the_build_helper_reports_a_missing_tensorrt_as_unsupported(tmp_path: Path) -> None:
    """The helper process protocol, for real: its error line becomes the exception the job maps."""
    if probe.gather_probe_facts().tensorrt_version is not None:
        pytest.skip("tensorrt is installed here")
    options = build_options(config(), TRT10_FLAGS)
    request = {
        "model": str(tmp_path / "model.onnx"),
        "engine": str(tmp_path / "cache" / "k.engine"),
        "device": 0,
        "options": options_to_json(options),
        "sidecar": {},
    }
    with pytest.raises(RuntimeUnsupported, match="runtime 'tensorrt' is unavailable on this device: No module named"):
        build.run_build_helper(request)
    assert not (tmp_path / "cache").exists()
    usage = subprocess.run(
        [sys.executable, "-m", "agent.runtimes.tensorrt.build"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.slow
def test_a_tensorrt_job_on_this_machine_is_unsupported_with_the_reason(agent, models) -> None:  # type: ignore[no-untyped-def]
    """The real path: a job asking for TensorRT goes through the agent, the job process and the harness."""
    from protos.edgebench.agent.v1 import agent_pb2 as pb
    from tests.helpers import make_job

    if BACKEND.probe().available:
        pytest.skip("this machine has TensorRT and an NVIDIA GPU")
    with agent.client() as client:
        runtimes = {r.name: r for r in client.device_info().runtimes}
        sha = client.upload(models["mlp"]).sha256
        job = make_job(sha, runtime="tensorrt")
        job.runtime.precision_hint = pb.PRECISION_HINT_FP16
        result = client.run_to_result(job, timeout_s=120)
    assert not runtimes["tensorrt"].available
    reason = runtimes["tensorrt"].unavailable_reason
    assert result.status == pb.BENCHMARK_STATUS_UNSUPPORTED, result.message
    assert result.message == f"runtime 'tensorrt' is unavailable on this device: {reason}"
    assert "no `tensorrt` Python module" in reason or "no NVIDIA GPU visible" in reason
    assert result.provenance.runtime_name == "tensorrt" and not result.HasField("timing")


@pytest.mark.hardware
def test_tensorrt_runs_a_model_and_reuses_its_engine(agent, models) -> None:  # type: ignore[no-untyped-def]
    """On a machine with an NVIDIA GPU and TensorRT: outputs match the reference, the second job hits the cache."""
    from protos.edgebench.agent.v1 import agent_pb2 as pb
    from tests.helpers import make_job

    if not BACKEND.probe().available:
        pytest.skip(f"TensorRT is unavailable here: {BACKEND.probe().unavailable_reason}")
    with agent.client() as client:
        sha = client.upload(models["mlp"]).sha256
        data = client.upload(models["mlp_data"]).sha256
        first = client.run_to_result(
            make_job(sha, runtime="tensorrt", dataset_sha=data, batch=8, accuracy=True, options={"batch": "8"})
        )
        second = client.run_to_result(
            make_job(sha, runtime="tensorrt", dataset_sha=data, batch=8, options={"batch": "8"})
        )
    for result in (first, second):
        assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message + result.diagnostics
    assert first.accuracy.cosine_similarity > 0.9999 and first.accuracy.top1_agreement == 1.0
    assert first.provenance.runtime_details["engine_cache"] == "built in this job"
    assert second.provenance.runtime_details["engine_cache"] == "hit"
    assert second.provenance.runtime_details["engine_key"] == first.provenance.runtime_details["engine_key"]
    assert first.provenance.runtime_details["gpu_memory_bytes"] != ""


def test_build_errors_from_the_helper_keep_their_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit status 3 is the model's fault (FAILED), 4 the request's (UNSUPPORTED)."""

    def fake_run(status: int, line: str):  # type: ignore[no-untyped-def]
        def run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess([], status, "", f"[TRT] log line\n{build.ERROR_PREFIX}{line}\n")

        return run

    monkeypatch.setattr(build.subprocess, "run", fake_run(3, "TensorRT's ONNX parser rejected the model: x"))
    with pytest.raises(ModelLoadError, match="parser rejected"):
        build.run_build_helper({})
    monkeypatch.setattr(build.subprocess, "run", fake_run(4, "INT8 with TensorRT needs a model quantized"))
    with pytest.raises(RuntimeUnsupported, match="INT8"):
        build.run_build_helper({})
    monkeypatch.setattr(
        build.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess([], -11, "", "Segmentation fault\n")
    )
    with pytest.raises(ModelLoadError, match="exited with status -11: Segmentation fault"):
        build.run_build_helper({})
