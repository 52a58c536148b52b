"""Large blocks go back to the operating system when they are freed (glibc's malloc).

Each argon2 hash allocates its whole memory cost at once (19 MiB, security.py). glibc serves a
block that large with mmap and unmaps it when it is freed, but it then raises its mmap
threshold to that size (its "dynamic threshold"), so the next hash is served from the heap and
its 19 MiB stay resident for the life of the process, once per thread that ever hashed: a worker
that served a login grew by 19 MiB for good. Setting the threshold explicitly turns that
adjustment off: every block over 128 KiB is mapped for itself and unmapped when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, kept fixed


def keep_large_blocks_unmapped() -> bool:
    """Fix glibc's mmap threshold; False where the C library is not glibc (nothing to do)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
