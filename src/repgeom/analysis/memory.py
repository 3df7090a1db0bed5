"""The analysis process's memory allocator: freed memory kept for the next layer.

A layer's kNN at N 9,181 allocates and frees about 1 GB of temporaries. By default glibc's malloc serves each
block over 32 MB with a fresh mmap and returns it to the kernel when freed, so the next one pays a page fault per
4 KiB again. Kept in the process, a freed block serves the next allocation as it is. On four such layers in one
process (benchmarks' synthetic data), each layer's whole analysis took 6.0-7.0 s with it and 6.8-7.9 s without; the
peak memory was 2.89-2.99 GB and 2.84-2.90 GB.
"""
from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap (no mmap of their own) and return the heap's free top to
    the kernel only past 2 GiB. A process setting: the analysis entry point calls it, not the library functions.
    True where applied; False where the C library has no such setting (not glibc), which changes nothing else."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
