"""Process-wide tuning applied by the command line at start-up (never at import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep large buffers in glibc's heap instead of mapping them afresh on every allocation.

    glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh mappings that
    are page-faulted again on every training or inference step; wide U-Nets allocate many such
    buffers. Disabling mmap for malloc and raising the trim threshold keeps them reused.
    Returns whether the settings took effect (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        return False
    log.debug("allocator tuned: %s", ok)
    return bool(ok)
