"""Device description: fake trees for a Raspberry Pi, a Jetson, an x86 box and a Mac; the real machine."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from agent import device
from agent.device import collect_device_info, load_or_create_device_id
from agent.types import DeviceInfo, GpuInfo, RuntimeInfo
from protos.version import CURRENT

ARM_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
X86_FLAGS = (
    "fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd "
    "avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 vmx"
)

PI_CPUINFO = f"""\
processor	: 0
BogoMIPS	: 108.00
Features	: {ARM_FEATURES}
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

processor	: 1
BogoMIPS	: 108.00
Features	: {ARM_FEATURES}
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

Hardware	: BCM2835
Revision	: d04170
Serial		: 10000000abcdef01
Model		: Raspberry Pi 5 Model B Rev 1.0
"""

JETSON_CPUINFO = f"""\
processor	: 0
model name	: ARMv8 Processor rev 1 (v8l)
BogoMIPS	: 62.50
Features	: {ARM_FEATURES} uscat ilrcpc flagm
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd42
CPU revision	: 1
"""

X86_CPUINFO = f"""\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
cpu MHz		: 2000.000
flags		: {X86_FLAGS}

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
cpu MHz		: 2000.000
flags		: {X86_FLAGS}
"""

TEGRA_RELEASE = "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19\n"

NVIDIA_SMI_ARGV_HEAD = "nvidia-smi"


def write(root: Path, absolute: str, content: str | bytes) -> None:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


class FakeRunner:
    """Answers commands by their first arguments; records every call; None (failure) for the rest."""

    def __init__(self, answers: dict[tuple[str, ...], str | None] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> str | None:
        self.calls.append((tuple(argv), timeout_s))
        for prefix, answer in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return answer
        return None


def no_commands(argv: Sequence[str], timeout_s: float) -> str | None:
    return None


def collect(tmp_path: Path, root: Path, runner: device.RunCommand = no_commands) -> DeviceInfo:
    return collect_device_info(tmp_path / "work", [], "1.2.3", root=root, run_command=runner)


@pytest.fixture
def pi_root(tmp_path: Path) -> Path:
    root = tmp_path / "pi"
    write(root, "/proc/cpuinfo", PI_CPUINFO)
    write(root, "/proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\x00")
    write(root, "/proc/device-tree/compatible", b"raspberrypi,5-model-b\x00brcm,bcm2712\x00")
    return root


@pytest.fixture
def jetson_root(tmp_path: Path) -> Path:
    root = tmp_path / "jetson"
    write(root, "/proc/cpuinfo", JETSON_CPUINFO)
    write(root, "/etc/nv_tegra_release", TEGRA_RELEASE)
    write(root, "/proc/device-tree/model", b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    write(root, "/proc/device-tree/compatible", b"nvidia,p3737-0000+p3701-0005\x00nvidia,tegra234\x00")
    return root


@pytest.fixture
def x86_root(tmp_path: Path) -> Path:
    root = tmp_path / "x86"
    write(root, "/proc/cpuinfo", X86_CPUINFO)
    write(root, "/sys/class/dmi/id/product_name", "PowerEdge R760\n")
    write(root, "/sys/class/dmi/id/sys_vendor", "Dell Inc.\n")
    return root


# ------------------------------------------------------------------ device id


def test_device_id_is_created_once_and_stable(tmp_path: Path) -> None:
    workdir = tmp_path / "a" / "b"
    first = load_or_create_device_id(workdir)
    assert len(first) == 32
    int(first, 16)
    assert (workdir / "device_id").read_text().strip() == first
    assert load_or_create_device_id(workdir) == first
    # No temporary files are left behind.
    assert [p.name for p in workdir.iterdir()] == ["device_id"]


def test_device_id_survives_into_device_info(tmp_path: Path, pi_root: Path) -> None:
    first = collect(tmp_path, pi_root).device_id
    assert collect(tmp_path, pi_root).device_id == first
    assert load_or_create_device_id(tmp_path / "work") == first


@pytest.mark.parametrize("content", [b"", b"   \n", b"\xff\xfe\x00garbage", b"two\nlines", b"x" * 500])
def test_corrupt_device_id_is_regenerated(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "device_id").write_bytes(content)
    new = load_or_create_device_id(tmp_path)
    assert len(new) == 32
    assert (tmp_path / "device_id").read_text().strip() == new
    assert load_or_create_device_id(tmp_path) == new


def test_existing_operator_chosen_id_is_kept(tmp_path: Path) -> None:
    (tmp_path / "device_id").write_text("pi-kitchen-01\n")
    assert load_or_create_device_id(tmp_path) == "pi-kitchen-01"


def test_device_id_race_keeps_the_first_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate another agent linking its id in between our read and our link.
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_text("0123456789abcdef0123456789abcdef\n")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_device_id(tmp_path) == "0123456789abcdef0123456789abcdef"
    assert [p.name for p in tmp_path.iterdir()] == ["device_id"]


# ------------------------------------------------------------------ boards


def test_raspberry_pi(tmp_path: Path, pi_root: Path) -> None:
    info = collect(tmp_path, pi_root)
    assert info.board_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert info.board_model_source == "/proc/device-tree/model"
    assert info.cpu_model == "Cortex-A76"
    assert info.cpu_features == ("asimd", "asimddp", "asimdhp", "asimdrdm", "fphp")
    assert info.gpus == ()


def test_device_tree_model_from_sysfs_firmware_path(tmp_path: Path) -> None:
    root = tmp_path / "board"
    write(root, "/sys/firmware/devicetree/base/model", b"Radxa ROCK 5B\x00")
    info = collect(tmp_path, root)
    assert info.board_model == "Radxa ROCK 5B"
    assert info.board_model_source == "/sys/firmware/devicetree/base/model"


def test_old_arm_cpuinfo_falls_back_to_hardware_line(tmp_path: Path) -> None:
    root = tmp_path / "old"
    write(root, "/proc/cpuinfo", "processor\t: 0\nFeatures\t: half thumb vfpv4 neon\n\nHardware\t: BCM2835\n")
    info = collect(tmp_path, root)
    assert info.cpu_model == "BCM2835"
    assert info.cpu_features == ("half", "neon", "vfpv4")


def test_jetson_without_nvidia_smi_reports_integrated_gpu(tmp_path: Path, jetson_root: Path) -> None:
    runner = FakeRunner()  # every command fails, nvidia-smi included
    info = collect(tmp_path, jetson_root, runner)
    assert info.board_model == "NVIDIA Jetson AGX Orin Developer Kit (L4T R36.3.0)"
    assert info.board_model_source == "/etc/nv_tegra_release + /proc/device-tree/model"
    assert info.cpu_model == "Cortex-A78AE"
    assert "asimddp" in info.cpu_features
    assert info.gpus == (
        GpuInfo(
            name="NVIDIA Jetson AGX Orin Developer Kit integrated GPU",
            vendor="NVIDIA",
            memory_total_bytes=info.memory_total_bytes,
            driver_version="L4T R36.3.0",
        ),
    )
    assert any(argv[0] == NVIDIA_SMI_ARGV_HEAD for argv, _ in runner.calls)


def test_jetson_release_without_device_tree(tmp_path: Path) -> None:
    root = tmp_path / "bare-jetson"
    write(root, "/etc/nv_tegra_release", TEGRA_RELEASE)
    info = collect(tmp_path, root)
    assert info.board_model == "NVIDIA Jetson (L4T R36.3.0)"
    assert info.board_model_source == "/etc/nv_tegra_release"
    assert len(info.gpus) == 1
    assert info.gpus[0].name == "NVIDIA Jetson integrated GPU"


def test_jetson_nvidia_smi_without_memory_uses_system_ram(tmp_path: Path, jetson_root: Path) -> None:
    runner = FakeRunner({("nvidia-smi",): "Orin (nvgpu), [N/A], 540.3.0, [N/A]\n"})
    info = collect(tmp_path, jetson_root, runner)
    assert info.gpus == (
        GpuInfo(name="Orin (nvgpu)", vendor="NVIDIA", memory_total_bytes=info.memory_total_bytes,
                driver_version="540.3.0", uuid=""),
    )  # fmt: skip


def test_x86_with_dmi_and_nvidia_smi(tmp_path: Path, x86_root: Path) -> None:
    smi = (
        "NVIDIA H100 80GB HBM3, 81559, 550.54.15, GPU-11111111-2222-3333-4444-555555555555\n"
        "NVIDIA L4, 23034, 550.54.15, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n"
    )
    runner = FakeRunner({("nvidia-smi",): smi})
    info = collect(tmp_path, x86_root, runner)
    assert info.cpu_model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.cpu_features == (
        "amx_bf16",
        "amx_int8",
        "amx_tile",
        "avx",
        "avx2",
        "avx512_bf16",
        "avx512_vnni",
        "avx512bw",
        "avx512cd",
        "avx512dq",
        "avx512f",
        "avx512vl",
        "f16c",
        "fma",
        "sse4_1",
        "sse4_2",
        "ssse3",
    )
    assert info.board_model == "Dell Inc. PowerEdge R760"
    assert info.board_model_source == "/sys/class/dmi/id/product_name"
    assert info.gpus == (
        GpuInfo("NVIDIA H100 80GB HBM3", "NVIDIA", 81559 * 1024 * 1024, "550.54.15",
                "GPU-11111111-2222-3333-4444-555555555555"),
        GpuInfo("NVIDIA L4", "NVIDIA", 23034 * 1024 * 1024, "550.54.15",
                "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
    )  # fmt: skip
    ((argv, timeout_s),) = [c for c in runner.calls if c[0][0] == "nvidia-smi"]
    assert argv == (
        "nvidia-smi",
        "--query-gpu=name,memory.total,driver_version,uuid",
        "--format=csv,noheader,nounits",
    )
    assert timeout_s == 5.0


def test_dmi_placeholders_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "whitebox"
    write(root, "/sys/class/dmi/id/product_name", "To Be Filled By O.E.M.\n")
    write(root, "/sys/class/dmi/id/sys_vendor", "To Be Filled By O.E.M.\n")
    info = collect(tmp_path, root)
    assert (info.board_model, info.board_model_source) == ("", "")


@pytest.mark.parametrize(
    "smi_output",
    [
        None,  # absent or non-zero exit
        "",
        "No devices were found\n",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
    ],
)
def test_failing_nvidia_smi_means_no_gpus(tmp_path: Path, x86_root: Path, smi_output: str | None) -> None:
    info = collect(tmp_path, x86_root, FakeRunner({("nvidia-smi",): smi_output}))
    assert info.gpus == ()


def test_raising_runner_is_contained(tmp_path: Path, x86_root: Path) -> None:
    def exploding(argv: Sequence[str], timeout_s: float) -> str | None:
        raise RuntimeError("boom")

    assert collect(tmp_path, x86_root, exploding).gpus == ()


def test_default_runner_handles_missing_executable() -> None:
    assert device.default_run_command(["edgebench-no-such-executable-xyz"], 1.0) is None


def test_empty_root_leaves_fields_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)
    root = tmp_path / "empty"
    root.mkdir()
    info = collect(tmp_path, root)
    assert info.board_model == info.board_model_source == ""
    assert info.cpu_features == ()
    assert info.gpus == ()
    assert info.cpu_frequency_max_hz == info.cpu_frequency_current_hz == 0


def test_cpufreq_sysfs_fallback_in_khz(tmp_path: Path, pi_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)
    write(pi_root, "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "2400000\n")
    write(pi_root, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1500000\n")
    info = collect(tmp_path, pi_root)
    assert info.cpu_frequency_max_hz == 2_400_000_000
    assert info.cpu_frequency_current_hz == 1_500_000_000


def test_psutil_frequency_in_hz(tmp_path: Path, pi_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda: SimpleNamespace(current=1800.0, min=600.0, max=2400.0))
    info = collect(tmp_path, pi_root)
    assert info.cpu_frequency_max_hz == 2_400_000_000
    assert info.cpu_frequency_current_hz == 1_800_000_000


def test_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    root = tmp_path / "mac"
    root.mkdir()
    runner = FakeRunner(
        {
            ("sysctl", "-n", "machdep.cpu.brand_string"): "Apple M2 Pro\n",
            ("sysctl", "-n", "hw.model"): "Mac14,12\n",
            ("sysctl", "hw.optional"): (
                "hw.optional.neon: 1\nhw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 0\n"
                "hw.optional.arm.FEAT_BF16: 1\nhw.optional.floatingpoint: 1\n"
            ),
        }
    )
    info = collect(tmp_path, root, runner)
    assert info.cpu_model == "Apple M2 Pro"
    assert (info.board_model, info.board_model_source) == ("Mac14,12", "sysctl -n hw.model")
    assert info.cpu_features == ("asimd", "asimddp", "bf16")
    assert info.gpus == ()


def test_identity_and_protocol_fields(tmp_path: Path, pi_root: Path) -> None:
    runtimes = [RuntimeInfo(name="onnxruntime", available=True, version="1.20.0")]
    before = time.time_ns()
    info = collect_device_info(tmp_path / "work", runtimes, "9.9.9", root=pi_root, run_command=no_commands)
    assert (info.protocol_major, info.protocol_minor) == (CURRENT.major, CURRENT.minor)
    assert info.agent_version == "9.9.9"
    assert info.runtimes == tuple(runtimes)
    assert info.architecture == platform.machine()
    assert info.python_version == platform.python_version()
    assert info.os_name == platform.system()
    assert before <= info.collected_at_ns <= time.time_ns()


# ------------------------------------------------------------------ the real machine


def test_real_machine_is_sane(tmp_path: Path) -> None:
    info = collect_device_info(tmp_path, [], "0.0.0")
    assert info.cpu_logical_cores >= 1
    assert info.cpu_physical_cores >= 0
    assert info.memory_total_bytes > 0
    assert info.architecture
    assert info.hostname
    assert info.os_name
    assert info.cpu_frequency_max_hz >= 0
    assert info.cpu_frequency_current_hz >= 0
    assert set(info.cpu_features) <= device.CPU_FEATURE_ALLOWLIST
    assert list(info.cpu_features) == sorted(info.cpu_features)
    for gpu in info.gpus:
        assert gpu.name
        assert gpu.vendor == "NVIDIA"


def test_real_machine_file_probes_are_fast(tmp_path: Path) -> None:
    collect_device_info(tmp_path, [], "0.0.0", run_command=no_commands)  # warm the id file and caches
    start = time.perf_counter()
    collect_device_info(tmp_path, [], "0.0.0", run_command=no_commands)
    # Target is < 100 ms; the bound is loose so a loaded CI machine does not flake.
    assert time.perf_counter() - start < 1.0
