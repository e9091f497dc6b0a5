"""catalog's nnU-Net v1 export against the REAL nnU-Net v1 (1.7.1) on generated tasks.

Every file of the cropped folder is compared (structure, key order, Python and numpy types,
values exactly; float32 mean/sd within rtol 1e-6; npz arrays identical), the comparison runs
under numpy 1.26 (so our pickles must load there), and v1's ExperimentPlanner3D_v21 and
ExperimentPlanner2D_v21 must make identical plans from our folder and from v1's.

The generated tasks (catalog.synthetic; see its docstring for which case carries what) cover:
CT-like single channel and two-channel MR-like; anisotropic spacing, non-zero origins, flipped
and oblique directions; a case with no foreground; declared classes absent from some cases;
classes in several pieces and corner-touching blobs; labels outside the nonzero mask and outside
the crop box; holes inside the body and zeros on the border slices; a speck that grows the box;
identifiers whose natural and code-point orders differ; a shuffled dataset.json.
"""
from __future__ import annotations

import pytest

import harness
from catalog.db import make_engine
from catalog.export.nnunet_v1 import export_nnunet_v1
from catalog.ingest import ingest_task
from catalog.synthetic import make_task

pytestmark = pytest.mark.parity

CASES = [
    # kind, task id, seed, shape_scale, intensity rule
    ("ct", 511, 0, 1.0, "always"),
    ("mr", 512, 0, 1.0, "always"),
    ("mr", 513, 1, 1.0, "cli"),      # the CLI rule: MR-only -> intensityproperties None
    ("ct", 514, 3, 1.4, "cli"),      # CT -> collected under the CLI rule too; larger cases
]


@pytest.mark.parametrize("kind,task_id,seed,scale,rule", CASES, ids=[f"{c[0]}{c[1]}-{c[4]}" for c in CASES])
def test_export_is_identical_to_nnunet_v1(side_python, tmp_path, kind, task_id, seed, scale, rule):
    raw_base = tmp_path / "base"
    task = make_task(raw_base / "nnUNet_raw_data", kind, task_id=task_id, seed=seed, shape_scale=scale)
    v1_dir = harness.run_v1(raw_base, task.name, intensity=rule)

    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    summary = ingest_task(engine, task, workers=2)
    assert summary.failed == 0
    ours = tmp_path / "ours" / task.name
    export_nnunet_v1(engine, task.name, str(ours), intensity="ct-only" if rule == "cli" else "always",
                     workers=2)
    engine.dispose()

    harness.assert_identical(v1_dir, ours)
    assert harness.plan_both(v1_dir, ours, task.name) == {"3d": [], "2d": []}


def test_postgres_export_is_identical_to_nnunet_v1(side_python, tmp_path, pg_url):
    """The same from PostgreSQL (and hence identical to the SQLite export)."""
    raw_base = tmp_path / "base"
    task = make_task(raw_base / "nnUNet_raw_data", "mr", task_id=515, seed=2)
    v1_dir = harness.run_v1(raw_base, task.name, intensity="always")
    engine = make_engine(pg_url)
    ingest_task(engine, task, workers=2)
    ours = tmp_path / "ours" / task.name
    export_nnunet_v1(engine, task.name, str(ours), workers=1)
    engine.dispose()
    harness.assert_identical(v1_dir, ours)
