"""Everything that differs between SQLite and PostgreSQL lives here.

Callers ask for behaviour ("lock this row for a claim", "make this session read-only"), never
test `engine.dialect.name` themselves.
"""
from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, Select, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 60_000


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def is_postgres(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "postgresql"


def engine_options(url: str) -> dict[str, Any]:
    """create_engine() keyword arguments for this URL's backend."""
    if url.startswith("sqlite"):
        options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                                    "check_same_thread": False}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            options["poolclass"] = StaticPool  # one shared connection, or the data vanishes
        return options
    return {"pool_pre_ping": True}


def configure_engine(engine: Engine, read_only: bool = False) -> None:
    """Install per-connection settings.

    SQLite: WAL (readers never block the writer), a busy timeout, foreign keys on, and
    BEGIN IMMEDIATE for every transaction so that two processes never both hold a read lock
    and then deadlock when upgrading it to a write lock ("database is locked").
    A read-only engine uses `PRAGMA query_only` instead.
    PostgreSQL: a read-only engine opens every transaction READ ONLY.
    """
    if is_sqlite(engine):
        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if engine.url.database not in (None, "", ":memory:"):
                _switch_to_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            if read_only:
                cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
    elif is_postgres(engine) and read_only:
        @event.listens_for(engine, "connect")
        def _pg_connect(dbapi_connection, _record):
            # session default, so that even a COMMIT inside the user's SQL leaves it read-only
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            dbapi_connection.commit()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """PRAGMA journal_mode=WAL, retried while another connection holds the file's write lock.

    The switch needs an exclusive lock, and while another connection holds a RESERVED lock on a
    database still in rollback mode (a new catalog that two processes open at the same moment)
    SQLite answers "database is locked" at once instead of calling the busy handler.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.1)


def lock_for_claim(stmt: Select) -> Select:
    """Row lock that other workers skip instead of waiting for (PostgreSQL).

    On SQLite the whole write transaction is already exclusive (BEGIN IMMEDIATE), and
    SQLAlchemy drops FOR UPDATE there, so the same statement works on both.
    """
    return stmt.with_for_update(skip_locked=True)


def lock_migrations(conn: Connection) -> None:
    """Serialise schema upgrades of concurrent processes (first use from many workers)."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(7264001)"))


def store_float(value: float | None) -> float | None:
    """SQLite turns a bound NaN into NULL, PostgreSQL keeps it: store NaN as NULL on both."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def load_float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def epoch_now(bind: Engine | Connection) -> float:
    """Seconds since the epoch on the database server's clock (one clock for all workers)."""
    if is_postgres(bind):
        sql = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"
    else:
        sql = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    with bind.connect() if isinstance(bind, Engine) else _nullcontext(bind) as conn:
        return float(conn.exec_driver_sql(sql).scalar())


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def upsert(session, model, rows: list[dict], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE: concurrent workers may write the same rows."""
    if not rows:
        return
    if is_postgres(session.get_bind()):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(model).values(rows)
    updates = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates))


def lock_task(session, task_name: str) -> None:
    """Serialise the task-level bookkeeping of concurrent ingests of one task (PostgreSQL: an
    advisory lock held to the end of the transaction; SQLite: BEGIN IMMEDIATE already does)."""
    if is_postgres(session.get_bind()):
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": "catalog-task:" + task_name})
