"""The recorder process's allocator: keep freed memory for the next messages.

A recorder allocates and frees the same large blocks over and over: each camera frame taken
off the middleware (about 0.9 MB for VGA rgb8), each MCAP chunk buffer (1 MiB and more). With
glibc's defaults a freed block at the top of a heap above the trim threshold (dynamic, about
twice the largest block freed so far) is handed back to the kernel (``madvise``) and the next
block of that size faults its pages in again, zeroed: in ``bench/recorder_throughput.py`` about
a third of the recorder's CPU time was the kernel doing that. ``keep_freed_memory`` sets fixed
thresholds (``mallopt``, as the ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``
environment variables would): blocks up to ``mmap_bytes`` come from the heap, and up to
``trim_bytes`` of free memory at a heap's top stays with the process. The resident memory
then stays near the recording's peak instead of falling back between frames.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_BYTES = 256 << 20
MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold (64-bit): a 4K rgb8 frame fits below


def keep_freed_memory(trim_bytes: int = TRIM_BYTES, mmap_bytes: int = MMAP_BYTES) -> bool:
    """Set the thresholds; False where the C library has no ``mallopt`` (not glibc) or
    refuses them, and nothing changes."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and \
        bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))
