"""Freed heap pages go back to the operating system after a checkpoint."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

from service.state.memory import release_free_memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="resident memory is read from /proc"
)


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_free_pages_inside_the_heap_are_returned() -> None:
    # 64 MiB in 2 KiB blocks (the C allocator's heap, not its own mappings), then one block
    # above them that stays, so the freed stretch is not at the top of the heap
    size = 2048
    blocks = [b"x" * size for _ in range(32_768)]
    pin = b"p" * size
    gc.collect()
    filled = _resident_bytes()
    del blocks
    gc.collect()
    freed = _resident_bytes()
    assert release_free_memory() is True
    released = _resident_bytes()
    assert len(pin) == size
    # freeing alone keeps most of the pages; releasing returns most of the 64 MiB
    assert filled - freed < 32 * 2**20
    assert freed - released > 48 * 2**20
