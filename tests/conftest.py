"""Shared fixtures: a database URL on every backend, and small generated tasks.

Every test that takes `db_url` runs twice: on a fresh SQLite file and on a fresh PostgreSQL
database (created on the local server, dropped afterwards). Set CATALOG_TEST_PG to another
server's URL (a database the tests may create databases from); the PostgreSQL runs fail, not
skip, when the server is unreachable, so CI cannot pass without them.
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("CATALOG_TEST_PG", "postgresql://127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10)


@pytest.fixture
def new_pg_url():
    """Makes fresh, empty PostgreSQL databases (SQLAlchemy URLs), dropped after the test."""
    from sqlalchemy.engine import make_url

    names = []

    def make() -> str:
        names.append(f"catalog_test_{uuid.uuid4().hex[:12]}")
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{names[-1]}"')
        url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=names[-1])
        return url.render_as_string(hide_password=False)

    yield make
    with _pg_admin() as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(new_pg_url):
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy URL)."""
    return new_pg_url()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=BACKENDS)
def new_db_url(request, tmp_path):
    """Makes fresh, empty databases on each backend in turn (URLs)."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex[:12]}.db"
    return request.getfixturevalue("new_pg_url")


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    from catalog.db import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


# ---- generated tasks (built once per session, copied per test so tests may modify them) -------

@pytest.fixture(scope="session")
def task_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tasks")


def _cached_task(cache: Path, kind: str, task_id: int, **kwargs) -> Path:
    from catalog.synthetic import make_task

    marker = cache / f"{kind}-{task_id}-{sorted(kwargs.items())}".replace(" ", "")
    if not marker.exists():
        marker.mkdir()
        make_task(marker / "nnUNet_raw_data", kind, task_id=task_id, **kwargs)
    return next((marker / "nnUNet_raw_data").iterdir())


@pytest.fixture
def make_raw_task(task_cache, tmp_path):
    """make_raw_task(kind, task_id=..., **make_task kwargs) -> a private copy of a generated task
    at tmp_path/raw/nnUNet_raw_data/TaskNNN_Name."""
    def make(kind: str = "ct", task_id: int = 501, **kwargs) -> Path:
        source = _cached_task(task_cache, kind, task_id, **kwargs)
        target = tmp_path / "raw" / "nnUNet_raw_data" / source.name
        shutil.copytree(source, target)
        return target

    return make


@pytest.fixture
def ct_task(make_raw_task) -> Path:
    return make_raw_task("ct", 501)


@pytest.fixture
def mr_task(make_raw_task) -> Path:
    return make_raw_task("mr", 502)


# Runs the CLI with every case analysed in that process (--workers 1) taking 0.15 s longer, for
# tests that stop an ingest part way: the small generated cases ingest at 30-40 a second, and a
# poll of the test that came late missed a whole 14-case run.
_SLOW_CASES_CLI = ("import time, catalog.ingest as ingest; from catalog.cli import main; "
                   "real = ingest.run_case; ingest.run_case = lambda job: (time.sleep(0.15), real(job))[1]; main()")


@pytest.fixture
def slow_catalog_argv():
    """argv of `catalog ARGS...` in a new Python process whose in-process cases each take 0.15 s
    longer (a test can then stop it part way)."""
    return lambda *args: [sys.executable, "-c", _SLOW_CASES_CLI, *map(str, args)]
