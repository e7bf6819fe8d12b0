"""The server process's resident memory, read from the kernel for each round's record."""

from __future__ import annotations

import os
import resource
import sys


def peak_rss_bytes() -> int:
    """Largest resident set this process has had (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    """Resident set now, from ``/proc/self/statm`` (the peak where that file does not exist)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()
