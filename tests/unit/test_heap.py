"""trainer/heap.py: a raised glibc threshold serves a 40 MB buffer from the heap, not from mmap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from creformer.trainer.heap import keep_freed_in_heap

# Runs in a fresh interpreter, so the test process's allocator keeps its defaults. mallinfo2's
# hblkhd is the bytes glibc holds in mmapped blocks, arena the bytes of its heap.
PROBE = """
import ctypes, sys
from creformer.trainer.heap import keep_freed_in_heap
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
on = keep_freed_in_heap(int(sys.argv[1]))
before = libc.mallinfo2()
buf = ctypes.create_string_buffer(40 << 20)
during = libc.mallinfo2()
del buf
after = libc.mallinfo2()
print(on, during.hblkhd - before.hblkhd, after.arena - before.arena)
"""


def _probe(threshold_mb: int) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], capture_output=True, text=True, check=True)
    on, mmapped, kept = out.stdout.split()
    return on == "True", int(mmapped), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_raised_threshold_keeps_a_large_buffer_in_the_heap():
    try:
        _probe(0)
    except subprocess.CalledProcessError as err:
        if "mallinfo2" in err.stderr:
            pytest.skip("this libc has no mallinfo2 (glibc < 2.33 or not glibc)")
        raise
    on, mmapped, kept = _probe(0)
    assert not on and mmapped >= 40 << 20  # glibc's default: a fresh mapping for 40 MB
    on, mmapped, kept = _probe(1024)
    assert on and mmapped == 0 and kept >= 40 << 20  # from the heap, and still held after the free


def test_zero_leaves_the_allocator_alone():
    assert keep_freed_in_heap(0) is False
