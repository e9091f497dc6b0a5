"""Read-only views of the catalog for `catalog tasks / cases / show / findings / status`.

Each function returns plain dicts and lists (JSON-ready); the CLI renders them.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from .models import Case, CaseFile, Finding, IngestRun, Task
from .properties import class_statistics, find_task, load_properties


def list_findings(engine: Engine, task_name: str) -> list[dict]:
    with Session(engine) as session:
        task = find_task(session, task_name)
        rows = session.scalars(select(Finding).where(Finding.task_id == task.id).order_by(
            Finding.case_identifier.is_not(None), Finding.case_identifier, Finding.id))
        return [{"task": task.name, "case": f.case_identifier, "check": f.check, "severity": f.severity,
                 "path": f.path, "message": f.message, "ingest_run": f.ingest_run_id} for f in rows]


def list_tasks(engine: Engine) -> list[dict]:
    with Session(engine) as session:
        counts = dict(session.execute(select(Case.task_id, func.count()).where(Case.status != "removed")
                                      .group_by(Case.task_id)).all())
        failed = dict(session.execute(select(Case.task_id, func.count()).where(Case.status.in_(("failed", "stale")))
                                      .group_by(Case.task_id)).all())
        result = []
        for task in session.scalars(select(Task).order_by(Task.name)):
            result.append({"task": task.name, "cases": counts.get(task.id, 0), "failed": failed.get(task.id, 0),
                           "channels": [c.name for c in task.channels],
                           "classes": {str(l.value): l.name for l in task.labels if l.value > 0},
                           "root_path": task.root_path})
        return result


def list_cases(engine: Engine, task_name: str) -> list[dict]:
    with Session(engine) as session:
        task = find_task(session, task_name)
        cases = session.scalars(select(Case).where(Case.task_id == task.id))
        rows = []
        for c in sorted(cases, key=lambda c: c.identifier):
            rows.append({
                "case": c.identifier, "status": c.status,
                "spacing_zyx": [c.spacing_z, c.spacing_y, c.spacing_x] if c.spacing_z is not None else None,
                "original_size_zyx": [c.original_size_z, c.original_size_y, c.original_size_x]
                if c.original_size_z is not None else None,
                "cropped_size_zyx": [c.cropped_size_z, c.cropped_size_y, c.cropped_size_x]
                if c.cropped_size_z is not None else None,
                "classes_present": [v for v in (c.seg_values or []) if v > 0],
                "analysis_version": c.analysis_version,
            })
        return rows


def show_task(engine: Engine, task_name: str) -> dict:
    """nnU-Net v1's dataset properties in readable form, plus class statistics."""
    props = load_properties(engine, task_name, intensity=True)
    spacings = np.array(props.all_spacings) if props.cases else np.zeros((0, 3))
    sizes = np.array(props.all_sizes) if props.cases else np.zeros((0, 3))
    intensity = {}
    for channel, data in (props.intensity or {}).items():
        stats = data.global_stats
        intensity[f"{channel}:{props.modalities[channel]}"] = {
            k: (None if math.isnan(getattr(stats, k)) else getattr(stats, k))
            for k in ("median", "mean", "sd", "mn", "mx", "percentile_00_5", "percentile_99_5")}
    return {
        "task": props.task,
        "cases": len(props.cases),
        "excluded_cases": props.excluded,
        "modalities": {str(k): v for k, v in props.modalities.items()},
        "all_classes": props.all_classes,
        "class_names": {str(k): v for k, v in props.class_names.items()},
        "median_spacing_zyx": np.median(spacings, axis=0).tolist() if len(spacings) else None,
        "median_size_after_crop_zyx": np.median(sizes, axis=0).tolist() if len(sizes) else None,
        "median_size_reduction": float(np.median(list(props.size_reductions.values()))) if props.cases else None,
        "intensity": intensity,
        "classes": class_statistics(engine, props.task),
    }


def task_status(engine: Engine, task_name: str, export_dir: str | None = None) -> dict:
    """Per case: ok / changed on disk / failed / stale / removed / pending; and whether an export
    folder (its catalog_provenance.json) still matches the catalog and the files."""
    from .export.nnunet_v1 import PROVENANCE_FILE, content_digest
    from .imageio import stat_file

    with Session(engine) as session:
        task = find_task(session, task_name)
        files: dict[int, list[CaseFile]] = {}
        for f in session.scalars(select(CaseFile).join(Case).where(Case.task_id == task.id)):
            files.setdefault(f.case_id, []).append(f)
        rows = []
        for c in sorted(session.scalars(select(Case).where(Case.task_id == task.id)), key=lambda c: c.identifier):
            state = c.status
            if state == "ok":
                for f in files.get(c.id, []):
                    try:
                        same = stat_file(os.path.join(task.root_path, f.path)) == (f.size_bytes, f.mtime_ns)
                    except Exception:
                        same = False
                    if not same:
                        state = "changed on disk"
                        break
            rows.append({"case": c.identifier, "status": state})
        last_run = session.scalar(select(IngestRun).where(IngestRun.task_id == task.id).order_by(IngestRun.id.desc()))
    result = {"task": task_name, "cases": rows,
              "last_ingest": None if last_run is None else {
                  "id": last_run.id, "status": last_run.status,
                  "finished_at": last_run.finished_at.isoformat() if last_run.finished_at else None}}
    if export_dir is not None:
        path = os.path.join(export_dir, PROVENANCE_FILE)
        if not os.path.exists(path):
            result["export"] = {"path": export_dir, "current": False, "why": f"no {PROVENANCE_FILE} there"}
        else:
            with open(path) as f:
                provenance = json.load(f)
            props = load_properties(engine, task_name, intensity=False)
            current = provenance.get("content_digest") == content_digest(props) and \
                not any(r["status"] == "changed on disk" for r in rows)
            result["export"] = {"path": export_dir, "current": current, "exported_at": provenance.get("exported_at"),
                                "why": None if current else "the catalog or the files changed since this export"}
    return result
