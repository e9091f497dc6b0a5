"""Worker pools fork when that is safe (no other thread) and use the forkserver otherwise; both
give the same catalog."""
from __future__ import annotations

import multiprocessing
import multiprocessing.util
import sys
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog import memory, pool
from catalog.ingest import ingest_task
from catalog.models import Case, CaseRegion


@pytest.fixture
def busy_thread():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_fork_only_without_other_threads(busy_thread):
    assert pool.start_method() == "forkserver"  # a thread runs: never fork


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_fork_when_single_threaded():
    if threading.active_count() != 1:
        pytest.skip("the test runner itself runs threads here")
    assert pool.start_method() == "fork"


def _catalog(engine) -> list:
    with Session(engine) as s:
        cases = s.execute(select(Case.identifier, Case.status, Case.bbox_z0, Case.bbox_z1, Case.nonzero_voxels,
                                 Case.foreground_voxels).order_by(Case.identifier)).all()
        regions = s.execute(select(CaseRegion.class_value, CaseRegion.region_index, CaseRegion.voxel_count)
                            .order_by(CaseRegion.case_id, CaseRegion.class_value, CaseRegion.region_index)).all()
    return [tuple(r) for r in cases] + [tuple(r) for r in regions]


def test_forked_and_forkserver_workers_give_the_same_catalog(sqlite_url, tmp_path, ct_task, busy_thread):
    from catalog.db import make_engine

    assert pool.start_method() != "fork"  # busy_thread runs: forkserver workers
    threaded = make_engine(sqlite_url)
    assert ingest_task(threaded, ct_task, workers=2).failed == 0
    single = make_engine(f"sqlite:///{tmp_path / 'second.db'}")
    ingest_task(single, ct_task, workers=1)  # in-process
    assert _catalog(threaded) == _catalog(single)
    assert len(_catalog(single)) > 5


original_start_worker = pool._start_worker


def _slow_exit_worker() -> None:
    """The pool's worker set-up, plus half a second spent leaving (run in the worker)."""
    original_start_worker()
    multiprocessing.util.Finalize(None, time.sleep, args=(0.5,), exitpriority=0)


def test_ingest_returns_once_its_workers_have_exited(sqlite_url, ct_task, monkeypatch):
    """Workers told to finish early (while the last cases are stored) are still waited for:
    ingest_task returns with none of its worker processes alive, even when they are slow to exit."""
    from catalog.db import make_engine

    if pool.start_method() != "fork":
        pytest.skip("the slow exit is set up in the parent, which only forked workers inherit")
    monkeypatch.setattr(pool, "_start_worker", _slow_exit_worker)
    children_before = set(multiprocessing.active_children())
    summary = ingest_task(make_engine(sqlite_url), ct_task, workers=2)
    assert summary.new == 8 and summary.failed == 0
    assert set(multiprocessing.active_children()) == children_before


def test_objects_frozen_nests_and_still_collects_new_garbage():
    import gc
    import weakref

    class Node:
        pass

    if gc.get_freeze_count():
        pytest.skip("something froze objects before this test")
    before = Node()
    before.cycle = before
    with pool.objects_frozen():
        assert gc.get_freeze_count() > 0
        with pool.objects_frozen():
            pass
        assert gc.get_freeze_count() > 0  # the inner block leaves the unfreezing to the outer one
        made_inside = Node()
        made_inside.cycle = made_inside
        gone = weakref.ref(made_inside)
        del made_inside
        gc.collect()
        assert gone() is None  # garbage made inside the block is collected as usual
        frozen = weakref.ref(before)
        del before
        gc.collect()
        assert frozen() is not None  # frozen: left out of collections
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen() is None  # collected once the block ends


_BLOCK = 64 << 20  # over glibc's largest dynamic mmap threshold (32 MiB)
glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="malloc tuning is for glibc only")


def _allocate_and_write() -> int:
    """Minor page faults while a 64 MiB block is allocated, written and freed (bytearray: plain
    malloc, without numpy's huge-page advice)."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(_BLOCK)
    np.frombuffer(block, np.uint8)[:] = 1
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _faults_of_second_block() -> int:
    """Page faults of the second of two 64 MiB blocks allocated one after the other."""
    _allocate_and_write()
    return _allocate_and_write()


@glibc_only
def test_freed_memory_kept_reuses_large_blocks_then_gives_them_back():
    pages = _BLOCK // 4096
    with memory.freed_memory_kept():
        with memory.freed_memory_kept():
            pass
        assert _faults_of_second_block() < pages // 10  # still kept after the inner block ended
    assert _faults_of_second_block() > pages // 2  # after the outer one: mapped afresh each time


@glibc_only
def test_pool_workers_keep_freed_memory():
    with pool.process_pool(1) as workers:
        assert workers.submit(_faults_of_second_block).result() < (_BLOCK // 4096) // 10


@glibc_only
def test_reserve_heap_faults_a_case_s_memory_in_beforehand():
    pages = _BLOCK // 4096
    assert not memory.reserve_heap(_BLOCK)  # freed memory not kept: it would be unmapped at once
    with memory.freed_memory_kept():
        assert _allocate_and_write() > pages // 2  # a fresh heap: faulted in page by page
    with memory.freed_memory_kept():  # the first block gave its memory back
        if not memory.reserve_heap(_BLOCK + (1 << 20)):
            pytest.skip("no MADV_POPULATE_WRITE (Linux < 5.14)")
        assert not memory.reserve_heap(_BLOCK)  # already there
        assert _allocate_and_write() < pages // 10
