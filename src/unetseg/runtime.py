"""Process-wide tuning applied by the command line at start-up (never at import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20
TRIM_THRESHOLD_BYTES = 512 << 20


def tune_allocator() -> bool:
    """Keep large buffers in glibc's heap instead of mapping them afresh on every allocation.

    glibc's dynamic mmap threshold tops out at 32 MiB: larger buffers get fresh mappings that
    are page-faulted again on every training or inference step, and wide U-Nets allocate many.
    A fixed threshold of 256 MiB and a 512 MiB trim threshold keep them in the reused heap.
    (Turning mmap off altogether was measured slower: streamed prediction of a 2048 x 20000 TIFF
    took 116 s instead of 18 s with 1.2 GB instead of 1.0 GB peak RSS.)
    Returns whether the settings took effect (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError):
        return False
    log.debug("allocator tuned: %s", ok)
    return bool(ok)
