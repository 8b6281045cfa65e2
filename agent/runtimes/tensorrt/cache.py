"""The engine cache: where engines live, what they are keyed by, when a cached one may be used, and how the
folder stays bounded.

* Place: `tensorrt-engines` beside the job folders in the agent's work directory. The agent decides; a job
  cannot (`options.refuse_agent_settings`).
* Key: sha256 of a canonical JSON of everything an engine depends on (TensorRT version, GPU name and compute
  capability, build options, the model's sha256 with its external data). Pure.
* Integrity: an engine is used only when its sidecar (`<key>.json`) names its sha256 and the file matches; a
  corrupt or half-written entry is removed and rebuilt. Files are written atomically.
* Bound: at most MAX_ENGINES engines and MAX_BYTES bytes; after each prepare the least recently used entries
  go first (using an engine refreshes its time), never one the running job uses. A temporary file left by a
  killed build is removed once it is STALE_TEMP_S old.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import stat
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtimes.onnx_guard import external_locations
from agent.runtimes.tensorrt.gpu import GpuIdentity
from agent.runtimes.tensorrt.options import BuildOptions

CACHE_DIRNAME = "tensorrt-engines"
#: Bumped when the way engines are built changes, so old cached engines are not reused.
BUILD_RECIPE_VERSION = 1
MAX_ENGINES = 16
MAX_BYTES = 8 * 2**30
STALE_TEMP_S = 3600.0
_KEY = re.compile(r"^[0-9a-f]{64}$")
_SUFFIXES = (".engine", ".json")


def cache_dir(model_path: Path) -> Path:
    """Beside the job folders: the model sits in <workdir>/jobs/<job>/, so this is <workdir>/jobs/tensorrt-engines."""
    return model_path.parent.parent / CACHE_DIRNAME


def engine_cache_key(trt_version: str, gpu: GpuIdentity, options: BuildOptions, model_sha256: str) -> str:
    """The cache key: sha256 of a canonical JSON of everything an engine depends on. Pure.

    The profile enters as the request (batch range and named shapes), which with the model's hash
    determines the profile shapes exactly."""
    material = {
        "recipe": BUILD_RECIPE_VERSION,
        "tensorrt": trt_version,
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "set": sorted(options.precision.set_flags),
        "clear": sorted(options.precision.clear_flags),
        "strongly_typed": options.precision.strongly_typed,
        "requires_qdq": options.precision.requires_qdq,
        "workspace_bytes": options.workspace_bytes,
        "optimization_level": options.optimization_level,
        "profile": [
            options.profile.opt_batch,
            options.profile.max_batch,
            [[n, list(s)] for n, s in options.profile.shapes],
        ],
        "model": model_sha256,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_digest(model_path: Path) -> str:
    """sha256 of the model file and of every external-data file it names (name and content). Streams the
    files: the job process's peak RSS must not grow by a copy of the model before its load is measured."""
    digest = hashlib.sha256()
    with model_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                has_external = mm.find(b"location") >= 0  # every external reference carries this key
        except ValueError:  # empty file
            has_external = False
    locations: list[str] = []
    if has_external:
        try:
            locations = sorted({loc for _, loc in external_locations(model_path.read_bytes())})
        except Exception:  # not parseable here: the parser will say so; the file's own hash still keys it
            locations = []
    for location in locations:
        digest.update(b"\0" + location.encode())
        path = model_path.parent / location
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The cached engine's metadata when the engine is present and its sha256 matches; a corrupt or
    half-written entry is removed (and rebuilt by the caller)."""
    sidecar_path = engine_path.with_suffix(".json")
    try:
        meta = json.loads(sidecar_path.read_text())
        expected = str(meta["engine_sha256"])
        digest = hashlib.sha256()
        with engine_path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, ValueError, KeyError, TypeError):
        meta, expected, digest = None, "", None
    if meta is not None and digest is not None and digest.hexdigest() == expected and isinstance(meta, dict):
        return meta
    for stale in (engine_path, sidecar_path):
        with contextlib.suppress(OSError):
            stale.unlink()
    return None


def mark_used(engine_path: Path) -> None:
    """Refresh the engine's time, which is what eviction orders by (access times are often not kept)."""
    with contextlib.suppress(OSError):
        os.utime(engine_path)


# ------------------------------------------------------------------------------ bounded size


@dataclass(frozen=True)
class CacheEntry:
    key: str
    files: tuple[Path, ...]  # the engine and its sidecar, whichever exist
    nbytes: int
    last_used_ns: int


def cache_entries(folder: Path) -> list[CacheEntry]:
    """The entries in a cache folder: `<key>.engine` and `<key>.json` regular files grouped by key."""
    found: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for path in folder.iterdir():
        if path.suffix not in _SUFFIXES or not _KEY.match(path.stem):
            continue
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.setdefault(path.stem, []).append((path, info))
    return [
        CacheEntry(
            key,
            tuple(sorted(p for p, _ in files)),
            sum(s.st_size for _, s in files),
            max(s.st_mtime_ns for _, s in files),
        )
        for key, files in sorted(found.items())
    ]


def plan_eviction(
    entries: Iterable[CacheEntry], keep: Collection[str], max_engines: int, max_bytes: int
) -> list[CacheEntry]:
    """The entries to remove so that at most `max_engines` entries and `max_bytes` bytes remain: the least
    recently used ones, never one whose key is in `keep` (those count toward the bounds first). Pure."""
    protected = [e for e in entries if e.key in keep]
    others = sorted((e for e in entries if e.key not in keep), key=lambda e: (-e.last_used_ns, e.key))
    count = len(protected)
    total = sum(e.nbytes for e in protected)
    victims: list[CacheEntry] = []
    for entry in others:  # newest first; once one does not fit, it and every older one go
        if not victims and count + 1 <= max_engines and total + entry.nbytes <= max_bytes:
            count += 1
            total += entry.nbytes
        else:
            victims.append(entry)
    return victims


def evict(
    folder: Path,
    keep: Collection[str],
    *,
    max_engines: int = MAX_ENGINES,
    max_bytes: int = MAX_BYTES,
    now: float | None = None,
) -> list[str]:
    """Bound the cache folder (see `plan_eviction`) and remove stale temporary files; returns the evicted
    keys. Never raises: a cache that cannot be tidied still works."""
    try:
        entries = cache_entries(folder)
    except OSError:
        return []
    victims = plan_eviction(entries, keep, max_engines, max_bytes)
    for entry in victims:
        for path in entry.files:
            with contextlib.suppress(OSError):
                path.unlink()
    cutoff = (time.time() if now is None else now) - STALE_TEMP_S
    with contextlib.suppress(OSError):
        for path in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    path.unlink()
    return [e.key for e in victims]
