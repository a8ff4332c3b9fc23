"""socket_io's process setting: the heap is kept when reads of up to READ_SIZE are freed."""

from __future__ import annotations

import ctypes
import platform

import pytest

from kproxy.runtime.socket_io import READ_SIZE, keep_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's setting is glibc's")
def test_reads_freed_do_not_shrink_the_heap_once_kept() -> None:
    keep_heap()
    sbrk = ctypes.CDLL(None).sbrk
    sbrk.restype = ctypes.c_void_p
    sbrk.argtypes = [ctypes.c_ssize_t]
    reads = [bytes(READ_SIZE) for _ in range(40)]  # ~5 MB from the heap, below mmap's bound
    grown = sbrk(0)
    del reads
    assert sbrk(0) == grown  # glibc's default would give back all but 128 KiB of it
