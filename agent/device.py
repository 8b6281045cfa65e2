"""Who this agent runs on: a stable device id and a one-shot description of the hardware.

`collect_device_info` is called at start-up and whenever a client asks for the device description. It
is deliberately defensive: edge boxes differ wildly (a Raspberry Pi has no DMI table, an x86 server no
device tree, a Jetson may or may not ship nvidia-smi), so every probe that fails leaves its field empty
or 0 instead of raising. All file reads are made relative to a `root` directory so tests can describe a
fake machine with a few files in a temporary directory; the few subprocesses (nvidia-smi, and sysctl on
macOS) go through an injectable runner for the same reason.

Counts that the kernel exposes only through psutil (cores, memory, frequency) come from psutil and hence
always describe the real machine, whatever `root` is.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from agent.types import DeviceInfo, GpuInfo, RuntimeInfo
from protos.version import CURRENT

__all__ = [
    "CPU_FEATURE_ALLOWLIST",
    "DEVICE_ID_FILENAME",
    "RunCommand",
    "collect_device_info",
    "default_run_command",
    "load_or_create_device_id",
]

#: Runs `argv` with a timeout in seconds; returns its stdout when it exited 0, else None. It must not
#: raise: a missing executable, a non-zero exit and a timeout all read as None.
RunCommand = Callable[[Sequence[str], float], "str | None"]

DEVICE_ID_FILENAME = "device_id"

#: CPU features that decide which kernels an inference runtime can use, named as Linux names them in
#: /proc/cpuinfo ("flags" on x86, "Features" on ARM). Everything else there (vmx, pse, ...) is noise for a
#: benchmark report.
CPU_FEATURE_ALLOWLIST: frozenset[str] = frozenset(
    {
        # x86
        "sse4_1",
        "sse4_2",
        "ssse3",
        "fma",
        "f16c",
        "avx",
        "avx2",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512cd",
        "avx512dq",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx512vbmi",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "amx_fp16",
        # ARM (32-bit names first, then AArch64)
        "neon",
        "vfpv4",
        "half",
        "asimd",
        "asimdhp",
        "asimddp",
        "asimdfhm",
        "asimdrdm",
        "fphp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
        "svei8mm",
        "svebf16",
        "sme",
        "sme2",
    }
)

_MIB = 1024 * 1024
_NVIDIA_SMI_TIMEOUT_S = 5.0
_SYSCTL_TIMEOUT_S = 2.0
# /proc/cpuinfo of a 256-core server is a few hundred KB; anything far beyond that is not a real file.
_MAX_READ_BYTES = 4 * _MIB

_DEVICE_TREE_MODEL_PATHS = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")
_DEVICE_TREE_COMPATIBLE_PATHS = ("/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible")
_TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
_DMI_PRODUCT_PATH = "/sys/class/dmi/id/product_name"
_DMI_VENDOR_PATH = "/sys/class/dmi/id/sys_vendor"
_CPU0_MAX_FREQ_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
_CPU0_CUR_FREQ_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"

# Firmware of cheap x86 boards fills DMI with placeholders; reporting them as a board model misleads.
_DMI_PLACEHOLDERS = frozenset(
    {
        "",
        "to be filled by o.e.m.",
        "system product name",
        "system manufacturer",
        "default string",
        "not applicable",
        "none",
        "o.e.m.",
        "oem",
        "not specified",
        "type1productconfigid",
    }
)

# (CPU implementer, CPU part) from /proc/cpuinfo → core name. ARM kernels usually print no "model name",
# so without this a Pi 4 and a Pi 5 would both read as "BCM2835".
_ARM_PARTS: dict[tuple[int, int], str] = {
    (0x41, 0xB76): "ARM1176",
    (0x41, 0xC07): "Cortex-A7",
    (0x41, 0xC08): "Cortex-A8",
    (0x41, 0xC09): "Cortex-A9",
    (0x41, 0xC0F): "Cortex-A15",
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720",
    (0x41, 0xD82): "Cortex-X4",
    (0x4E, 0x003): "NVIDIA Denver 2",
    (0x4E, 0x004): "NVIDIA Carmel",
}

# `sysctl hw.optional` keys on macOS → the Linux feature names used in CPU_FEATURE_ALLOWLIST, so a report
# compares Macs and Linux boxes with one vocabulary.
_MACOS_FEATURES: dict[str, tuple[str, ...]] = {
    "hw.optional.neon": ("asimd",),
    "hw.optional.neon_fp16": ("asimdhp", "fphp"),
    "hw.optional.arm.FEAT_FP16": ("asimdhp", "fphp"),
    "hw.optional.arm.FEAT_DotProd": ("asimddp",),
    "hw.optional.arm.FEAT_FHM": ("asimdfhm",),
    "hw.optional.arm.FEAT_RDM": ("asimdrdm",),
    "hw.optional.arm.FEAT_I8MM": ("i8mm",),
    "hw.optional.arm.FEAT_BF16": ("bf16",),
    "hw.optional.arm.FEAT_SME": ("sme",),
    "hw.optional.arm.FEAT_SME2": ("sme2",),
    "hw.optional.sse4_1": ("sse4_1",),
    "hw.optional.sse4_2": ("sse4_2",),
    "hw.optional.supplementalsse3": ("ssse3",),
    "hw.optional.fma": ("fma",),
    "hw.optional.avx1_0": ("avx",),
    "hw.optional.avx2_0": ("avx2",),
    "hw.optional.avx512f": ("avx512f",),
    "hw.optional.avx512bw": ("avx512bw",),
    "hw.optional.avx512cd": ("avx512cd",),
    "hw.optional.avx512dq": ("avx512dq",),
    "hw.optional.avx512vl": ("avx512vl",),
    "hw.optional.avx512vnni": ("avx512_vnni",),
}

_TEGRA_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# ------------------------------------------------------------------ device id


def load_or_create_device_id(workdir: Path) -> str:
    """Return this device's stable id, stored in `workdir/device_id`; create it on first use.

    An existing file is used when its content (whitespace stripped) is a plausible id: 1–128 characters of
    letters, digits, '.', '_' and '-', starting with a letter or digit. That admits the uuid4 hex this
    function writes and also an id an operator chose by hand. Anything else (empty, binary garbage, several
    lines) is treated as corrupt and replaced by a fresh uuid4 hex.

    The file is never observed half-written: the id goes to a temporary file in `workdir` first, and is
    then linked (first creation: fails if another process won the race, whose id is then returned) or
    os.replace-d (replacing a corrupt file) into place. Creates `workdir` if needed. Raises OSError when
    `workdir` cannot be created or written, since an agent without a stable id must not start.
    """
    path = workdir / DEVICE_ID_FILENAME
    existing = _read_device_id(path)
    if existing is not None:
        return existing
    workdir.mkdir(parents=True, exist_ok=True)
    new_id = uuid.uuid4().hex
    fd, tmp_name = tempfile.mkstemp(prefix=".device_id.", dir=workdir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(new_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        if path.exists() or path.is_symlink():
            # Corrupt file: nobody can be relying on its content, so replacing it is safe.
            os.replace(tmp, path)
        else:
            try:
                # link() refuses to overwrite, so two agents starting together on one workdir agree on
                # the id of whichever linked first.
                os.link(tmp, path)
            except FileExistsError:
                winner = _read_device_id(path)
                if winner is not None:
                    return winner
                os.replace(tmp, path)
            except OSError:
                # Filesystems without hard links (FAT on some SD cards): fall back to a plain replace.
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return new_id


def _read_device_id(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if _DEVICE_ID_RE.fullmatch(text) else None


# ------------------------------------------------------------------ subprocesses


def default_run_command(argv: Sequence[str], timeout_s: float) -> str | None:
    """Run `argv` (no shell, stdin closed); return stdout when it exits 0 within `timeout_s`, else None.

    Never raises: a missing executable, a permission error, a non-zero exit and a timeout (the child is
    killed by subprocess.run) all give None.
    """
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _run(run_command: RunCommand, argv: Sequence[str], timeout_s: float) -> str | None:
    # An injected runner is outside our control; a crash there must still not take the agent down.
    try:
        return run_command(argv, timeout_s)
    except Exception:
        return None


# ------------------------------------------------------------------ file helpers


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _read_text(root: Path, absolute: str) -> str | None:
    """The file's text (undecodable bytes replaced), or None when missing/unreadable."""
    try:
        with _under(root, absolute).open("rb") as f:
            data = f.read(_MAX_READ_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace")


def _read_device_tree_string(root: Path, absolute: str) -> str:
    text = _read_text(root, absolute)
    if text is None:
        return ""
    # Device-tree strings are NUL-terminated (and "compatible" is a NUL-separated list); keep the first.
    return text.split("\0", 1)[0].strip()


# ------------------------------------------------------------------ CPU


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """Split /proc/cpuinfo into blocks (one per processor, plus ARM's trailing Hardware/Model block)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _cpuinfo_value(blocks: Sequence[dict[str, str]], key: str) -> str:
    for block in blocks:
        value = block.get(key, "")
        if value:
            return value
    return ""


def _arm_core_names(blocks: Sequence[dict[str, str]]) -> list[str]:
    """Distinct decoded ARM core names in order of appearance (big.LITTLE chips have two or more)."""
    names: list[str] = []
    for block in blocks:
        try:
            implementer = int(block["CPU implementer"], 0)
            part = int(block["CPU part"], 0)
        except (KeyError, ValueError):
            continue
        name = _ARM_PARTS.get((implementer, part))
        if name and name not in names:
            names.append(name)
    return names


def _linux_cpu_model(blocks: Sequence[dict[str, str]]) -> str:
    model_name = _cpuinfo_value(blocks, "model name")
    # ARM kernels that print "model name" say only "ARMv8 Processor rev 1 (v8l)"; a decoded core name
    # (Cortex-A78AE) says more.
    if model_name and not model_name.startswith("ARMv"):
        return model_name
    cores = _arm_core_names(blocks)
    if cores:
        return " + ".join(cores)
    for key in ("Hardware", "Model", "Processor"):
        value = _cpuinfo_value(blocks, key)
        if value:
            return value
    return model_name


def _linux_cpu_features(blocks: Sequence[dict[str, str]]) -> tuple[str, ...]:
    # The boot CPU's flags; on hybrid chips the kernel reports the common subset anyway.
    raw = _cpuinfo_value(blocks, "flags") or _cpuinfo_value(blocks, "Features")
    return tuple(sorted(set(raw.split()) & CPU_FEATURE_ALLOWLIST))


def _macos_cpu_features(run_command: RunCommand) -> tuple[str, ...]:
    out = _run(run_command, ["sysctl", "hw.optional"], _SYSCTL_TIMEOUT_S)
    if not out:
        return ()
    features: set[str] = set()
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip() == "1":
            features.update(_MACOS_FEATURES.get(key.strip(), ()))
    return tuple(sorted(features))


def _cpu_frequencies_hz(root: Path) -> tuple[int, int]:
    """(max, current) in Hz: psutil first, then cpu0's cpufreq files in kHz; 0 where neither knows."""
    max_hz = current_hz = 0
    try:
        freq = psutil.cpu_freq()
    except Exception:
        # psutil raises on some platforms (Apple silicon in older releases) instead of returning None.
        freq = None
    if freq is not None:
        max_hz = int(freq.max * 1_000_000) if freq.max and freq.max > 0 else 0
        current_hz = int(freq.current * 1_000_000) if freq.current and freq.current > 0 else 0
    if max_hz == 0:
        max_hz = _read_khz_as_hz(root, _CPU0_MAX_FREQ_PATH)
    if current_hz == 0:
        current_hz = _read_khz_as_hz(root, _CPU0_CUR_FREQ_PATH)
    return max_hz, current_hz


def _read_khz_as_hz(root: Path, absolute: str) -> int:
    text = _read_text(root, absolute)
    try:
        khz = int(text.strip()) if text is not None else 0
    except ValueError:
        return 0
    return khz * 1000 if khz > 0 else 0


# ------------------------------------------------------------------ board


def _device_tree_model(root: Path) -> tuple[str, str]:
    for path in _DEVICE_TREE_MODEL_PATHS:
        model = _read_device_tree_string(root, path)
        if model:
            return model, path
    return "", ""


def _is_tegra(root: Path) -> bool:
    if _has_tegra_release(root):
        return True
    for path in _DEVICE_TREE_COMPATIBLE_PATHS:
        text = _read_text(root, path)
        if text is not None and any(c.startswith("nvidia,tegra") for c in text.split("\0")):
            return True
    return False


def _has_tegra_release(root: Path) -> bool:
    try:
        return _under(root, _TEGRA_RELEASE_PATH).is_file()
    except OSError:
        # is_file() swallows "missing" but not "permission denied" on a parent directory.
        return False


def _l4t_release(root: Path) -> str:
    """'R36.3.0' from nv_tegra_release's first line, or '' when absent or in an unknown format."""
    text = _read_text(root, _TEGRA_RELEASE_PATH)
    if not text:
        return ""
    match = _TEGRA_RELEASE_RE.search(text.splitlines()[0])
    return f"R{match.group(1)}.{match.group(2)}" if match else ""


def _jetson_label(dt_model: str, l4t: str) -> str:
    base = dt_model if "jetson" in dt_model.lower() else f"NVIDIA Jetson {dt_model}".strip()
    return f"{base} (L4T {l4t})" if l4t else base


def _dmi_model(root: Path) -> str:
    product = (_read_text(root, _DMI_PRODUCT_PATH) or "").strip()
    if product.lower() in _DMI_PLACEHOLDERS:
        return ""
    vendor = (_read_text(root, _DMI_VENDOR_PATH) or "").strip()
    if vendor.lower() in _DMI_PLACEHOLDERS or product.lower().startswith(vendor.lower()):
        return product
    return f"{vendor} {product}"


def _board_model(root: Path, is_darwin: bool, run_command: RunCommand) -> tuple[str, str]:
    """(board model, where it came from); ('', '') when no source knows."""
    dt_model, dt_source = _device_tree_model(root)
    if _has_tegra_release(root):
        label = _jetson_label(dt_model, _l4t_release(root))
        source = f"{_TEGRA_RELEASE_PATH} + {dt_source}" if dt_source else _TEGRA_RELEASE_PATH
        return label, source
    if dt_model:
        return dt_model, dt_source
    if is_darwin:
        out = _run(run_command, ["sysctl", "-n", "hw.model"], _SYSCTL_TIMEOUT_S)
        if out and out.strip():
            return out.strip(), "sysctl -n hw.model"
    dmi = _dmi_model(root)
    if dmi:
        return dmi, _DMI_PRODUCT_PATH
    return "", ""


# ------------------------------------------------------------------ GPUs


def _parse_mib(value: str) -> int:
    try:
        return int(float(value)) * _MIB
    except ValueError:
        # "[N/A]" (Jetson's nvidia-smi) or "[Not Supported]".
        return 0


def _clean_smi_field(value: str) -> str:
    value = value.strip()
    return "" if value.startswith("[") and value.endswith("]") else value


def _nvidia_smi_gpus(run_command: RunCommand) -> list[GpuInfo]:
    out = _run(
        run_command,
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version,uuid",
            "--format=csv,noheader,nounits",
        ],
        _NVIDIA_SMI_TIMEOUT_S,
    )
    if not out:
        return []
    gpus: list[GpuInfo] = []
    for row in csv.reader(out.splitlines(), skipinitialspace=True):
        # Anything but a 4-field row with a name is a message ("No devices were found"), not a GPU.
        if len(row) != 4 or not _clean_smi_field(row[0]):
            continue
        name, memory, driver, gpu_uuid = row
        gpus.append(
            GpuInfo(
                name=_clean_smi_field(name),
                vendor="NVIDIA",
                memory_total_bytes=_parse_mib(memory.strip()),
                driver_version=_clean_smi_field(driver),
                uuid=_clean_smi_field(gpu_uuid),
            )
        )
    return gpus


def _gpus(root: Path, run_command: RunCommand, memory_total: int) -> tuple[GpuInfo, ...]:
    gpus = _nvidia_smi_gpus(run_command)
    if not _is_tegra(root):
        return tuple(gpus)
    # A Jetson's GPU shares system RAM, and its nvidia-smi (JetPack 6+) reports no memory size.
    if gpus:
        return tuple(dataclasses.replace(g, memory_total_bytes=g.memory_total_bytes or memory_total) for g in gpus)
    dt_model, _ = _device_tree_model(root)
    l4t = _l4t_release(root)
    return (
        GpuInfo(
            name=f"{dt_model or 'NVIDIA Jetson'} integrated GPU",
            vendor="NVIDIA",
            memory_total_bytes=memory_total,
            driver_version=f"L4T {l4t}" if l4t else "",
        ),
    )


# ------------------------------------------------------------------ everything


def _safe_int(probe: Callable[[], int | None]) -> int:
    try:
        value = probe()
    except Exception:
        return 0
    return value if value is not None and value > 0 else 0


def collect_device_info(
    workdir: Path,
    runtimes: Sequence[RuntimeInfo],
    agent_version: str,
    *,
    root: Path = Path("/"),
    run_command: RunCommand = default_run_command,
) -> DeviceInfo:
    """Describe this machine: identity, OS, CPU, memory, board, GPUs, and the given runtimes.

    `workdir` holds the device id (see load_or_create_device_id, whose OSError is the only exception this
    raises). Files are read below `root` ("/" in production, a fake tree in tests); psutil-backed values
    (cores, memory, frequencies when psutil knows them) always describe the real machine. `run_command`
    runs nvidia-smi (every OS; absent or failing means no discrete GPUs) and, on macOS only, sysctl.

    Every probe is defensive: an unreadable file or failing command leaves its field "" / 0 / (). Takes
    a few milliseconds on Linux, plus however long nvidia-smi takes where it exists (at most 5 s).
    """
    device_id = load_or_create_device_id(workdir)
    is_darwin = platform.system() == "Darwin"

    cpuinfo_text = _read_text(root, "/proc/cpuinfo") or ""
    blocks = _parse_cpuinfo(cpuinfo_text)
    cpu_model = _linux_cpu_model(blocks) if blocks else ""
    cpu_features = _linux_cpu_features(blocks) if blocks else ()
    if is_darwin:
        if not cpu_model:
            cpu_model = (
                _run(run_command, ["sysctl", "-n", "machdep.cpu.brand_string"], _SYSCTL_TIMEOUT_S) or ""
            ).strip()
        if not cpu_features:
            cpu_features = _macos_cpu_features(run_command)
    if not cpu_model:
        cpu_model = platform.processor()

    memory_total = _safe_int(lambda: psutil.virtual_memory().total)
    max_hz, current_hz = _cpu_frequencies_hz(root)
    board_model, board_source = _board_model(root, is_darwin, run_command)

    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = platform.node()

    return DeviceInfo(
        protocol_major=CURRENT.major,
        protocol_minor=CURRENT.minor,
        agent_version=agent_version,
        device_id=device_id,
        hostname=hostname,
        os_name=platform.system(),
        os_release=platform.release(),
        os_version=platform.version(),
        architecture=platform.machine(),
        python_version=platform.python_version(),
        cpu_model=cpu_model,
        cpu_physical_cores=_safe_int(lambda: psutil.cpu_count(logical=False)),
        cpu_logical_cores=_safe_int(lambda: psutil.cpu_count(logical=True)),
        cpu_frequency_max_hz=max_hz,
        cpu_frequency_current_hz=current_hz,
        cpu_features=cpu_features,
        memory_total_bytes=memory_total,
        board_model=board_model,
        board_model_source=board_source,
        gpus=_gpus(root, run_command, memory_total),
        runtimes=tuple(runtimes),
        collected_at_ns=time.time_ns(),
    )
