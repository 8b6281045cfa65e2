"""The board the agent runs on: a Raspberry Pi, a Jetson, a Mac, an x86 box with a DMI table.

Contract: `board_model` returns (model, where it came from) from the first source that knows, in order:
Jetson's /etc/nv_tegra_release (labelled with the L4T release), the device tree, `sysctl -n hw.model` on
macOS, DMI (placeholder strings from cheap firmware ignored); ('', '') when none does. The Jetson probes
(`is_tegra`, `device_tree_model`, `l4t_release`) are also what the GPU probe uses. All files are read
below `root`; nothing here raises.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.device.probes import SYSCTL_TIMEOUT_S, RunCommand, read_device_tree_string, read_text, run_safely, under

__all__ = ["board_model", "device_tree_model", "is_tegra", "l4t_release"]

_DEVICE_TREE_MODEL_PATHS = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")
_DEVICE_TREE_COMPATIBLE_PATHS = ("/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible")
_TEGRA_RELEASE_PATH = "/etc/nv_tegra_release"
_DMI_PRODUCT_PATH = "/sys/class/dmi/id/product_name"
_DMI_VENDOR_PATH = "/sys/class/dmi/id/sys_vendor"

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

_TEGRA_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")


def board_model(root: Path, is_darwin: bool, run_command: RunCommand) -> tuple[str, str]:
    """(board model, where it came from); ('', '') when no source knows."""
    dt_model, dt_source = device_tree_model(root)
    if _has_tegra_release(root):
        label = _jetson_label(dt_model, l4t_release(root))
        source = f"{_TEGRA_RELEASE_PATH} + {dt_source}" if dt_source else _TEGRA_RELEASE_PATH
        return label, source
    if dt_model:
        return dt_model, dt_source
    if is_darwin:
        out = run_safely(run_command, ["sysctl", "-n", "hw.model"], SYSCTL_TIMEOUT_S)
        if out and out.strip():
            return out.strip(), "sysctl -n hw.model"
    dmi = _dmi_model(root)
    if dmi:
        return dmi, _DMI_PRODUCT_PATH
    return "", ""


# ------------------------------------------------------------------ device tree and Jetson


def device_tree_model(root: Path) -> tuple[str, str]:
    """(the device tree's model string, the path it was read from); ('', '') without a device tree."""
    for path in _DEVICE_TREE_MODEL_PATHS:
        model = read_device_tree_string(root, path)
        if model:
            return model, path
    return "", ""


def is_tegra(root: Path) -> bool:
    """Whether this is an NVIDIA Tegra (Jetson) board: nv_tegra_release exists or the device tree says so."""
    if _has_tegra_release(root):
        return True
    for path in _DEVICE_TREE_COMPATIBLE_PATHS:
        text = read_text(root, path)
        if text is not None and any(c.startswith("nvidia,tegra") for c in text.split("\0")):
            return True
    return False


def _has_tegra_release(root: Path) -> bool:
    try:
        return under(root, _TEGRA_RELEASE_PATH).is_file()
    except OSError:
        # is_file() swallows "missing" but not "permission denied" on a parent directory.
        return False


def l4t_release(root: Path) -> str:
    """'R36.3.0' from nv_tegra_release's first line, or '' when absent or in an unknown format."""
    text = read_text(root, _TEGRA_RELEASE_PATH)
    if not text:
        return ""
    match = _TEGRA_RELEASE_RE.search(text.splitlines()[0])
    return f"R{match.group(1)}.{match.group(2)}" if match else ""


def _jetson_label(dt_model: str, l4t: str) -> str:
    base = dt_model if "jetson" in dt_model.lower() else f"NVIDIA Jetson {dt_model}".strip()
    return f"{base} (L4T {l4t})" if l4t else base


# ------------------------------------------------------------------ DMI


def _dmi_model(root: Path) -> str:
    product = (read_text(root, _DMI_PRODUCT_PATH) or "").strip()
    if product.lower() in _DMI_PLACEHOLDERS:
        return ""
    vendor = (read_text(root, _DMI_VENDOR_PATH) or "").strip()
    if vendor.lower() in _DMI_PLACEHOLDERS or product.lower().startswith(vendor.lower()):
        return product
    return f"{vendor} {product}"
