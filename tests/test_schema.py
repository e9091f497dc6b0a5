"""A new catalog's schema made without Alembic (catalog.db.create_head_schema, the models plus
the head migration's views) is the schema the migrations make, on both backends; and a catalog
at the head revision is opened without importing Alembic."""
from __future__ import annotations

import subprocess
import sys

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from catalog import db, dialect


def migrated_engine(url: str):
    """An engine on `url` whose schema Alembic built, migration by migration."""
    engine = create_engine(url, **dialect.engine_options(url))
    dialect.configure_engine(engine)
    with engine.begin() as conn:
        command.upgrade(db.alembic_config(conn), "head")
    return engine


def schema_facts(engine) -> dict:
    """Everything the inspector reports: tables (columns, keys, indexes, constraints) and views."""
    insp = inspect(engine)

    def by_name(items):
        return sorted((repr(sorted(item.items())) for item in items))

    facts: dict = {}
    for table in sorted(insp.get_table_names()):
        facts[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                        for c in insp.get_columns(table)],
            "primary key": insp.get_pk_constraint(table),
            "foreign keys": by_name(insp.get_foreign_keys(table)),
            "indexes": by_name(insp.get_indexes(table)),
            "unique": by_name(insp.get_unique_constraints(table)),
            "checks": by_name(insp.get_check_constraints(table)),
        }
    facts["views"] = {name: " ".join(insp.get_view_definition(name).split()) for name in sorted(insp.get_view_names())}
    with engine.connect() as conn:
        facts["revision"] = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return facts


def test_schema_head_is_alembics_head():
    assert db.SCHEMA_HEAD == ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def test_a_new_catalog_gets_the_schema_the_migrations_make(new_db_url):
    fast = db.make_engine(new_db_url())
    migrated = migrated_engine(new_db_url())
    try:
        expected = schema_facts(migrated)
        assert {"cases", "findings", "case_claims", "channel_statistics"} <= set(expected)
        assert set(expected["views"]) == {"task_summary", "case_summary", "class_summary", "channel_intensity"}
        assert schema_facts(fast) == expected
    finally:
        fast.dispose()
        migrated.dispose()


def test_a_migrated_catalog_is_left_as_it_is(new_db_url):
    url = new_db_url()
    migrated_engine(url).dispose()
    engine = db.make_engine(url)
    assert db.upgrade_schema(engine) == (db.SCHEMA_HEAD, db.SCHEMA_HEAD)
    engine.dispose()


def test_an_older_catalog_is_upgraded_by_the_migrations(sqlite_url):
    engine = create_engine(sqlite_url, **dialect.engine_options(sqlite_url))
    dialect.configure_engine(engine)
    with engine.begin() as conn:
        command.upgrade(db.alembic_config(conn), "0001")
    assert db.upgrade_schema(engine) == ("0001", db.SCHEMA_HEAD)
    assert "case_summary" in inspect(engine).get_view_names()
    engine.dispose()


def test_opening_a_catalog_does_not_import_alembic(tmp_path):
    """Importing Alembic costs about 0.2 s: a new catalog and one at head need none of it."""
    script = ("import sys; from catalog.db import make_engine; u = sys.argv[1]; "
              "make_engine(u).dispose(); make_engine(u).dispose(); make_engine(u, read_only=True).dispose(); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path / 'c.db'}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
