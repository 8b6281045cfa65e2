"""Snapshots of the conditions a benchmark ran under (CPU clock, temperature, load), and the throttling rule.

A job samples the environment right before and right after its timed loop, never inside it, so a
sample must be cheap (a few small sysfs reads) but need not be exhaustive. Files are read below `root`
so tests can describe a fake machine in a temporary directory.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import psutil

from agent.types import EnvironmentSample

__all__ = ["sample_environment", "throttling_suspected"]

_CPU_DIR = "sys/devices/system/cpu"
_THERMAL_DIR = "sys/class/thermal"
_CPU_NAME_RE = re.compile(r"cpu\d+")
_ZONE_NAME_RE = re.compile(r"thermal_zone\d+")

# Some x86 kernels (4.13 to 5.x) spend up to 10 ms per CPU answering a scaling_cur_freq read; sampling a
# spread of at most this many CPUs keeps a sample cheap on big servers and is still a fair average.
_MAX_CPUS_SAMPLED = 16

# Readings outside this range come from sensors that are powered off or broken (Jetson Orin's CV
# zones report -256 °C when idle), not from the chip.
_MIN_PLAUSIBLE_MILLICELSIUS = -40_000
_MAX_PLAUSIBLE_MILLICELSIUS = 150_000

# Zones whose reading is not a temperature: Tegra's PMIC-Die zone is a fixed 100 °C trip indicator, and
# taking it as the hottest sensor would flag every Jetson run as throttled.
_IGNORED_ZONE_TYPES = frozenset({"PMIC-Die"})


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii", errors="replace").strip())
    except (OSError, ValueError):
        # Sensors that are off answer reads with EINVAL/ENODATA; treat like absent.
        return None


def _sysfs_cpu_frequency_hz(root: Path) -> int:
    """Average scaling_cur_freq (kHz in sysfs) over up to _MAX_CPUS_SAMPLED CPUs, in Hz; 0 when none."""
    try:
        cpus = sorted(
            (p for p in (root / _CPU_DIR).iterdir() if _CPU_NAME_RE.fullmatch(p.name)),
            key=lambda p: int(p.name[3:]),
        )
    except OSError:
        return 0
    if len(cpus) > _MAX_CPUS_SAMPLED:
        # Evenly spaced rather than the first N, so every cluster of a big.LITTLE chip is represented.
        step = len(cpus) / _MAX_CPUS_SAMPLED
        cpus = [cpus[int(i * step)] for i in range(_MAX_CPUS_SAMPLED)]
    readings = [khz for cpu in cpus if (khz := _read_int(cpu / "cpufreq" / "scaling_cur_freq")) is not None and khz > 0]
    return sum(readings) * 1000 // len(readings) if readings else 0


def _cpu_frequency_hz(root: Path) -> int:
    hz = _sysfs_cpu_frequency_hz(root)
    if hz:
        return hz
    try:
        freq = psutil.cpu_freq()
    except Exception:
        # Some psutil releases raise on Apple silicon instead of returning None.
        return 0
    if freq is None or not freq.current or freq.current <= 0:
        return 0
    return int(freq.current * 1_000_000)


def _sysfs_max_temperature(root: Path) -> int | None:
    try:
        zones = [p for p in (root / _THERMAL_DIR).iterdir() if _ZONE_NAME_RE.fullmatch(p.name)]
    except OSError:
        return None
    hottest: int | None = None
    for zone in zones:
        try:
            zone_type = (zone / "type").read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            zone_type = ""
        if zone_type in _IGNORED_ZONE_TYPES:
            continue
        milli = _read_int(zone / "temp")
        if milli is None or not _MIN_PLAUSIBLE_MILLICELSIUS <= milli <= _MAX_PLAUSIBLE_MILLICELSIUS:
            continue
        hottest = milli if hottest is None else max(hottest, milli)
    return hottest


def _psutil_max_temperature() -> int | None:
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        # Not provided on macOS and Windows.
        return None
    try:
        groups = sensors()
    except Exception:
        return None
    hottest: int | None = None
    for entries in groups.values():
        for entry in entries:
            milli = round(entry.current * 1000)
            if _MIN_PLAUSIBLE_MILLICELSIUS <= milli <= _MAX_PLAUSIBLE_MILLICELSIUS:
                hottest = milli if hottest is None else max(hottest, milli)
    return hottest


def _load_average_1m() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        # No load average on Windows.
        return 0.0


def sample_environment(root: Path = Path("/")) -> EnvironmentSample:
    """Sample CPU clock, hottest temperature and load now. Never raises; an unknown figure is 0.

    - cpu_frequency_hz: mean of the CPUs' sysfs scaling_cur_freq (a spread of at most 16 CPUs), else
      psutil's current frequency, else 0.
    - temperature_millicelsius: the hottest plausible /sys/class/thermal/thermal_zone*/temp, else the
      hottest psutil sensor, else 0.
    - load_average_1m: os.getloadavg()[0] (the real machine's, whatever `root` is), else 0.0.
    - at_ns: time.time_ns() when the sample was taken.

    Cheap (a handful of file reads), but not free: call it around the timed loop, never inside it.
    """
    temperature = _sysfs_max_temperature(root)
    if temperature is None:
        temperature = _psutil_max_temperature()
    return EnvironmentSample(
        cpu_frequency_hz=_cpu_frequency_hz(root),
        temperature_millicelsius=temperature if temperature is not None else 0,
        load_average_1m=_load_average_1m(),
        at_ns=time.time_ns(),
    )


def throttling_suspected(
    before: EnvironmentSample,
    after: EnvironmentSample,
    *,
    freq_drop_fraction: float = 0.10,
    hot_millicelsius: int = 80_000,
) -> str | None:
    """A human-readable reason to distrust the timings between `before` and `after`, or None.

    Suspected when the CPU frequency fell by more than `freq_drop_fraction` of `before`'s (only when both
    samples know it), or when either sample's temperature exceeds `hot_millicelsius` (a zero reading
    means unknown and never counts). Both reasons are joined with "; " when both hold. A heuristic, not
    proof: DVFS governors also lower clocks on their own. Pure; raises ValueError when
    `freq_drop_fraction` is outside [0, 1).
    """
    if not 0.0 <= freq_drop_fraction < 1.0:
        raise ValueError(f"freq_drop_fraction must be in [0, 1), got {freq_drop_fraction}")
    reasons: list[str] = []
    f0, f1 = before.cpu_frequency_hz, after.cpu_frequency_hz
    if f0 > 0 and f1 > 0 and f1 < f0 * (1.0 - freq_drop_fraction):
        reasons.append(
            f"CPU frequency dropped {(f0 - f1) / f0:.0%} during the run ({f0 / 1e9:.2f} GHz -> {f1 / 1e9:.2f} GHz)"
        )
    hottest = max(before.temperature_millicelsius, after.temperature_millicelsius)
    if hottest > hot_millicelsius:
        which = "after" if after.temperature_millicelsius >= before.temperature_millicelsius else "before"
        reasons.append(f"temperature {hottest / 1000:.1f} °C {which} the run exceeds {hot_millicelsius / 1000:.1f} °C")
    return "; ".join(reasons) if reasons else None
