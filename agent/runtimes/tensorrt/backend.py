"""The TensorRT backend object: probe, prepare (engine from the cache, else built by the helper process), load.

See the package docstring for the phases; this module only wires the parts together.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.runtimes.base import ModelLoadError, RuntimeUnsupported, unavailable
from agent.runtimes.onnx_guard import check_external_data
from agent.runtimes.tensorrt.build import run_build_helper
from agent.runtimes.tensorrt.cache import (
    MAX_BYTES,
    MAX_ENGINES,
    cache_dir,
    engine_cache_key,
    evict,
    mark_used,
    model_digest,
    read_sidecar,
)
from agent.runtimes.tensorrt.gpu import gpu_identity, import_cudart, import_tensorrt
from agent.runtimes.tensorrt.options import build_options, options_to_json, parse_device_index, refuse_agent_settings
from agent.runtimes.tensorrt.probe import ProbeFacts, gather_probe_facts, probe_problems
from agent.runtimes.tensorrt.session import Prepared, TensorRtSession, open_session
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo

NAME = "tensorrt"
FORMATS = (ModelFormat.ONNX,)


class TensorRtBackend:
    name = NAME
    formats = FORMATS
    #: Bounds of the engine cache (an engine this job uses is kept even beyond them).
    max_cached_engines = MAX_ENGINES
    max_cache_bytes = MAX_BYTES

    def __init__(self) -> None:
        self._prepared: dict[Path, Prepared] = {}

    def probe(self) -> RuntimeInfo:
        try:
            facts = gather_probe_facts()
        except Exception as exc:  # the probe never raises
            return unavailable(NAME, FORMATS, f"probe failed: {type(exc).__name__}: {exc}")
        problems = probe_problems(facts)
        version = facts.tensorrt_version or ""
        if problems:
            return unavailable(NAME, FORMATS, "; ".join(problems), version)
        return RuntimeInfo(
            name=NAME,
            available=True,
            version=version,
            execution_providers=("jetson-igpu" if facts.is_tegra else "cuda",),
            model_formats=FORMATS,
        )

    def _require_available(self) -> ProbeFacts:
        facts = gather_probe_facts()
        problems = probe_problems(facts)
        if problems:
            raise RuntimeUnsupported(f"runtime 'tensorrt' is unavailable on this device: {'; '.join(problems)}")
        return facts

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        refuse_agent_settings(config)
        facts = self._require_available()
        check_external_data(model_path)
        trt = import_tensorrt()
        cudart = import_cudart()
        options = build_options(config, frozenset(trt.BuilderFlag.__members__))
        index = parse_device_index(config.device)
        gpu, _ = gpu_identity(cudart, index)
        digest = model_digest(model_path)
        key = engine_cache_key(str(facts.tensorrt_version), gpu, options, digest)
        cache = cache_dir(model_path)
        engine_path = cache / f"{key}.engine"
        sidecar = read_sidecar(engine_path)
        built_here = False
        if sidecar is None:
            cache.mkdir(parents=True, exist_ok=True)
            meta = {
                "key": key,
                "tensorrt": facts.tensorrt_version,
                "gpu": gpu.name,
                "compute_capability": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                "model_sha256": digest,
                "options": options_to_json(options),
                "built_at_ns": time.time_ns(),
            }
            run_build_helper(
                {
                    "model": str(model_path),
                    "engine": str(engine_path),
                    "device": index,
                    "options": options_to_json(options),
                    "sidecar": meta,
                }
            )
            sidecar = read_sidecar(engine_path)
            if sidecar is None:
                raise ModelLoadError(f"the engine built for this job is missing or corrupt in {cache}")
            built_here = True
        else:
            mark_used(engine_path)
        self._prepared[model_path] = Prepared(engine_path, built_here, sidecar, gpu, index, options)
        # Bound the cache, keeping every engine this job process has prepared and not yet loaded.
        keep = {p.engine_path.stem for p in self._prepared.values()}
        evicted = evict(cache, keep, max_engines=self.max_cached_engines, max_bytes=self.max_cache_bytes)
        if evicted:
            print(
                f"tensorrt engine cache: evicted {len(evicted)} least recently used engine(s) to stay within bounds",
                file=sys.stderr,
            )

    def load(self, model_path: Path, config: RuntimeConfig) -> TensorRtSession:
        prepared = self._prepared.pop(model_path, None)
        if prepared is None:
            self.prepare(model_path, config)
            prepared = self._prepared.pop(model_path)
        return open_session(prepared)


BACKEND = TensorRtBackend()
