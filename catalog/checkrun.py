"""`catalog check`: every data check of an ingest, nothing stored."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

from .casework import CaseJob, run_case
from .checks import FindingData
from .errors import DatasetLayoutError
from .imageio import DEFAULT_MAX_IMAGE_BYTES
from .layout import read_layout


def check_task(task_dir, *, workers: int | None = None,
               max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> list[FindingData]:
    """All findings for a task folder: dataset.json, the listing, then every case's files."""
    from .ingest import default_workers

    try:
        layout = read_layout(task_dir)
    except DatasetLayoutError as exc:
        return [FindingData(exc.check, str(exc), None, exc.path)]
    findings = list(layout.findings)
    blocked = {f.case for f in layout.findings if f.case is not None and f.severity == "error"}
    jobs = [CaseJob(layout.root, c, tuple(layout.class_values), None, max_image_bytes)
            for c in layout.cases if c.identifier not in blocked]
    workers = min(workers or default_workers(), len(jobs))
    if workers <= 1:
        outcomes = [run_case(job) for job in jobs]
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            outcomes = list(pool.map(run_case, jobs))
    for outcome in outcomes:
        findings.extend(outcome.findings)
    return findings
