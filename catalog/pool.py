"""Worker process pools for ingest, check and export: one place decides how processes start and
how a process that works through cases treats the garbage collector and freed memory.

`fork` starts a worker in about 10 ms with everything already imported; a `forkserver` first
has to import numpy and SimpleITK (0.16–0.3 s here, benchmarks/probe_machine.py). Forking
is safe only while this process runs no other thread (a lock held by another thread at the fork
stays locked forever in the child), so `fork` is used only then and only on Linux; otherwise
the forkserver, which forks from a clean single-threaded process. Workers never touch the
parent's database connections: they take plain data and return plain data.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor  # not lazily: its import is 40 ms cold

_PRELOAD = ["catalog.casework"]  # what every worker needs: numpy, SimpleITK, cc3d, the analysis


def start_method() -> str:
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@contextlib.contextmanager
def objects_frozen() -> Iterator[None]:
    """Leave every object that exists now out of garbage collection until the block ends.

    After the imports a process holds about 80,000 tracked objects (numpy, SimpleITK,
    SQLAlchemy); a full collection walks all of them (26 ms here) and the first ones come
    within a few dozen ORM statements. Objects made inside the block are collected as usual.
    Nested blocks leave the unfreezing to the outermost one.
    """
    outermost = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if outermost:
            gc.unfreeze()


# glibc's mallopt parameters (malloc.h) and what they are set to while cases are processed.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BELOW = 1 << 30  # bytes: blocks up to this size come from (and go back to) the heap
_TRIM_ABOVE = (1 << 31) - 1  # bytes of free heap top before malloc gives memory back (int max)
# What glibc's own dynamic rule reaches once a process has freed a block of 32 MiB or more
# (DEFAULT_MMAP_THRESHOLD_MAX, and twice that for trimming): restored after the block.
_RESTORED_MMAP_THRESHOLD, _RESTORED_TRIM_THRESHOLD = 32 << 20, 64 << 20
_kept_depth = 0
_kept_lock = threading.Lock()


def _glibc():
    """The C library when it is glibc (mallopt, malloc_trim), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _keep_freed_memory(libc) -> None:
    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)
    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE)


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Let malloc keep freed blocks of any size (up to 1 GiB) for reuse until the block ends.

    glibc serves a block over its mmap threshold (which grows to 32 MiB at most) with freshly
    mapped pages and unmaps it when freed, so every case's label, masks and inflated bytes were
    page-faulted and zeroed anew: 64,000 (CT) and 89,000 (MR) page faults per one-process
    ingest of the benchmark tasks, against 13,000 and 9,000 with the blocks kept. Measured side
    by side (fastest of 3), ingest took 3-6 % less time with one process and 6-8 % with two,
    export 11-12 % and 5-7 % (benchmarks/bench_ingest.py against the parent commit). The peak
    stays the largest case's. At the end the heap's free memory goes back to the system
    (malloc_trim) and the thresholds are set to those glibc's own rule reaches once a process
    has freed a large array. No-op without glibc.
    """
    global _kept_depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _kept_lock:
        _kept_depth += 1
        if _kept_depth == 1:
            _keep_freed_memory(libc)
    try:
        yield
    finally:
        with _kept_lock:
            _kept_depth -= 1
            if _kept_depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _RESTORED_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _RESTORED_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def _start_worker() -> None:
    """Pool worker set-up: it only processes cases until the pool ends (see freed_memory_kept)."""
    libc = _glibc()
    if libc is not None:
        _keep_freed_memory(libc)


def process_pool(max_workers: int) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of `max_workers` processes started as `start_method()` says.

    With `fork`, every worker is forked here, before the executor starts its own management
    thread.
    """
    context = multiprocessing.get_context(start_method())
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(_PRELOAD)
    pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=context, initializer=_start_worker)
    if context.get_start_method() == "fork":
        # Fork every worker now, with the parent's objects frozen out of the garbage collector:
        # a collection in a child would otherwise write to (and so copy) every page holding them.
        with objects_frozen():
            pool.submit(int)  # forks every worker before returning
    return pool
