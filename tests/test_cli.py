"""The command line: exit codes and readable errors (never a traceback for a user mistake)."""
from __future__ import annotations

from typer.testing import CliRunner

from catalog.cli import app

runner = CliRunner()


def test_ingest_show_export_roundtrip(sqlite_url, ct_task, tmp_path):
    result = runner.invoke(app, ["ingest", str(ct_task), "--db", sqlite_url, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"{ct_task.name}: 8 cases listed; 8 new" in result.output
    assert "per analysed case:" in result.output and "label_outside_crop (warning) x1" in result.output
    strict = runner.invoke(app, ["ingest", str(ct_task), "--db", sqlite_url, "--strict"])
    assert strict.exit_code == 0 and "8 unchanged" in strict.output  # nothing re-checked, nothing new found
    out = tmp_path / "cropped"
    result = runner.invoke(app, ["export", "nnunet-v1", "501", "--db", sqlite_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "dataset_properties.pkl").exists() and len(list(out.glob("*.npz"))) == 8


def test_task_resolution_by_number_under_nnunet_raw_data_base(sqlite_url, ct_task, monkeypatch):
    monkeypatch.setenv("nnUNet_raw_data_base", str(ct_task.parent.parent))
    result = runner.invoke(app, ["ingest", "501", "--db", sqlite_url, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert ct_task.name in result.output


def test_user_errors_are_one_line(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw_data_base", raising=False)
    cases = [
        (["ingest", str(tmp_path / "nope"), "--db", sqlite_url], "no such folder"),
        (["show", "Task999_Missing", "--db", sqlite_url], "no task 'Task999_Missing'"),
        (["export", "nnunet-v1", "Task999_Missing", "--db", sqlite_url, "--out", str(tmp_path / "o")], "no task"),
        (["ingest", str(tmp_path), "--db", sqlite_url], "dataset.json: missing"),
        (["tasks", "--db", "postgresql+nosuchdriver://x/y"], "invalid database URL"),
        (["tasks", "--db", "postgresql+psycopg://127.0.0.1:1/none"], "cannot use the database"),
        (["tasks", "--db", f"sqlite:///{tmp_path}/no/such/dir/c.db"], "unable to open database file"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_export_refuses_foreign_folder(sqlite_url, ct_task, tmp_path):
    runner.invoke(app, ["ingest", str(ct_task), "--db", sqlite_url, "--workers", "1"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["export", "nnunet-v1", ct_task.name, "--db", sqlite_url, "--out", str(foreign)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_db_upgrade_reports_revisions(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert first.exit_code == 0 and "schema empty -> 0002" in first.output
    second = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert "already at 0002" in second.output
