"""Keep the process's heap from growing with the number of objects it streams.

glibc raises its mmap threshold each time a large buffer is freed, so later multi-MB buffers (S3 parts, GCS
chunks, read-ahead) come from per-thread arenas instead, whose freed middles are rarely returned: with a few
worker threads streaming thousands of objects of varying size, the resident set grew by ~60 MB per 300
objects (measured on the files capture). A fixed threshold sends every buffer of 256 KiB or more to its own
mapping, given back to the kernel when it is freed: the resident set stays flat whatever the object count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters; setting them stops their adjustment
MMAP_THRESHOLD = 256 << 10
# Fixing the mmap threshold also fixes the trim threshold at its 128 KiB default, and the arenas were then
# shrunk and grown again all the time: keep up to this much free at their top (smaller buffers only).
TRIM_THRESHOLD = 64 << 20
_done = False


def bound_heap() -> bool:
    """Fix malloc's mmap threshold (once per process). Returns False where there is no glibc mallopt."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("mallopt is not available: the heap keeps the C library's default behaviour")
    _done = ok
    return ok
