"""Several ingest processes on one catalog: PostgreSQL claims with a SIGKILL, SQLite concurrency,
and the same answers from both backends."""
from __future__ import annotations

import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from catalog.db import make_engine
from catalog.export.nnunet_v1 import export_nnunet_v1
from catalog.ingest import ingest_task
from catalog.models import Case, CaseChannel, CaseClaim, CaseClass, CaseFile, CaseRegion, IngestRun


def start_ingest(task: Path, db_url: str, workers: int = 1, argv=None) -> subprocess.Popen:
    """`catalog ingest` in a new process (`argv`: how to start the CLI, default `python -m catalog`)."""
    argv = argv or (lambda *args: [sys.executable, "-m", "catalog", *map(str, args)])
    return subprocess.Popen(argv("ingest", task, "--workers", workers, "--db", db_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(engine) -> dict:
    """Everything analysed per case, without ids, times and run numbers."""
    with Session(engine) as s:
        result = {}
        for case in s.scalars(select(Case)):
            facts = {k: v for k, v in vars(case).items() if not k.startswith("_") and k not in (
                "id", "task_id", "ingest_run_id", "analyzed_at", "analysis_seconds", "read_seconds", "files")}
            children = {}
            for model in (CaseFile, CaseClass, CaseRegion, CaseChannel):
                rows = s.scalars(select(model).where(model.case_id == case.id)).all()
                children[model.__tablename__] = sorted(
                    tuple(sorted((k, v) for k, v in vars(r).items() if not k.startswith("_") and k not in (
                        "case_id", "mtime_ns"))) for r in rows)
            result[case.identifier] = (facts, children)
        return result


def test_three_workers_one_killed_then_finishing_run(pg_url, make_raw_task, tmp_path, slow_catalog_argv):
    task = make_raw_task("ct", 521, n_cases=30, shape_scale=2.5)
    engine = make_engine(pg_url)  # schema first, so the workers don't race to create it
    # the victim's cases are slowed, so that it is still mid-case when the test gets to kill it
    workers = [start_ingest(task, pg_url, argv=slow_catalog_argv)] + [start_ingest(task, pg_url) for _ in range(2)]
    victim = workers[0]
    deadline = time.monotonic() + 180
    killed_mid_case = False
    while time.monotonic() < deadline and victim.poll() is None:
        with Session(engine) as s:
            held = s.scalars(select(CaseClaim.worker)).all()
            stored = s.scalar(select(func.count()).select_from(Case).where(Case.status == "ok"))
        if stored >= 3 and any(f":{victim.pid}:" in w for w in held):
            victim.send_signal(signal.SIGKILL)
            killed_mid_case = True
            break
        time.sleep(0.01)
    victim.wait()
    assert killed_mid_case, "the victim finished before it could be killed mid-case"
    for proc in workers[1:]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    finishing = ingest_task(engine, task, workers=1)
    assert finishing.failed == 0

    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(CaseClaim)) == 0
        assert s.scalar(select(func.count()).select_from(Case)) == 30
        assert set(s.scalars(select(Case.status))) == {"ok"}
        runs = s.scalars(select(IngestRun)).all()
        # every case analysed exactly once across the surviving runs (the victim's in-flight
        # case was never committed and was done again by another worker)
        assert sum(r.n_new for r in runs) == 30
        per_case = s.execute(select(CaseChannel.case_id, func.count()).group_by(CaseChannel.case_id)).all()
        assert len(per_case) == 30 and {n for _, n in per_case} == {1}

    reference = make_engine(f"sqlite:///{tmp_path / 'single.db'}")
    ingest_task(reference, task, workers=1)
    assert snapshot(engine) == snapshot(reference)
    engine.dispose()
    reference.dispose()


def test_two_processes_on_one_sqlite_file(make_raw_task, tmp_path):
    task = make_raw_task("mr", 522, n_cases=12, shape_scale=1.5)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [start_ingest(task, url) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "locked" not in err
    engine = make_engine(url)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Case).where(Case.status == "ok")) == 12
        assert sum(r.n_new for r in s.scalars(select(IngestRun))) == 12
        assert s.scalar(select(func.count()).select_from(CaseChannel)) == 24
    engine.dispose()


def _load_folder(folder: Path) -> dict:
    """Our own export's files (we wrote them, so unpickling them is safe)."""
    content = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".pkl":
            content[path.name] = repr(pickle.loads(path.read_bytes()))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                content[path.name] = z["data"].tobytes()
        elif path.name == "dataset.json":
            content[path.name] = path.read_bytes()
    return content


def test_opening_a_new_sqlite_catalog_waits_for_another_connections_write_lock(tmp_path):
    """Two processes opening a new catalog at once: while one holds the write lock of the file,
    still in rollback mode, SQLite fails the other's switch to WAL at once (no busy handler);
    opening must wait for the lock instead (this failed CI about once in 40 simultaneous opens)."""
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other_tool (x)")
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    engine = make_engine(f"sqlite:///{path}")
    waited = time.monotonic() - started
    release.join()
    holder.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert waited >= 0.4
    engine.dispose()


def test_sqlite_and_postgres_give_identical_exports(pg_url, mr_task, tmp_path):
    folders = []
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'c.db'}"), ("postgres", pg_url)):
        engine = make_engine(url)
        ingest_task(engine, mr_task, workers=2)
        out = tmp_path / name / mr_task.name
        export_nnunet_v1(engine, mr_task.name, str(out), workers=1)
        folders.append(_load_folder(out))
        engine.dispose()
    assert folders[0].keys() == folders[1].keys() and len(folders[0]) > 10
    for key in folders[0]:
        assert folders[0][key] == folders[1][key], key
