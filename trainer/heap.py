"""Keep large freed tensors in the process heap (glibc ``mallopt``), so a training step reuses pages.

glibc serves allocations above its mmap threshold (at most 32 MB by its own adjustment) with fresh
``mmap`` pages and unmaps them on free; a Regulatory step allocates tens of MB per batch (the peak
bins of 128 samples are 34 MB) and the kernel zeroes every new page again. A raised threshold and
trim threshold keep them in the heap: the peak RSS of a step stays what the step needs, but the
heap does not shrink back between steps."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3


def keep_freed_in_heap(threshold_mb: int) -> bool:
    """Serve allocations below ``threshold_mb`` from the heap and keep freed memory there (0: leave
    the allocator alone). Returns whether glibc accepted it; False off glibc (macOS, musl)."""
    if threshold_mb <= 0 or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    size = min(threshold_mb, 2047) << 20  # mallopt takes an int
    # mallopt(3) documents a 32 MB ceiling (64-bit) that older glibc enforces (2.36 accepts more): fall back to it
    mmap_ok = mallopt(M_MMAP_THRESHOLD, size) == 1 or mallopt(M_MMAP_THRESHOLD, min(size, 32 << 20)) == 1
    return mmap_ok and all(mallopt(p, v) == 1 for p, v in ((M_TRIM_THRESHOLD, size), (M_TOP_PAD, 64 << 20)))
