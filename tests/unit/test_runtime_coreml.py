"""The Core ML backend on Linux: the `.mlpackage.zip` checks and extraction, spec reading, and the probe.

Prediction needs macOS, so here the backend must say so; the archive handling is OS-independent and is
tested with a real package converted by coremltools (from a tiny torch.export program) and with hostile
zips built by hand.
"""

from __future__ import annotations

import platform
import stat
import zipfile
from pathlib import Path

import pytest

from agent.runner import MODEL_SUFFIX
from agent.runtimes.base import ModelLoadError, RuntimeUnsupported
from agent.runtimes.coreml import (
    BACKEND,
    PACKAGE_DIRNAME,
    _tensor_infos,
    check_archive,
    compute_units_for,
    extract_package,
    unavailable_reason,
)
from agent.types import ModelFormat, RuntimeConfig

MANIFEST = b'{"fileFormatVersion": "1.0.0", "itemInfoEntries": {}}'


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- a real package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ML Program package converted by coremltools (which converts on Linux) from torch.export."""
    torch = pytest.importorskip("torch")
    ct = pytest.importorskip("coremltools")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    program = torch.export.export(Tiny().eval(), (torch.randn(2, 4),)).run_decompositions({})
    model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13)
    path = tmp_path_factory.mktemp("coreml") / "tiny.mlpackage"
    model.save(str(path))
    assert (path / "Manifest.json").is_file()
    return path


def _zip_package(package: Path, archive: Path, *, top_folder: bool) -> Path:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(package.rglob("*")):
            inner = file.relative_to(package).as_posix()
            name = f"{package.name}/{inner}" if top_folder else inner
            if file.is_dir():
                zf.write(file, name + "/")
            else:
                zf.write(file, name)
    return archive


@pytest.mark.slow
@pytest.mark.parametrize("top_folder", [True, False], ids=["package-folder-zipped", "package-contents-zipped"])
def test_real_package_extracts_identically_and_its_spec_reads(package: Path, tmp_path: Path, top_folder: bool) -> None:
    ct = pytest.importorskip("coremltools")
    job = tmp_path / "job"
    job.mkdir()
    archive = _zip_package(package, job / f"model{MODEL_SUFFIX[ModelFormat.COREML]}", top_folder=top_folder)
    extracted = extract_package(archive, BACKEND.package_path(archive))
    assert extracted == job / PACKAGE_DIRNAME
    assert _files(extracted) == _files(package)
    spec = ct.utils.load_spec(str(extracted))
    inputs = _tensor_infos(spec.description.input, "input")
    outputs = _tensor_infos(spec.description.output, "output")
    assert [(i.name, i.shape, i.dtype) for i in inputs] == [("x", (2, 4), "float32")]
    assert len(outputs) == 1 and outputs[0].shape == (2, 3) and outputs[0].dtype in ("float16", "float32")
    # Extracting again replaces the folder rather than failing on existing files.
    extract_package(archive, extracted)
    assert _files(extracted) == _files(package)


def test_the_runner_ships_coreml_models_as_zipped_packages() -> None:
    assert MODEL_SUFFIX[ModelFormat.COREML] == ".mlpackage.zip"
    assert BACKEND.package_path(Path("/jobs/abc/model.mlpackage.zip")) == Path("/jobs/abc/model.mlpackage")


def test_finder_extras_are_checked_then_skipped(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "a.zip",
        [
            ("m.mlpackage/Manifest.json", MANIFEST),
            ("m.mlpackage/Data/com.apple.CoreML/model.mlmodel", b"spec"),
            ("__MACOSX/m.mlpackage/._Manifest.json", b"appledouble"),
        ],
    )
    dest = extract_package(archive, tmp_path / "out")
    assert set(_files(dest)) == {"Manifest.json", "Data/com.apple.CoreML/model.mlmodel"}


# ---------------------------------------------------------------------------------------------- hostile archives


def _symlink(name: str, target: str = "/etc/passwd") -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _special(name: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFCHR | 0o600) << 16
    return info, b""


HOSTILE: dict[str, tuple[list[tuple[zipfile.ZipInfo | str, bytes]], str, str]] = {
    # name: (entries, the member the message must name, what it must say)
    "absolute path": ([("Manifest.json", MANIFEST), ("/tmp/evil", b"x")], "/tmp/evil", "absolute path"),
    "parent traversal": (
        [("m.mlpackage/Manifest.json", MANIFEST), ("m.mlpackage/../../evil", b"x")],
        "m.mlpackage/../../evil",
        "'..'",
    ),
    "windows drive": ([("Manifest.json", MANIFEST), ("C:/evil", b"x")], "C:/evil", "absolute path"),
    "backslashes": ([("Manifest.json", MANIFEST), ("..\\..\\evil", b"x")], "..\\\\..\\\\evil", "backslashes"),
    "symlink": ([("Manifest.json", MANIFEST), _symlink("Data/link")], "Data/link", "symbolic link"),
    "device file": ([("Manifest.json", MANIFEST), _special("Data/dev")], "Data/dev", "not a regular file"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_archives_are_refused_naming_the_member_before_extraction(kind: str, tmp_path: Path) -> None:
    entries, member, why = HOSTILE[kind]
    archive = _zip(tmp_path / "model.mlpackage.zip", entries)
    dest = tmp_path / "job" / PACKAGE_DIRNAME
    with pytest.raises(ModelLoadError) as err:
        extract_package(archive, dest)
    message = str(err.value)
    assert member in message and why in message and "refused before extraction" in message
    assert not dest.exists(), "nothing may be extracted from a refused archive"
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_member_count_and_total_size_are_capped(tmp_path: Path) -> None:
    many = _zip(tmp_path / "many.zip", [("Manifest.json", MANIFEST)] + [(f"f{i}", b"") for i in range(20)])
    with pytest.raises(ModelLoadError, match="21 members, over the cap of 10"):
        extract_package(many, tmp_path / "out", max_members=10)
    big = _zip(tmp_path / "big.zip", [("Manifest.json", MANIFEST), ("Data/weights.bin", b"\0" * 5000)])
    with pytest.raises(ModelLoadError, match=r"more than 4096 bytes \(at member 'Data/weights.bin'\)"):
        extract_package(big, tmp_path / "out", max_bytes=4096)
    assert not (tmp_path / "out").exists()


def test_archives_without_one_package_are_refused(tmp_path: Path) -> None:
    cases = {
        "no manifest": [("m.mlpackage/Data/x", b"1")],
        "two packages": [("a.mlpackage/Manifest.json", MANIFEST), ("b.mlpackage/Manifest.json", MANIFEST)],
        "stray top-level file": [("m.mlpackage/Manifest.json", MANIFEST), ("README", b"hi")],
    }
    for name, entries in cases.items():
        archive = _zip(tmp_path / f"{name}.zip", entries)  # type: ignore[arg-type]
        with pytest.raises(ModelLoadError, match=r"holds no \.mlpackage"):
            extract_package(archive, tmp_path / "out")
    not_zip = tmp_path / "model.mlpackage.zip"
    not_zip.write_bytes(b"an .mlpackage folder sent as-is is not a file")
    with pytest.raises(ModelLoadError, match="not a zip archive"):
        extract_package(not_zip, tmp_path / "out")


def test_check_archive_returns_the_package_root() -> None:
    def infos(*names: str) -> list[zipfile.ZipInfo]:
        return [zipfile.ZipInfo(n) for n in names]

    assert check_archive(infos("Manifest.json", "Data/x")) == ""
    assert check_archive(infos("m.mlpackage/", "m.mlpackage/Manifest.json", "m.mlpackage/Data/x")) == "m.mlpackage/"


# ---------------------------------------------------------------------------------------------- probe and options


def test_probe_off_macos_says_why() -> None:
    if platform.system() == "Darwin":
        pytest.skip("this machine is a Mac: the probe may well be available")
    info = BACKEND.probe()
    assert not info.available
    assert info.unavailable_reason.startswith(f"Core ML prediction needs macOS; this is {platform.system()}")


def test_unavailable_reason_covers_each_case() -> None:
    assert unavailable_reason("Linux", None) == "Core ML prediction needs macOS; this is Linux"
    assert "coremltools 9.0 is installed" in unavailable_reason("Linux", "9.0")
    assert unavailable_reason("Darwin", None) == "coremltools is not installed; optional: install edgebench[coreml]"
    assert unavailable_reason("Darwin", "9.0") == ""
    assert "this is Windows" in unavailable_reason("Windows", None)


def test_prepare_and_load_off_macos_are_unsupported_with_the_reason(tmp_path: Path) -> None:
    if platform.system() == "Darwin":
        pytest.skip("this machine is a Mac")
    archive = _zip(tmp_path / "model.mlpackage.zip", [("Manifest.json", MANIFEST)])
    config = RuntimeConfig(name="coreml")
    for step in (BACKEND.prepare, BACKEND.load):
        with pytest.raises(RuntimeUnsupported, match="runtime 'coreml' is unavailable on this device: Core ML"):
            step(archive, config)


def test_compute_units_from_option_or_device() -> None:
    assert compute_units_for(RuntimeConfig(name="coreml")) == "ALL"
    assert compute_units_for(RuntimeConfig(name="coreml", device="cpu_and_ne")) == "CPU_AND_NE"
    both = RuntimeConfig(name="coreml", device="CPU_ONLY", options=(("compute_units", "cpu_and_gpu"),))
    assert compute_units_for(both) == "CPU_AND_GPU"
    with pytest.raises(RuntimeUnsupported, match="'NPU' are not one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE"):
        compute_units_for(RuntimeConfig(name="coreml", device="NPU"))
