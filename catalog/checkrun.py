"""`catalog check`: every data check of an ingest, nothing stored."""
from __future__ import annotations


from .casework import CaseJob, run_case
from .checks import ERROR, FindingData
from .errors import DatasetLayoutError
from .imageio import DEFAULT_MAX_IMAGE_BYTES
from .layout import read_layout
from .memory import freed_memory_kept
from .pool import process_pool


def check_task(task_dir, *, workers: int | None = None,
               max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> list[FindingData]:
    """All findings for a task folder: dataset.json, the listing, then every case's files.

    Never raises for bad data: an unusable dataset.json is one finding, and a case whose check
    crashes (a catalog bug, or a worker process killed, e.g. by the OOM killer) is an
    `analysis_failed` finding for that case while the other cases are still checked.
    """
    from .ingest import default_workers

    try:
        layout = read_layout(task_dir)
    except DatasetLayoutError as exc:
        return [FindingData(exc.check, str(exc), None, exc.path)]
    findings = list(layout.findings)
    blocked = {f.case for f in layout.findings if f.case is not None and f.severity == ERROR}
    jobs = [CaseJob(layout.root, c, tuple(layout.class_values), None, max_image_bytes)
            for c in layout.cases if c.identifier not in blocked]
    workers = min(workers or default_workers(), len(jobs))
    if workers <= 1:
        with freed_memory_kept():
            for job in jobs:
                findings.extend(_run_guarded(job))
        return findings
    with process_pool(workers) as pool:
        futures = [pool.submit(run_case, job) for job in jobs]
        for job, future in zip(jobs, futures):  # dataset.json order
            try:
                findings.extend(future.result().findings)
            except Exception as exc:  # noqa: BLE001 - a dead worker process: report, go on
                findings.append(_crash_finding(job, exc))
    return findings


def _run_guarded(job: CaseJob) -> list[FindingData]:
    try:
        return run_case(job).findings
    except Exception as exc:  # noqa: BLE001 - run_case catches everything itself; belt and braces
        return [_crash_finding(job, exc)]


def _crash_finding(job: CaseJob, exc: BaseException) -> FindingData:
    case = job.case
    return FindingData("analysis_failed", f"{job.root}/{case.label}: checking case {case.identifier!r} "
                       f"failed with {exc.__class__.__name__}: {exc} (expected no exception: this is a "
                       "catalog bug or a worker process that died, e.g. out of memory)", case.identifier, case.label)
