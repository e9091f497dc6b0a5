"""The README stays true: its example queries give the shown output (both backends), every
command has help and is documented, every data check is in the README's table, and the models
and migrations agree."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from catalog.checks import CHECKS
from catalog.cli import app

README = (Path(__file__).parent.parent / "README.md").read_text()


def readme_queries() -> list[tuple[str, str]]:
    section = README.split("## Questions across tasks", 1)[1].split("\n## ", 1)[0]
    pairs = re.findall(r"```sh\n(catalog query .*?)\n```\n```text\n(.*?)\n```", section, re.S)
    return [(shlex.split(cmd)[2], output) for cmd, output in pairs]


def test_readme_has_at_least_five_queries():
    assert len(readme_queries()) >= 5


def test_readme_queries_give_the_shown_output(db_url, tmp_path):
    from catalog.db import make_engine
    from catalog.ingest import ingest_task
    from catalog.synthetic import make_task

    engine = make_engine(db_url)
    raw = tmp_path / "nnUNet_raw_data"
    for task in (make_task(raw, "ct", task_id=901, name="DemoCT", seed=0),
                 make_task(raw, "mr", task_id=902, name="DemoMR", seed=0)):
        ingest_task(engine, task, workers=1)
    engine.dispose()
    runner = CliRunner()
    for sql, expected in readme_queries():
        result = runner.invoke(app, ["query", sql, "--db", db_url])
        assert result.exit_code == 0, result.output
        assert result.output.rstrip() == expected, sql


def _commands(group, prefix=""):
    import typer.main

    click_group = typer.main.get_command(group)
    for name, command in click_group.commands.items():
        if hasattr(command, "commands"):
            yield from ((f"{prefix}{name} {n}", c) for n, c in command.commands.items())
        else:
            yield f"{prefix}{name}", command


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    for name, command in _commands(app):
        assert command.help and "Example:" in command.help, name
        assert f"catalog {name}" in README or f"catalog {name.split()[0]}" in README, name
        assert CliRunner().invoke(app, [*name.split(), "--help"]).exit_code == 0


def test_every_check_is_documented():
    for check, (severity, _) in CHECKS.items():
        assert f"| `{check}` | {severity} |" in README, check


def test_models_and_migrations_agree(tmp_path):
    """alembic check: autogenerate finds nothing to change after upgrading to head."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from catalog.models import Base
    from test_schema import migrated_engine

    engine = migrated_engine(f"sqlite:///{tmp_path / 'c.db'}")  # not make_engine: it builds from the models
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
