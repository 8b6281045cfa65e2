"""How the device probes look at the machine: files below a root directory, and commands through a runner.

Contract: nothing here raises. A file that is missing, unreadable or absurdly large reads as None (or "")
instead of raising; a command that is missing, fails, times out or whose injected runner crashes reads as
None. Every path is given as an absolute path ("/proc/cpuinfo") and resolved below `root`, so tests can
describe a fake machine with a few files in a temporary directory; `RunCommand` is the injectable runner
for the few subprocesses (nvidia-smi everywhere, sysctl on macOS).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "MIB",
    "SYSCTL_TIMEOUT_S",
    "RunCommand",
    "default_run_command",
    "read_device_tree_string",
    "read_text",
    "run_safely",
    "under",
]

#: Runs `argv` with a timeout in seconds; returns its stdout when it exited 0, else None. It must not
#: raise: a missing executable, a non-zero exit and a timeout all read as None.
RunCommand = Callable[[Sequence[str], float], "str | None"]

MIB = 1024 * 1024
SYSCTL_TIMEOUT_S = 2.0
# /proc/cpuinfo of a 256-core server is a few hundred KB; anything far beyond that is not a real file.
_MAX_READ_BYTES = 4 * MIB


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


def run_safely(run_command: RunCommand, argv: Sequence[str], timeout_s: float) -> str | None:
    """`run_command(argv, timeout_s)`, with any exception it raises read as None."""
    # An injected runner is outside our control; a crash there must still not take the agent down.
    try:
        return run_command(argv, timeout_s)
    except Exception:
        return None


# ------------------------------------------------------------------ files


def under(root: Path, absolute: str) -> Path:
    """The path `absolute` ("/etc/x") resolved below `root`."""
    return root / absolute.lstrip("/")


def read_text(root: Path, absolute: str) -> str | None:
    """The file's text (undecodable bytes replaced), or None when missing/unreadable."""
    try:
        with under(root, absolute).open("rb") as f:
            data = f.read(_MAX_READ_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace")


def read_device_tree_string(root: Path, absolute: str) -> str:
    """The first NUL-terminated string of a device-tree property file, stripped; '' when unreadable."""
    text = read_text(root, absolute)
    if text is None:
        return ""
    # Device-tree strings are NUL-terminated (and "compatible" is a NUL-separated list); keep the first.
    return text.split("\0", 1)[0].strip()
