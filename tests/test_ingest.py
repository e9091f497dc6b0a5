"""Ingest on both backends: rows, replacement, change detection, removal, versions, resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import catalog.analysis.case
import catalog.casework
import catalog.ingest
from catalog.ingest import ingest_task
from catalog.models import Case, CaseChannel, CaseClaim, CaseClass, CaseFile, CaseRegion, IngestRun


def counts(engine) -> dict:
    with Session(engine) as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (Case, CaseFile, CaseClass, CaseRegion, CaseChannel)}


def statuses(engine) -> dict:
    with Session(engine) as s:
        return dict(s.execute(select(Case.identifier, Case.status)).all())


def rewrite_label(task, identifier, change):
    path = task / "labelsTr" / f"{identifier}.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    change(array)
    new = sitk.GetImageFromArray(array)
    new.CopyInformation(image)
    sitk.WriteImage(new, str(path), useCompression=True)


def test_ingest_stores_every_case_once(engine, ct_task):
    summary = ingest_task(engine, ct_task, workers=2)
    n = summary.cases_listed
    assert (summary.new, summary.changed, summary.failed) == (n, 0, 0)
    first = counts(engine)
    assert first["cases"] == n and first["case_files"] == 2 * n and first["case_channels"] == n
    assert first["case_classes"] == 3 * n  # every declared class, present or not

    again = ingest_task(engine, ct_task, workers=1)
    assert (again.new, again.changed, again.unchanged) == (0, 0, n)
    forced = ingest_task(engine, ct_task, workers=1, force=True)
    assert forced.changed == n
    assert counts(engine) == first  # replaced, never duplicated
    with Session(engine) as s:
        runs = s.scalars(select(IngestRun).order_by(IngestRun.id)).all()
        assert [(r.n_new, r.n_unchanged, r.n_changed, r.status) for r in runs] == [
            (n, 0, 0, "finished"), (0, n, 0, "finished"), (0, 0, n, "finished")]
        assert all(r.host and r.catalog_version and r.finished_at for r in runs)
        assert s.scalar(select(func.count()).select_from(CaseClaim)) == 0


def test_stored_facts_match_numpy(engine, mr_task):
    ingest_task(engine, mr_task, workers=1)
    with Session(engine) as s:
        case = s.scalar(select(Case).where(Case.identifier == "mr_2"))
        images = [sitk.ReadImage(str(mr_task / p)) for p in case.image_paths]
        arrays = [sitk.GetArrayFromImage(i) for i in images]
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(mr_task / case.label_path)))
        from scipy import ndimage

        mask = ndimage.binary_fill_holes(np.any([a != 0 for a in arrays], axis=0))
        idx = np.where(mask)
        bbox = [(int(i.min()), int(i.max()) + 1) for i in idx]
        assert [(case.bbox_z0, case.bbox_z1), (case.bbox_y0, case.bbox_y1), (case.bbox_x0, case.bbox_x1)] == bbox
        assert (case.spacing_z, case.spacing_y, case.spacing_x) == tuple(reversed(images[0].GetSpacing()))
        assert tuple(case.itk_direction) == images[0].GetDirection()
        sl = tuple(slice(a, b) for a, b in bbox)
        seg = label[sl].astype(np.int16)
        seg[(seg == 0) & ~mask[sl]] = -1
        for row in s.scalars(select(CaseClass).where(CaseClass.case_id == case.id)):
            assert row.voxel_count == int(np.sum(seg == row.class_value))
            assert row.volume_mm3 == row.voxel_count * np.prod(images[0].GetSpacing())
        channel = s.scalar(select(CaseChannel).where(CaseChannel.case_id == case.id, CaseChannel.channel == 1))
        expected = arrays[1][sl].astype(np.float32)[seg > 0][::10]
        np.testing.assert_array_equal(np.frombuffer(channel.samples, "<f4"), expected)


def test_a_class_value_beyond_int16_is_kept(engine, ct_task):
    """Labels that are not uint8/int16 are converted before the analysis: to int16 only when
    their values fit (a declared 40000 once wrapped to -25536 and vanished from the counts)."""
    dataset = json.loads((ct_task / "dataset.json").read_text())
    dataset["labels"]["40000"] = dataset["labels"].pop("3")
    (ct_task / "dataset.json").write_text(json.dumps(dataset))
    labels = {}
    for path in sorted((ct_task / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image).astype(np.int32)
        array[array == 3] = 40000
        labels[path.name[:-len(".nii.gz")]] = array
        new = sitk.GetImageFromArray(array)
        new.CopyInformation(image)
        sitk.WriteImage(new, str(path), useCompression=True)
    summary = ingest_task(engine, ct_task, workers=1)
    assert summary.failed == 0
    with Session(engine) as s:
        rows = s.execute(select(Case, CaseClass.voxel_count).join(CaseClass)
                         .where(CaseClass.class_value == 40000, Case.status == "ok")).all()
        assert rows and sum(n for _, n in rows) > 0
        for case, stored in rows:
            box = (slice(case.bbox_z0, case.bbox_z1), slice(case.bbox_y0, case.bbox_y1),
                   slice(case.bbox_x0, case.bbox_x1))
            in_crop = int(np.sum(labels[case.identifier][box] == 40000))
            assert stored == in_crop
            assert (40000 in case.seg_values) == (in_crop > 0)


def _killed_on_ct_000(job):
    """The worker process dies while it analyses ct_000, as when the OOM killer takes it."""
    if job.case.identifier == "ct_000":
        os._exit(137)
    return catalog.casework.run_case(job)


def test_killed_worker_fails_its_cases_and_a_new_pool_goes_on(engine, ct_task, monkeypatch):
    from catalog import pool

    if pool.start_method() != "fork":
        pytest.skip("the patched job reaches the workers only when they are forked")
    monkeypatch.setattr(catalog.ingest, "run_case", _killed_on_ct_000)
    summary = ingest_task(engine, ct_task, workers=2)
    status = statuses(engine)
    assert status["ct_000"] == "failed"
    assert "ok" in status.values()  # cases submitted after the death ran in a new pool
    failed = {f.case for f in summary.findings if f.check == "analysis_failed"}
    assert failed == {case for case, value in status.items() if value == "failed"}
    assert summary.failed == len(failed)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(CaseClaim)) == 0

    monkeypatch.undo()
    again = ingest_task(engine, ct_task, workers=2)
    assert again.new == len(failed) and again.failed == 0  # never analysed before: new
    assert set(statuses(engine).values()) == {"ok"}


def test_change_touch_add_remove(engine, ct_task):
    n = ingest_task(engine, ct_task, workers=1).cases_listed
    # touch without change: hashes match, nothing analysed, new mtime remembered
    label = ct_task / "labelsTr" / "ct_001.nii.gz"
    os.utime(label, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = ingest_task(engine, ct_task, workers=1)
    assert (touched.unchanged, touched.changed) == (n, 0)
    assert ingest_task(engine, ct_task, workers=1).unchanged == n  # stat now matches: not even hashed

    rewrite_label(ct_task, "ct_002", lambda a: a.__setitem__(a == 2, 1))
    changed = ingest_task(engine, ct_task, workers=1)
    assert (changed.changed, changed.unchanged) == (1, n - 1)

    dataset = json.loads((ct_task / "dataset.json").read_text())
    dataset["training"] = [t for t in dataset["training"] if "ct_003" not in t["image"]]
    (ct_task / "dataset.json").write_text(json.dumps(dataset))
    removed = ingest_task(engine, ct_task, workers=1)
    assert removed.removed == 1 and removed.unchanged == n - 1
    assert statuses(engine)["ct_003"] == "removed"
    assert counts(engine)["cases"] == n  # rows of removed cases are kept

    from catalog.properties import load_properties
    assert "ct_003" not in load_properties(engine, ct_task.name, intensity=False).identifiers

    dataset["training"].append({"image": "./imagesTr/ct_003.nii.gz", "label": "./labelsTr/ct_003.nii.gz"})
    (ct_task / "dataset.json").write_text(json.dumps(dataset))
    back = ingest_task(engine, ct_task, workers=1)
    assert back.changed == 1 and statuses(engine)["ct_003"] == "ok"


def test_cases_removed_and_added_in_one_ingest(engine, ct_task):
    """More rows than listed cases (two unlisted) while a new case comes: its row is created,
    read back with its id and analysed."""
    n = ingest_task(engine, ct_task, workers=1).cases_listed
    dataset = json.loads((ct_task / "dataset.json").read_text())
    dataset["training"] = [t for t in dataset["training"] if "ct_002" not in t["image"] and "ct_003" not in t["image"]]
    shutil.copy(ct_task / "imagesTr" / "ct_001_0000.nii.gz", ct_task / "imagesTr" / "ct_099_0000.nii.gz")
    shutil.copy(ct_task / "labelsTr" / "ct_001.nii.gz", ct_task / "labelsTr" / "ct_099.nii.gz")
    dataset["training"].append({"image": "./imagesTr/ct_099.nii.gz", "label": "./labelsTr/ct_099.nii.gz"})
    (ct_task / "dataset.json").write_text(json.dumps(dataset))
    summary = ingest_task(engine, ct_task, workers=2)
    assert (summary.removed, summary.new, summary.unchanged, summary.failed) == (2, 1, n - 2, 0)
    status = statuses(engine)
    assert (status["ct_002"], status["ct_003"], status["ct_099"]) == ("removed", "removed", "ok")
    assert counts(engine)["cases"] == n + 1


def test_analysis_version_bump_reanalyses_old_cases(engine, ct_task, monkeypatch):
    n = ingest_task(engine, ct_task, workers=1).cases_listed
    with Session(engine) as s, s.begin():  # one case already at the newer version
        s.get(Case, 1).analysis_version = catalog.analysis.case.ANALYSIS_VERSION + 1
    monkeypatch.setattr(catalog.ingest, "ANALYSIS_VERSION", catalog.analysis.case.ANALYSIS_VERSION + 1)
    bumped = ingest_task(engine, ct_task, workers=1)
    assert bumped.changed == n - 1 and bumped.unchanged == 1


def test_labels_changed_in_dataset_json_reanalyses_everything(engine, ct_task):
    n = ingest_task(engine, ct_task, workers=1).cases_listed
    dataset = json.loads((ct_task / "dataset.json").read_text())
    dataset["labels"]["4"] = "extra"
    (ct_task / "dataset.json").write_text(json.dumps(dataset))
    summary = ingest_task(engine, ct_task, workers=1)
    assert summary.changed == n
    assert counts(engine)["case_classes"] == 4 * n


def test_sigkill_then_resume(db_url, make_raw_task, tmp_path, slow_catalog_argv):
    """A killed ingest leaves only whole cases; the next run finishes the rest."""
    task = make_raw_task("ct", 503, n_cases=14)
    env = {**os.environ, "CATALOG_DB": db_url}
    proc = subprocess.Popen(slow_catalog_argv("ingest", task, "--workers", 1),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from catalog.db import make_engine

    engine = make_engine(db_url)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = sum(1 for s in statuses(engine).values() if s == "ok")
        except Exception:
            done = 0  # schema not created yet
        if done >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 14, proc.stderr.read().decode()[-2000:]
    before = statuses(engine)
    finished = [k for k, v in before.items() if v == "ok"]
    with Session(engine) as s:  # finished cases are complete
        for case in s.scalars(select(Case).where(Case.status == "ok")):
            assert s.scalar(select(func.count()).select_from(CaseChannel).where(CaseChannel.case_id == case.id)) == 1
            assert s.scalar(select(func.count()).select_from(CaseClass).where(CaseClass.case_id == case.id)) == 3
    resumed = ingest_task(engine, task, workers=1)
    assert resumed.new == 14 - len(finished) and resumed.unchanged == len(finished)
    assert set(statuses(engine).values()) == {"ok"}
    engine.dispose()


def test_ctrl_c_stops_cleanly_and_resumes(sqlite_url, make_raw_task, slow_catalog_argv):
    task = make_raw_task("ct", 504, n_cases=14)
    proc = subprocess.Popen(slow_catalog_argv("ingest", task, "--workers", 1, "--db", sqlite_url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from catalog.db import make_engine

    engine = make_engine(sqlite_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if sum(1 for s in statuses(engine).values() if s == "ok") >= 2:
                break
        except Exception:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(CaseClaim)) == 0
        run = s.scalars(select(IngestRun)).one()
        assert run.status == "interrupted" and run.finished_at is not None
    done = sum(1 for s in statuses(engine).values() if s == "ok")
    resumed = ingest_task(engine, task, workers=1)
    assert resumed.unchanged == done and resumed.new == 14 - done


def test_provenance_and_status(engine, ct_task, tmp_path):
    from catalog.browse import task_status
    from catalog.export.nnunet_v1 import export_nnunet_v1

    ingest_task(engine, ct_task, workers=1)
    out = tmp_path / "export" / ct_task.name
    export_nnunet_v1(engine, ct_task.name, str(out), workers=1)
    provenance = json.loads((out / "catalog_provenance.json").read_text())
    assert provenance["task"] == ct_task.name and len(provenance["content_digest"]) == 64
    assert provenance["ingest_runs"][0]["id"] == 1 and provenance["catalog_version"]
    status = task_status(engine, ct_task.name, str(out))
    assert status["export"]["current"] and {r["status"] for r in status["cases"]} == {"ok"}

    rewrite_label(ct_task, "ct_001", lambda a: a.__setitem__(a == 1, 2))
    status = task_status(engine, ct_task.name, str(out))
    assert [r["case"] for r in status["cases"] if r["status"] == "changed on disk"] == ["ct_001"]
    assert not status["export"]["current"]
    ingest_task(engine, ct_task, workers=1)
    status = task_status(engine, ct_task.name, str(out))
    assert {r["status"] for r in status["cases"]} == {"ok"} and not status["export"]["current"]
    export_nnunet_v1(engine, ct_task.name, str(out), workers=1)
    assert task_status(engine, ct_task.name, str(out))["export"]["current"]
