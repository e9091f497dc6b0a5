"""The documented SQL views against values computed independently with numpy (both backends),
and `catalog query` / browsing commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog.cli import app
from catalog.ingest import ingest_task
from catalog.query import run_query
from catalog.errors import CatalogError

from reference_v1 import reference_task


def rows_as_dicts(sql, url):
    columns, rows = run_query(sql, url)
    return [dict(zip(columns, r)) for r in rows]


@pytest.fixture
def two_tasks(engine, db_url, ct_task, mr_task):
    for task in (ct_task, mr_task):
        ingest_task(engine, task, workers=1)
    return {ct_task.name: reference_task(ct_task), mr_task.name: reference_task(mr_task)}


def test_case_summary(two_tasks, db_url):
    rows = rows_as_dicts("SELECT * FROM case_summary", db_url)
    assert len(rows) == sum(len(t["cases"]) for t in two_tasks.values())
    for row in rows:
        ref = two_tasks[row["task"]]["cases"][row["case_identifier"]]
        assert (row["spacing_z"], row["spacing_y"], row["spacing_x"]) == ref["spacing_zyx"]
        assert (row["original_size_z"], row["original_size_y"], row["original_size_x"]) == ref["original_size_zyx"]
        assert (row["cropped_size_z"], row["cropped_size_y"], row["cropped_size_x"]) == ref["cropped_size_zyx"]
        assert [[row["bbox_z0"], row["bbox_z1"]], [row["bbox_y0"], row["bbox_y1"]],
                [row["bbox_x0"], row["bbox_x1"]]] == ref["bbox"]
        assert row["size_reduction"] == ref["size_reduction"]
        assert row["foreground_fraction"] == ref["foreground_voxels"] / np.prod(ref["cropped_size_zyx"])
        assert row["all_classes_num_regions"] == ref["all_classes_regions"]


def test_class_summary(two_tasks, db_url):
    rows = rows_as_dicts("SELECT * FROM class_summary ORDER BY task, class_value", db_url)
    expected = []
    for task, ref in sorted(two_tasks.items()):
        for c in ref["classes"]:
            per_case = [r for r in ref["cases"].values()]
            present = [r for r in per_case if r["classes"][c]["voxels"] > 0]
            volumes = [r["classes"][c]["voxels"] * r["voxel_volume"] for r in present]
            expected.append({
                "task": task, "class_value": c, "class_name": ref["labels"][c], "cases": len(per_case),
                "cases_present": len(present), "total_volume_mm3": sum(volumes),
                "median_volume_mm3": float(np.median(volumes)) if volumes else None,
                "median_regions": float(np.median([len(r["classes"][c]["regions"]) for r in present])) if present else None,
                "one_piece_share": (sum(len(r["classes"][c]["regions"]) == 1 for r in present) / len(present))
                if present else None})
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-12), key
            else:
                assert got[key] == value, key


def test_task_summary(two_tasks, db_url):
    rows = {r["task"]: r for r in rows_as_dicts("SELECT * FROM task_summary", db_url)}
    assert set(rows) == set(two_tasks)
    for task, ref in two_tasks.items():
        row = rows[task]
        spacings = np.array([c["spacing_zyx"] for c in ref["cases"].values()])
        sizes = np.array([c["cropped_size_zyx"] for c in ref["cases"].values()])
        med = np.median(spacings, axis=0)
        assert (row["median_spacing_z"], row["median_spacing_y"], row["median_spacing_x"]) == pytest.approx(tuple(med), rel=1e-15)
        assert (row["median_size_z"], row["median_size_y"], row["median_size_x"]) == tuple(np.median(sizes, axis=0))
        assert row["anisotropy"] == pytest.approx(med.max() / med.min(), rel=1e-15)
        assert (row["cases"], row["failed_cases"], row["channels"], row["classes"]) == (
            len(ref["cases"]), 0, len(ref["modalities"]), len(ref["classes"]))


def test_channel_intensity(two_tasks, db_url):
    rows = rows_as_dicts("SELECT * FROM channel_intensity ORDER BY task, channel", db_url)
    assert len(rows) == sum(len(t["modalities"]) for t in two_tasks.values())
    for row in rows:
        ref = two_tasks[row["task"]]
        pooled = np.concatenate([ref["cases"][i]["samples"][row["channel"]] for i in sorted(ref["cases"])])
        assert row["modality"] == ref["modalities"][row["channel"]]
        assert row["samples"] == pooled.size and row["cases"] == len(ref["cases"])
        assert row["median"] == float(np.median(pooled))
        assert (row["mn"], row["mx"]) == (float(pooled.min()), float(pooled.max()))
        assert row["mean"] == pytest.approx(float(pooled.mean(dtype=np.float64)), rel=1e-6)
        assert row["sd"] == pytest.approx(float(pooled.astype(np.float64).std()), rel=1e-5)
        for q, key in ((0.5, "percentile_00_5"), (99.5, "percentile_99_5")):
            assert row[key] == pytest.approx(float(np.percentile(pooled.astype(np.float64), q)), rel=1e-6)


def test_query_refuses_writes_and_reports_bad_sql(two_tasks, db_url):
    for sql in ("DELETE FROM tasks", "CREATE TABLE x (i INTEGER)", "UPDATE cases SET status = 'ok'",
                "DROP VIEW task_summary"):
        with pytest.raises(CatalogError, match="read-only"):
            run_query(sql, db_url)
    with pytest.raises(CatalogError, match="SQL error"):
        run_query("SELEC 1", db_url)
    assert run_query("SELECT COUNT(*) AS n FROM tasks", db_url) == (["n"], [(2,)])
    runner = CliRunner()
    result = runner.invoke(app, ["query", "DELETE FROM tasks", "--db", db_url])
    assert result.exit_code == 1 and "read-only" in result.output and "Traceback" not in result.output


def test_browse_commands(two_tasks, db_url, ct_task):
    runner = CliRunner()
    tasks = json.loads(runner.invoke(app, ["tasks", "--db", db_url, "--format", "json"]).output)
    assert [t["task"] for t in tasks] == sorted(two_tasks)
    cases = json.loads(runner.invoke(app, ["cases", ct_task.name, "--db", db_url, "--format", "json"]).output)
    assert [c["case"] for c in cases] == sorted(two_tasks[ct_task.name]["cases"])
    shown = json.loads(runner.invoke(app, ["show", ct_task.name, "--db", db_url, "--format", "json"]).output)
    assert shown["cases"] == len(cases) and shown["all_classes"] == two_tasks[ct_task.name]["classes"]
    text = runner.invoke(app, ["show", ct_task.name, "--db", db_url])
    assert text.exit_code == 0 and "median spacing" in text.output
    csv_out = runner.invoke(app, ["query", "SELECT task, cases FROM task_summary ORDER BY task", "--db", db_url,
                                  "--format", "csv"]).output
    assert csv_out.splitlines()[0] == "task,cases"
