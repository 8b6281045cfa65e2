"""The CPU: model name, the inference-relevant feature flags, and clock frequencies.

Contract: `cpu_model_and_features` reads /proc/cpuinfo below `root` (decoding ARM implementer/part ids
into core names, since ARM kernels rarely print a model name), falls back to sysctl on macOS and to
platform.processor() for the model; features are always a sorted subset of `CPU_FEATURE_ALLOWLIST`,
named as Linux names them. `cpu_frequencies_hz` asks psutil first and cpu0's cpufreq files second.
Nothing here raises: what no source knows is "", () or 0.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

import psutil

from agent.device.probes import SYSCTL_TIMEOUT_S, RunCommand, read_text, run_safely

__all__ = ["CPU_FEATURE_ALLOWLIST", "cpu_frequencies_hz", "cpu_model_and_features"]

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

_CPUINFO_PATH = "/proc/cpuinfo"
_CPU0_MAX_FREQ_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"
_CPU0_CUR_FREQ_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"

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


# ------------------------------------------------------------------ model and features


def cpu_model_and_features(root: Path, is_darwin: bool, run_command: RunCommand) -> tuple[str, tuple[str, ...]]:
    """(CPU model, allow-listed features): /proc/cpuinfo, then sysctl on macOS, then platform.processor()."""
    blocks = _parse_cpuinfo(read_text(root, _CPUINFO_PATH) or "")
    cpu_model = _linux_cpu_model(blocks) if blocks else ""
    cpu_features = _linux_cpu_features(blocks) if blocks else ()
    if is_darwin:
        if not cpu_model:
            cpu_model = (
                run_safely(run_command, ["sysctl", "-n", "machdep.cpu.brand_string"], SYSCTL_TIMEOUT_S) or ""
            ).strip()
        if not cpu_features:
            cpu_features = _macos_cpu_features(run_command)
    if not cpu_model:
        cpu_model = platform.processor()
    return cpu_model, cpu_features


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
    out = run_safely(run_command, ["sysctl", "hw.optional"], SYSCTL_TIMEOUT_S)
    if not out:
        return ()
    features: set[str] = set()
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip() == "1":
            features.update(_MACOS_FEATURES.get(key.strip(), ()))
    return tuple(sorted(features))


# ------------------------------------------------------------------ frequency


def cpu_frequencies_hz(root: Path) -> tuple[int, int]:
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
    text = read_text(root, absolute)
    try:
        khz = int(text.strip()) if text is not None else 0
    except ValueError:
        return 0
    return khz * 1000 if khz > 0 else 0
