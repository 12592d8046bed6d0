"""`memory.give_back`: freed memory inside glibc's heap goes back to the system."""
from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.daemon import memory

BLOCK = 64 * 1024  # from the heap: glibc maps a block of its own only from 128 KiB up
BLOCKS = 1500  # about 94 MiB


def anonymous_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(memory.MALLOC_TRIM is None, reason="the C library has no malloc_trim")
def test_memory_freed_between_live_blocks_is_given_back() -> None:
    """Each freed block lies between two that live on: glibc cannot shrink its heap past
    them, so only `give_back` returns the freed pages."""
    pairs = [(bytearray(BLOCK), bytearray(BLOCK)) for _ in range(BLOCKS)]
    kept = [live for _, live in pairs]
    del pairs  # frees every other block
    freed = anonymous_kb()
    assert memory.give_back()
    given = freed - anonymous_kb()
    assert given > BLOCKS * BLOCK // 1024 * 0.8, f"only {given} kB given back"
    assert len(kept) == BLOCKS  # (kept alive until here)
