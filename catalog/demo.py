"""`catalog demo`: a newcomer with no data sees the catalog work end to end."""
from __future__ import annotations

import json
from pathlib import Path

from .db import make_engine, resolve_url


def run_demo(folder: Path, db: str | None = None, *, workers: int | None = None, progress_factory=None):
    """Generate a CT-like and an MR-like task, ingest both, show them, export one. Yields lines."""
    from .browse import show_task
    from .export.nnunet_v1 import export_nnunet_v1
    from .ingest import ingest_task
    from .synthetic import make_task

    folder = Path(folder).absolute()
    raw = folder / "nnUNet_raw_data"
    tasks = [make_task(raw, "ct", task_id=901, name="DemoCT", seed=0),
             make_task(raw, "mr", task_id=902, name="DemoMR", seed=0)]
    yield f"wrote synthetic tasks {', '.join(t.name for t in tasks)} under {raw}"
    engine = make_engine(db)
    yield f"catalog: {resolve_url(db)}"
    for task in tasks:
        progress = progress_factory(task.name) if progress_factory else None
        summary = ingest_task(engine, task, workers=workers, progress=progress)
        if progress is not None:
            progress.close()
        yield (f"{task.name}: {summary.new} new, {summary.changed} changed, {summary.unchanged} unchanged, "
               f"{summary.failed} failed cases; findings: "
               + (", ".join(f"{k} x{v}" for k, v in sorted(summary.findings_by_check.items())) or "none"))
    shown = show_task(engine, tasks[0].name)
    yield json.dumps({k: shown[k] for k in ("task", "cases", "median_spacing_zyx", "median_size_after_crop_zyx",
                                            "intensity")}, indent=2)
    out = folder / "nnUNet_cropped_data" / tasks[0].name
    result = export_nnunet_v1(engine, tasks[0].name, str(out), overwrite=True, workers=workers)
    yield f"exported {len(result.cases)} cases of {result.task} for nnU-Net v1 to {result.out_dir}"
    yield f"next: catalog query \"SELECT * FROM task_summary\"   (or catalog show {tasks[1].name})"
