"""Worker pools fork when that is safe (no other thread) and use the forkserver otherwise; both
give the same catalog."""
from __future__ import annotations

import sys
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog import pool
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
