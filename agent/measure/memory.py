"""Memory figures of the current process, read from the kernel's own counters (no polling thread).

`peak_rss_bytes` is the kernel's high-water mark of this process's resident set. On Linux it is `VmHWM`
from /proc/self/status: unlike getrusage's ru_maxrss, it starts afresh at exec, so a job process does not
inherit the agent server's peak (ru_maxrss survives fork+exec on Linux). Elsewhere (macOS) ru_maxrss is
used; there it is per-process. This is the figure `/usr/bin/time -v` prints as "Maximum resident set size"
for a process started on its own. psutil is imported only where /proc is missing, to keep the job
process's own footprint (which every reported figure includes) small.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB, macOS bytes
