"""Database URL resolution, engines, sessions and schema migrations (Alembic, run in-process)."""
from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import dialect
from .errors import CatalogError, SchemaOutOfDateError

DEFAULT_URL = "sqlite:///catalog.db"
ENV_VAR = "CATALOG_DB"


def resolve_url(url: str | None = None) -> str:
    """`--db URL`, else $CATALOG_DB, else sqlite:///catalog.db in the current folder."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: show it as given
        return url


def make_engine(url: str | None = None, *, read_only: bool = False, upgrade: bool = True) -> Engine:
    """An engine for `url` with the backend's settings, its schema upgraded to head first."""
    url = resolve_url(url)
    try:
        engine = create_engine(url, **dialect.engine_options(url))
    except ModuleNotFoundError as exc:
        raise CatalogError(
            f"the database driver for {redact(url)} is not installed ({exc.name}); "
            "for PostgreSQL install the extra: pip install 'catalog[postgres]'") from exc
    except Exception as exc:
        raise CatalogError(f"invalid database URL {redact(url)}: {exc}") from exc
    dialect.configure_engine(engine, read_only=read_only)
    try:
        if upgrade and not read_only:
            upgrade_schema(engine)
        elif upgrade:
            check_schema(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise CatalogError(f"cannot use the database {redact(url)}: {describe_db_error(exc)}") from exc
    return engine


def describe_db_error(exc: SQLAlchemyError) -> str:
    """The driver's own first line, without SQLAlchemy's boilerplate."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise CatalogError(f"database error on {redact(str(engine.url))}: {describe_db_error(exc)}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# ---- migrations ---------------------------------------------------------------------------------

def migrations_dir() -> Path:
    """Folder of the Alembic scripts: the repository's migrations/, shipped as catalog.migrations."""
    from . import migrations  # noqa: PLC0415  (package data, mapped in pyproject.toml)

    return Path(migrations.__file__).parent


def alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def stored_revision(conn: Connection) -> str | None:
    """The revision in Alembic's version table, read with plain SQL (None: no such table)."""
    if not sa_inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return stored_revision(conn)


def check_schema(engine: Engine) -> None:
    """Raise if the database is at a revision this catalog does not know (a newer catalog wrote it)."""
    current = current_revision(engine)
    if current == SCHEMA_HEAD:
        return
    if current is None:
        raise CatalogError(f"{redact(str(engine.url))} holds no catalog yet: run `catalog db upgrade` or an ingest first")
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revision(current)
    except Exception as exc:
        raise SchemaOutOfDateError(
            f"the catalog database is at schema revision {current}, which this catalog does not know; "
            "it was written by a newer catalog: upgrade catalog (pip install -U catalog)") from exc


# The newest migration in migrations/versions. A catalog already at it is used without
# Alembic, and a new catalog gets this schema from the models at once (`create_head_schema`):
# importing Alembic takes about 0.2 s, as long as the rest of a short command.
# tests/test_schema.py checks it against Alembic's head, and the two ways' schemas against each other.
SCHEMA_HEAD = "0002"


def _head_migration():
    return importlib.import_module("catalog.migrations.versions.0002_summary_views")


def create_head_schema(conn: Connection) -> None:
    """The schema at SCHEMA_HEAD in an empty database, without Alembic: the models' tables, the
    head migration's views, and Alembic's version table saying SCHEMA_HEAD (as `alembic stamp`
    writes it), so later migrations apply as usual."""
    from .models import Base

    Base.metadata.create_all(conn)
    for sql in _head_migration().CREATE_VIEWS:
        conn.execute(text(sql))
    conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                      "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": SCHEMA_HEAD})


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to head (no-op when current). Returns (before, after) revisions."""
    before = current_revision(engine)
    if before == SCHEMA_HEAD:
        return before, SCHEMA_HEAD
    with engine.begin() as conn:
        dialect.lock_migrations(conn)
        if not sa_inspect(conn).get_table_names():  # a new database (looked at under the lock)
            create_head_schema(conn)
            return None, SCHEMA_HEAD

    from alembic import command

    head = head_revision()
    before = current_revision(engine)  # again: another process may have upgraded it meanwhile
    if before == head:
        return before, head
    if before is not None:
        check_schema(engine)
    with engine.begin() as conn:
        dialect.lock_migrations(conn)
        command.upgrade(alembic_config(conn), "head")
    return before, head
