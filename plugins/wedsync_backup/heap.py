"""Keep the process's heap from growing with the number of objects it streams.

With a few worker threads streaming thousands of objects of varying size, the multi-MB buffers they free
(S3 parts, read chunks, GCS chunks) stay in glibc's per-thread arenas, fragmented by the small objects that
live on between them, and the resident set grew with the object count (~60 MB per 300 objects, measured on
the files capture). ``give_back`` after each object returns the arenas' free pages to the kernel every 64 MB
streamed (``malloc_trim``, which also releases free pages in the middle of a heap; trimming after every object
cost throughput, each trim making the next buffers fault their pages in again), and buffers above 1.5 MiB get
their own mapping. A fixed 256 KiB mmap threshold bounded it too, but mapping and unmapping every 1 MiB chunk
cost 20-40% of the throughput.

``bound_buffers`` sets that threshold alone, as soon as a storage is built (before the first object): left to
glibc, the threshold rises to the size of the first large buffer freed (an S3 part, a GCS chunk), every buffer below it
then comes from the arenas, and the full backup's export left ~35 MB of free arena pages resident that the
files capture and the verification never reused (measured with bench/memory.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (setting it stops the dynamic adjustment)
M_ARENA_MAX = -8
# Threads share this many malloc arenas (glibc's default is 8 per core): each arena keeps its own free pages
# resident, and the export's workers and replica threads (one per object and replica) spread over up to 16.
# Python holds the GIL around most allocations, so fewer arenas cost no throughput.
ARENA_MAX = 2
# Buffers above this (S3 parts, GCS chunks, whole small objects) get their own mapping, unmapped when freed;
# the 1 MiB read chunks, below it, keep coming from the arenas (mapping every one of them cost throughput).
MMAP_THRESHOLD = 3 << 19  # 1.5 MiB
_libc: Any = None
_looked_up = False


def _malloc_trim() -> Any:
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            _libc = libc if hasattr(libc, "malloc_trim") else None
            if _libc is not None:
                _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                _libc.mallopt(M_ARENA_MAX, ARENA_MAX)
        except OSError:
            _libc = None
        if _libc is None:
            log.debug("malloc_trim is not available: the heap keeps the C library's default behaviour")
    return _libc


def bound_buffers() -> bool:
    """Large buffers get their own mapping, returned to the kernel when freed (once per process; cheap after).
    False without glibc."""
    return _malloc_trim() is not None


TRIM_EVERY = 64 << 20  # bytes streamed between two trims (each trim makes the next buffers fault their pages in)
_streamed = 0


def give_back(nbytes: int = TRIM_EVERY) -> bool:
    """After an object of ``nbytes`` is done: once ``TRIM_EVERY`` bytes went through since the last time,
    return the heap's free pages to the kernel. False without glibc."""
    global _streamed
    libc = _malloc_trim()
    if libc is None:
        return False
    _streamed += nbytes  # several workers: an approximate count is enough
    if _streamed >= TRIM_EVERY:
        _streamed = 0
        libc.malloc_trim(0)
    return True
