"""Worker process pools for ingest, check and export: one place decides how processes start and
how a process that works through cases treats the garbage collector (its memory: catalog/memory.py).

`fork` starts a worker in about 10 ms with everything already imported; a `forkserver` first
has to import numpy and SimpleITK (0.16–0.3 s here, benchmarks/probe_machine.py). Forking
is safe only while this process runs no other thread (a lock held by another thread at the fork
stays locked forever in the child), so `fork` is used only then and only on Linux; otherwise
the forkserver, which forks from a clean single-threaded process. Workers never touch the
parent's database connections: they take plain data and return plain data.
"""
from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor  # not lazily: its import is 40 ms cold

from . import memory

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


def _start_worker() -> None:
    """Pool worker set-up: it only processes cases until the pool ends."""
    memory.keep_freed_memory()


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


def let_workers_finish(pool: ProcessPoolExecutor) -> Callable[[], None]:
    """Let `pool`'s workers exit once the work already submitted is done, without waiting for
    them (the caller goes on storing results), and return a function that waits until they have
    exited and been reaped.

    `shutdown(wait=False)` leaves the joining to the executor's manager thread, and a later
    `shutdown(wait=True)` no longer waits for that thread: without the returned function the
    caller could return with worker processes, and the thread, still alive (seen in one of three
    two-worker ingests of the CT benchmark task).
    """
    manager = getattr(pool, "_executor_manager_thread", None)  # CPython's, not public API
    pool.shutdown(wait=False)
    return manager.join if manager is not None else lambda: None
