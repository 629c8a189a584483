"""Giving freed heap memory back to the operating system.

The C allocator keeps the pages of memory a process has freed, to reuse them; only a free
stretch at the very top of the heap goes back on its own. A checkpoint builds the state of
the whole fleet as plain data and encodes it (tens of megabytes at 100,000 devices), and the
detectors' warm-up windows are freed once their baselines are set: without help, resident
memory stays at those peaks. On Linux with the GNU C library, ``malloc_trim(0)`` returns
every free page inside the heap as well, in a few milliseconds. The daemon calls
:func:`release_free_memory` after each checkpoint.

>>> release_free_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the operating system; False where this C library
    cannot (then nothing happens)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
