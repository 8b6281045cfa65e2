"""Core ML backend: `.mlpackage` models predicted with coremltools on macOS.

The artifact is an `.mlpackage` directory shipped as one zip file (`model.mlpackage.zip`). `prepare`
extracts it into the job's folder after checking every member first, before anything reads it: no
absolute paths, no '..', no symlinks or other special files, a capped member count and total size, and
one package root (the package's own contents, or a single `<name>.mlpackage/` folder) holding a
`Manifest.json`. A hostile archive is a ModelLoadError naming the member.

Prediction needs macOS (coremltools' Core ML bindings exist only there; it converts models anywhere).
Compute units come from the option `compute_units` or `RuntimeConfig.device`: ALL (default), CPU_ONLY,
CPU_AND_GPU, CPU_AND_NE. ONNX models can also use Core ML through the onnxruntime backend with
`execution_provider=CoreMLExecutionProvider` where the installed onnxruntime has it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import stat
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from agent.runtimes.base import Array, DeclaredIO, ModelLoadError, RuntimeUnsupported, unavailable
from agent.runtimes.zip_check import DEFLATED, STORED, ZipLayoutError, read_members
from agent.types import ModelFormat, RuntimeConfig, RuntimeInfo, TensorInfo

NAME = "coreml"
FORMATS = (ModelFormat.COREML,)
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
PACKAGE_DIRNAME = "model.mlpackage"
MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 * 2**30
_CHUNK = 1 << 20

#: Core ML's ArrayFeatureType.ArrayDataType values -> numpy dtype names.
COREML_DTYPES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}


# ============================================================================== archive checks (pure + extraction)


def _member_problem(info: zipfile.ZipInfo) -> str:
    """Why this member may not be extracted, or ''."""
    name = info.filename
    if not name or "\0" in name:
        return "has an empty or NUL-containing name"
    if "\\" in name:
        return "uses backslashes in its path"
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in path.parts:
        return "climbs out of the package with '..'"
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file or folder"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return ""


def _is_finder_extra(name: str) -> bool:
    """macOS Finder's "Compress" adds AppleDouble files under __MACOSX/; they are checked, then skipped."""
    return name == "__MACOSX" or name.startswith("__MACOSX/")


def check_archive(
    infos: Sequence[zipfile.ZipInfo], *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES
) -> str:
    """Check every member of the archive and return the package root prefix ('' or '<name>.mlpackage/').

    Raises ModelLoadError naming the first bad member. Pure: looks only at the zip's directory."""
    if len(infos) > max_members:
        raise ModelLoadError(
            f"the Core ML archive has {len(infos)} members, over the cap of {max_members}; refused before extraction"
        )
    total = 0
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise ModelLoadError(
                f"the Core ML archive's member {info.filename[:200]!r} {problem}; refused before extraction. "
                "Zip the .mlpackage folder itself (plain files and folders only)"
            )
        total += info.file_size
        if total > max_bytes:
            raise ModelLoadError(
                f"the Core ML archive unpacks to more than {max_bytes} bytes (at member {info.filename[:200]!r}); "
                "refused before extraction"
            )
    names = {info.filename.rstrip("/") for info in infos if not _is_finder_extra(info.filename)}
    if "Manifest.json" in names:
        root = ""
    else:
        roots = {PurePosixPath(n).parts[0] for n in names if n}
        candidates = [r for r in roots if r.endswith(".mlpackage") and f"{r}/Manifest.json" in names]
        if len(roots) != 1 or len(candidates) != 1:
            raise ModelLoadError(
                "the Core ML archive holds no .mlpackage: expected Manifest.json at its top level or inside a "
                f"single <name>.mlpackage/ folder; top-level entries: {', '.join(sorted(roots)[:10]) or 'none'}"
            )
        root = candidates[0] + "/"
    return root


def extract_package(
    archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_TOTAL_BYTES
) -> Path:
    """Check the whole archive, then extract the package into `dest` (replaced); return `dest`.

    Files are created exclusively (never through an existing path or link) and never exceed the sizes the
    archive declared, which the check capped. The layout is checked first (`zip_check.read_members`), so
    the members `zipfile` extracts are the ones any other zip reader would see."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"the Core ML model is not a zip archive ({exc}); send the .mlpackage folder zipped"
        ) from None
    try:
        with archive.open("rb") as f:
            read_members(f, methods=frozenset({STORED, DEFLATED}), max_members=max_members)
    except ZipLayoutError as exc:
        zf.close()
        raise ModelLoadError(
            f"the Core ML archive was refused before extraction: {exc}. Zip the .mlpackage folder again "
            "(stored or deflated members, no archive comment, nothing before or after the archive)"
        ) from None
    with zf:
        infos = zf.infolist()
        root = check_archive(infos, max_members=max_members, max_bytes=max_bytes)
        if dest.exists() or dest.is_symlink():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        dest.mkdir(parents=True)
        written = 0
        for info in infos:
            if _is_finder_extra(info.filename):
                continue
            relative = info.filename[len(root) :] if info.filename.startswith(root) else None
            if relative is None:
                raise ModelLoadError(f"the Core ML archive's member {info.filename[:200]!r} lies outside the package")
            relative = relative.rstrip("/")
            if not relative:
                continue
            target = dest.joinpath(*PurePosixPath(relative).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(target, flags, 0o644)
            except FileExistsError:
                raise ModelLoadError(f"the Core ML archive names {info.filename[:200]!r} twice") from None
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                left = info.file_size
                while chunk := src.read(min(_CHUNK, left + 1)):
                    left -= len(chunk)
                    written += len(chunk)
                    if left < 0 or written > max_bytes:
                        raise ModelLoadError(
                            f"the Core ML archive's member {info.filename[:200]!r} holds more than it declares"
                        )
                    out.write(chunk)
    return dest


# ============================================================================== backend


def compute_units_for(config: RuntimeConfig) -> str:
    """The compute units asked for (option `compute_units`, else `device`), upper-case; default ALL."""
    raw = (config.option("compute_units", "") or config.device or "ALL").strip().upper()
    if raw not in COMPUTE_UNITS:
        raise RuntimeUnsupported(f"Core ML compute units {raw!r} are not one of {', '.join(COMPUTE_UNITS)}")
    return raw


def _coremltools_version() -> str | None:
    try:
        return importlib.metadata.version("coremltools")
    except importlib.metadata.PackageNotFoundError:
        return None


def unavailable_reason(system: str, coremltools_version: str | None) -> str:
    """Why Core ML prediction cannot run here ('' when it can, as far as a probe can tell). Pure."""
    if system != "Darwin":
        tail = (
            f" (coremltools {coremltools_version} is installed: it converts models here, but cannot predict)"
            if coremltools_version
            else ""
        )
        return f"Core ML prediction needs macOS; this is {system or 'an unknown OS'}{tail}"
    if coremltools_version is None:
        return "coremltools is not installed; optional: install edgebench[coreml]"
    return ""


def _shape_of(feature: Any) -> tuple[int, ...]:
    array = feature.type.multiArrayType
    shape = [int(d) for d in array.shape]
    kind = array.WhichOneof("ShapeFlexibility")
    if kind == "shapeRange":
        shape = [int(r.lowerBound) if r.lowerBound == r.upperBound else -1 for r in array.shapeRange.sizeRanges]
    elif kind == "enumeratedShapes" and array.enumeratedShapes.shapes:
        options = [list(s.shape) for s in array.enumeratedShapes.shapes]
        shape = [int(ds[0]) if len(set(ds)) == 1 else -1 for ds in zip(*options, strict=False)]
    return tuple(shape)


def _tensor_infos(features: Sequence[Any], what: str) -> tuple[TensorInfo, ...]:
    infos = []
    for f in features:
        if f.type.WhichOneof("Type") != "multiArrayType":
            raise RuntimeUnsupported(
                f"Core ML {what} {f.name!r} is a {f.type.WhichOneof('Type')}; this backend feeds and reads "
                "multi-arrays only (convert with tensor inputs and outputs)"
            )
        dtype = COREML_DTYPES.get(int(f.type.multiArrayType.dataType), "float32")
        infos.append(TensorInfo(str(f.name), _shape_of(f), dtype))
    return tuple(infos)


class CoreMLSession(DeclaredIO):
    def __init__(
        self,
        model: Any,
        inputs: tuple[TensorInfo, ...],
        outputs: tuple[TensorInfo, ...],
        details: dict[str, str],
        units: str,
    ) -> None:
        self._model = model
        self._predict = model.predict
        self._inputs = inputs
        self._outputs = outputs
        self._names = [o.name for o in outputs]
        self._details = details
        self._units = units

    def run(self, feeds: Mapping[str, Array]) -> Sequence[Array]:
        result = self._predict(dict(feeds))
        return [result[name] for name in self._names]

    def execution_providers(self) -> Sequence[str]:
        return (f"coreml:{self._units}",)

    def details(self) -> Mapping[str, str]:
        return self._details

    def close(self) -> None:
        self._model = None
        self._predict = None


class CoreMLBackend:
    name = NAME
    formats = FORMATS

    def probe(self) -> RuntimeInfo:
        version = _coremltools_version()
        reason = unavailable_reason(platform.system(), version)
        if reason:
            return unavailable(NAME, FORMATS, reason, version or "")
        return RuntimeInfo(
            name=NAME, available=True, version=version or "", execution_providers=COMPUTE_UNITS, model_formats=FORMATS
        )

    @staticmethod
    def package_path(model_path: Path) -> Path:
        return model_path.parent / PACKAGE_DIRNAME

    @staticmethod
    def _require_available() -> None:
        reason = unavailable_reason(platform.system(), _coremltools_version())
        if reason:
            raise RuntimeUnsupported(f"runtime 'coreml' is unavailable on this device: {reason}")

    def prepare(self, model_path: Path, config: RuntimeConfig) -> None:
        self._require_available()
        compute_units_for(config)
        extract_package(model_path, self.package_path(model_path))

    def load(self, model_path: Path, config: RuntimeConfig) -> CoreMLSession:
        self._require_available()
        units = compute_units_for(config)
        package = self.package_path(model_path)
        if not (package / "Manifest.json").is_file():
            extract_package(model_path, package)
        ct: Any = importlib.import_module("coremltools")
        try:
            model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit[units])
            spec = model.get_spec()
        except Exception as exc:  # coremltools raises plain Exceptions/RuntimeErrors for bad packages
            raise ModelLoadError(f"Core ML could not load the package: {type(exc).__name__}: {exc}") from None
        inputs = _tensor_infos(spec.description.input, "input")
        outputs = _tensor_infos(spec.description.output, "output")
        details = {
            "compute_units": units,
            "coremltools_version": str(ct.__version__),
            "model_type": str(spec.WhichOneof("Type")),
            "specification_version": str(spec.specificationVersion),
            "macos_version": platform.mac_ver()[0],
        }
        return CoreMLSession(model, inputs, outputs, details, units)


BACKEND = CoreMLBackend()
