"""Environment samples from fake sysfs trees, and the throttling rule."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from agent.measure.environment import sample_environment, throttling_suspected
from agent.types import EnvironmentSample


def write(root: Path, relative: str, content: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def add_cpu(root: Path, index: int, khz: int | str) -> None:
    write(root, f"sys/devices/system/cpu/cpu{index}/cpufreq/scaling_cur_freq", f"{khz}\n")


def add_zone(root: Path, index: int, milli: int | str, zone_type: str = "cpu-thermal") -> None:
    write(root, f"sys/class/thermal/thermal_zone{index}/temp", f"{milli}\n")
    write(root, f"sys/class/thermal/thermal_zone{index}/type", f"{zone_type}\n")


@pytest.fixture
def no_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the real machine's psutil figures out of fake-tree tests."""
    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)


@pytest.mark.usefixtures("no_psutil")
def test_sysfs_frequency_average_and_hottest_zone(tmp_path: Path) -> None:
    add_cpu(tmp_path, 0, 1_500_000)
    add_cpu(tmp_path, 1, 2_400_000)
    add_cpu(tmp_path, 2, "garbage")  # ignored
    write(tmp_path, "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq", "9999999\n")  # not a cpuN
    add_zone(tmp_path, 0, 45_000)
    add_zone(tmp_path, 1, 71_500, "gpu-thermal")
    add_zone(tmp_path, 2, 100_000, "PMIC-Die")  # a fixed trip indicator on Jetsons, not a temperature
    add_zone(tmp_path, 3, -256_000, "CV0-therm")  # powered-off sensor
    add_zone(tmp_path, 4, "")  # unreadable
    before = time.time_ns()
    sample = sample_environment(tmp_path)
    assert sample.cpu_frequency_hz == 1_950_000_000
    assert sample.temperature_millicelsius == 71_500
    assert before <= sample.at_ns <= time.time_ns()
    assert sample.load_average_1m >= 0.0


@pytest.mark.usefixtures("no_psutil")
def test_many_cpus_are_sampled_sparsely(tmp_path: Path) -> None:
    for i in range(64):
        add_cpu(tmp_path, i, 1_000_000 if i < 32 else 3_000_000)
    # An even spread over both halves keeps the average of the whole machine.
    assert sample_environment(tmp_path).cpu_frequency_hz == 2_000_000_000


@pytest.mark.usefixtures("no_psutil")
def test_empty_tree_gives_zeros(tmp_path: Path) -> None:
    sample = sample_environment(tmp_path)
    assert sample.cpu_frequency_hz == 0
    assert sample.temperature_millicelsius == 0


def test_psutil_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_freq", lambda: SimpleNamespace(current=2100.5, min=0.0, max=0.0))
    monkeypatch.setattr(
        psutil,
        "sensors_temperatures",
        lambda: {
            "coretemp": [
                SimpleNamespace(label="Package id 0", current=62.5),
                SimpleNamespace(label="Core 0", current=58.0),
            ]
        },
        raising=False,
    )
    sample = sample_environment(tmp_path)
    assert sample.cpu_frequency_hz == 2_100_500_000
    assert sample.temperature_millicelsius == 62_500


def test_psutil_errors_are_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("no sensors")

    monkeypatch.setattr(psutil, "cpu_freq", boom)
    monkeypatch.setattr(psutil, "sensors_temperatures", boom, raising=False)
    sample = sample_environment(tmp_path)
    assert (sample.cpu_frequency_hz, sample.temperature_millicelsius) == (0, 0)


def test_real_machine_sample_is_sane() -> None:
    sample = sample_environment()
    assert sample.cpu_frequency_hz >= 0
    assert sample.load_average_1m >= 0.0
    assert sample.at_ns > 0


# ------------------------------------------------------------------ throttling rule


def env(freq_ghz: float = 2.0, temp_c: float = 50.0) -> EnvironmentSample:
    return EnvironmentSample(cpu_frequency_hz=int(freq_ghz * 1e9), temperature_millicelsius=int(temp_c * 1000), at_ns=1)


def test_steady_run_is_not_suspect() -> None:
    assert throttling_suspected(env(2.0, 60), env(1.9, 65)) is None  # a 5 % dip is within tolerance


def test_frequency_drop_is_reported() -> None:
    reason = throttling_suspected(env(2.4), env(1.8))
    assert reason is not None
    assert "25%" in reason
    assert "2.40 GHz -> 1.80 GHz" in reason


def test_frequency_drop_threshold_is_configurable() -> None:
    assert throttling_suspected(env(2.0), env(1.9), freq_drop_fraction=0.01) is not None
    assert throttling_suspected(env(2.0), env(1.5), freq_drop_fraction=0.30) is None


def test_unknown_frequency_never_counts() -> None:
    assert throttling_suspected(env(2.0), env(0.0)) is None
    assert throttling_suspected(env(0.0), env(2.0)) is None


def test_heat_is_reported_before_or_after() -> None:
    after_reason = throttling_suspected(env(temp_c=60), env(temp_c=85))
    assert after_reason is not None
    assert "85.0 °C after" in after_reason
    before_reason = throttling_suspected(env(temp_c=82), env(temp_c=70))
    assert before_reason is not None
    assert "82.0 °C before" in before_reason
    assert throttling_suspected(env(temp_c=80), env(temp_c=80)) is None  # must exceed, not reach
    assert throttling_suspected(env(temp_c=70), env(temp_c=75), hot_millicelsius=72_000) is not None


def test_both_reasons_are_joined() -> None:
    reason = throttling_suspected(env(2.0, 50), env(1.0, 95))
    assert reason is not None
    assert reason.count("; ") == 1


def test_invalid_fraction_is_rejected() -> None:
    with pytest.raises(ValueError):
        throttling_suspected(env(), env(), freq_drop_fraction=1.0)
    with pytest.raises(ValueError):
        throttling_suspected(env(), env(), freq_drop_fraction=-0.1)
