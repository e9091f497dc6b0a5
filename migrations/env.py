"""Alembic environment: the catalog's models, batch mode for SQLite, a shared connection.

`catalog.db.upgrade_schema()` passes its connection in `config.attributes["connection"]`
(Alembic cookbook: "Sharing a Connection"); the `alembic` command line uses alembic.ini's URL
or $CATALOG_DB.
"""
from alembic import context
from sqlalchemy import create_engine

from catalog.db import resolve_url
from catalog.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or resolve_url()
    with create_engine(url).connect() as connection:
        run_with(connection)
        connection.commit()


if context.is_offline_mode():
    context.configure(url=resolve_url(config.get_main_option("sqlalchemy.url")),
                      target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
