"""Memory figures of the current process, read from the kernel's own counters (no polling thread).

`peak_rss_bytes` is the kernel's high-water mark (getrusage ru_maxrss), the same figure `/usr/bin/time -v`
prints as "Maximum resident set size", so it catches short spikes a sampler would miss.
"""

from __future__ import annotations

import resource
import sys

import psutil


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
