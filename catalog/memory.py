"""How a process that works through cases uses memory (glibc's malloc, Linux): one place.

A case's large arrays (the label, the hole-filled box mask, slab temporaries, inflated bytes)
are allocated and freed once per case. Two things made them costly here, both measured on the
benchmark tasks (benchmarks/bench_ingest.py and benchmarks/NOTES.md):

* glibc serves a block over its mmap threshold (which grows to 32 MiB at most) with freshly
  mapped pages and unmaps it when freed, so every case faulted and zeroed its arrays anew:
  64,000 (CT) and 89,000 (MR) page faults per one-process ingest, against 13,000 and 9,000 with
  freed blocks kept in the heap (`freed_memory_kept`). Ingest 3-6 % faster with one process,
  6-8 % with two; export 5-12 %. The peak stays the largest case's.
* memory a process has never used is slow to fault in on this VM, and slower when two workers
  do it at once (their first cases). One madvise(MADV_POPULATE_WRITE) call over the block a
  case is about to need (`reserve_heap`) is 2-3x cheaper than faulting it page by page, and
  does not slow down when two processes do it at once (256 MiB: 64-71 ms against 142-200 ms,
  by hand). The CT benchmark ingest with two processes: 2.84 s against 2.93 s side by side
  (the workers' system time 0.2 s against 0.5 s); with one process, and on MR, within noise.

Everything here is best effort: without glibc (musl, macOS, Windows), or on a kernel older than
5.14 for `reserve_heap`, it does nothing and memory behaves as by default.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator

# glibc's mallopt parameters (malloc.h) and what they are set to while cases are processed.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30  # bytes: blocks up to this size come from (and go back to) the heap
_TRIM_ABOVE = (1 << 31) - 1  # bytes of free heap top before malloc gives memory back (int max)
# What glibc's own dynamic rule reaches once a process has freed a block of 32 MiB or more
# (DEFAULT_MMAP_THRESHOLD_MAX, and twice that for trimming): restored after the block.
_RESTORED_MMAP_THRESHOLD, _RESTORED_TRIM_THRESHOLD = 32 << 20, 64 << 20
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels answer EINVAL
_PAGE = 4096

_lock = threading.Lock()
_kept_depth = 0  # nesting of freed_memory_kept blocks
_keeping = False  # freed blocks stay in the heap (inside a block, or for a pool worker's life)
_reserved = 0  # bytes the largest reserve_heap call so far faulted in


@functools.cache
def _glibc():
    """The C library when it is glibc (mallopt, malloc_trim), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def keep_freed_memory() -> None:
    """From now on until the process ends, freed blocks up to 1 GiB stay in the heap for reuse
    (a pool worker, which only processes cases)."""
    global _keeping
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE)
    _keeping = True


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """`keep_freed_memory` until the block ends (cases processed in this process). At the end
    the heap's free memory goes back to the system (malloc_trim) and the thresholds are set to
    those glibc's own rule reaches once a process has freed a large array. Blocks nest."""
    global _kept_depth, _keeping, _reserved
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _kept_depth += 1
        if _kept_depth == 1:
            keep_freed_memory()
    try:
        yield
    finally:
        with _lock:
            _kept_depth -= 1
            if _kept_depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _RESTORED_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _RESTORED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
                _keeping, _reserved = False, 0


def reserve_heap(nbytes: int) -> bool:
    """Fault in `nbytes` of heap at once, for a case about to allocate about that much.

    Only while freed memory is kept (otherwise the block would be unmapped again at once), and
    only beyond what an earlier call faulted in: after a process's first (largest) case, later
    calls do nothing. The block is freed again; the case's arrays are then carved from pages
    already there. Returns whether this call faulted memory in.
    """
    global _reserved
    libc = _glibc()
    if libc is None or not _keeping or nbytes <= _reserved or nbytes >= _KEEP_BELOW:
        return False
    with _lock:
        ptr = libc.malloc(nbytes)
        if not ptr:
            return False
        try:
            start = -(-ptr // _PAGE) * _PAGE
            done = libc.madvise(start, (ptr + nbytes - start) // _PAGE * _PAGE, _MADV_POPULATE_WRITE) == 0
        finally:
            libc.free(ptr)
        _reserved = nbytes
        return done
