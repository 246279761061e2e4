"""The C allocator's settings in a serving process: freed request buffers stay in the heap for the next.

glibc's malloc returns memory to the kernel on its own schedule: blocks past a size threshold get a
mapping of their own, unmapped when freed, and free memory at the top of the heap past a second
threshold is given back. Both thresholds move with what the process allocated before. A server that
answers 100 kB tensor bodies can land in a state where every request's buffers are fresh pages: RSW-1
raw batch B at 16 connections, right after 40 s of single-image requests on the same server, took 21-23
minor page faults and 182 us of CPU a request against 0 faults and 132-138 us with the thresholds fixed
(``bench/serving/quick.py --cells RA1,RA16,RA64,R1,R16,R64``, the harness's order; docs/benchmarks.md).
So ``modelport serve`` fixes them: blocks under ``MMAP_THRESHOLD`` (the lane's 1 MiB bodies and the
batcher's merged calls) come from the heap, and up to ``TRIM_THRESHOLD`` of free heap is kept.
Larger blocks (the weights of all but small models) are still mapped and unmapped, so unloading such
a model returns its memory at once; a small model's freed memory is reused by the heap. An
operator's own ``MALLOC_*`` environment settings (or glibc tunables) win: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt() parameter numbers (glibc's malloc.h)."""
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_heap_pages() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether they were set (False off glibc
    Linux, or when the operator configured the allocator through the environment)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in OPERATOR_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; musl has a mallopt that changes nothing and answers 0
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
