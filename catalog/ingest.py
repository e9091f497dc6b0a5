"""`catalog ingest`: bring a task's rows in the catalog up to date with its folder.

Flow: parse dataset.json -> sync the task and case rows -> decide per case from file size and
mtime (and, when those moved, the content hash) whether it needs analysis -> claim each case in
the database (a lease other workers respect, also across machines) -> analyse in worker
processes -> store each case's rows in one transaction -> record the run.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine, bindparam, delete, insert, select, update

from . import __version__, dialect
from .analysis.case import ANALYSIS_VERSION
from .casework import CaseJob, CaseOutcome, run_case
from .checks import ERROR, FindingData
from .db import session_scope
from .imageio import DEFAULT_MAX_IMAGE_BYTES, stat_file
from .errors import DatasetLayoutError
from .layout import CaseFiles, TaskLayout, read_layout
from .models import (
    Case, CaseChannel, CaseClaim, CaseClass, CaseFile, CaseRegion, ChannelStatistics, Finding, IngestRun, Task,
    TaskChannel, TaskLabel, utcnow,
)
from .memory import freed_memory_kept
from .pool import let_workers_finish, objects_frozen, process_pool
from .properties import refresh_channel_statistics, stats_columns

DEFAULT_LEASE_SECONDS = 120.0

# A run's start (task rows, plan, first claims) is written with Core statements on the tables:
# the ORM's first use in a process configures every mapper (7-43 ms on the last two benchmark
# VMs) and compiles heavier statements, and the workers would wait for it. With Core here, the
# ORM is first used to store the first case, while the workers compute.
_tasks, _task_channels, _task_labels = Task.__table__, TaskChannel.__table__, TaskLabel.__table__
_runs, _cases, _case_files = IngestRun.__table__, Case.__table__, CaseFile.__table__
_findings, _claims = Finding.__table__, CaseClaim.__table__


@dataclass
class Progress:
    """What a progress display needs; passed to the callback after every case."""

    total: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    last_case: str = ""

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class IngestSummary:
    task: str
    run_id: int | None
    cases_listed: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    elsewhere: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    findings: list[FindingData] = field(default_factory=list)  # found by this run
    case_seconds: list[float] = field(default_factory=list)  # analysed cases: read + analysis
    read_seconds: list[float] = field(default_factory=list)
    db_seconds: float = 0.0  # spent in claim/store/renew transactions by this process

    @property
    def findings_by_check(self) -> Counter:
        return Counter(f.check for f in self.findings)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warning")


@dataclass
class _Planned:
    case_id: int
    files: CaseFiles
    kind: str  # new | changed
    stats: dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns) seen when planning
    known_sha256: dict[str, str] | None
    seen_run_id: int | None  # the run that last stored the case, when we planned it


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def ingest_task(engine: Engine, task_dir, *, workers: int | None = None, force: bool = False,
                update_root: bool = False, max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
                lease_seconds: float = DEFAULT_LEASE_SECONDS,
                progress: Callable[[Progress], None] | None = None) -> IngestSummary:
    """Ingest one task folder into the catalog behind `engine`; see the module docstring.

    Safe to run from several processes or machines at once on the same task: each case is
    analysed by one of them. A worker on another machine may see the task under another path;
    the catalog keeps the path of the first ingest (`update_root=True` replaces it).
    """
    # No full collections over the imported modules (45 ms of an 8-case MR ingest). Freed case
    # arrays reused, not unmapped and faulted in again: for the cases analysed in this process
    # (one worker); pool workers keep freed memory anyway, and this process allocates little.
    with objects_frozen(), freed_memory_kept():
        return _ingest(engine, task_dir, workers, force, update_root, max_image_bytes, lease_seconds, progress)


def _ingest(engine, task_dir, workers, force, update_root, max_image_bytes, lease_seconds,
            progress) -> IngestSummary:
    started = time.monotonic()
    try:
        layout = read_layout(task_dir)
    except DatasetLayoutError as exc:
        _record_layout_error(engine, task_dir, exc)
        raise
    workers = workers or default_workers()
    worker_name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    task_id, run_id, force_all = _sync_task(engine, layout, update_root, workers, force)
    summary = IngestSummary(layout.name, run_id, len(layout.cases))
    summary.findings.extend(layout.findings)
    plan = _plan(engine, layout, task_id, run_id, force or force_all, summary)
    runner = _Runner(engine, layout, run_id, worker_name, workers, max_image_bytes, lease_seconds,
                     summary, progress)
    try:
        runner.run(plan)
        if summary.new or summary.changed or summary.removed or force or force_all or not _has_statistics(engine, task_id):
            refresh_channel_statistics(engine, layout.name)
        runner.wait_for_workers()  # only now: they exit while the statistics are computed
    except KeyboardInterrupt:
        summary.interrupted = True
        runner.abandon()
        raise
    finally:
        summary.seconds = time.monotonic() - started
        _finish_run(engine, run_id, summary)
    return summary


def _record_layout_error(engine: Engine, task_dir, exc: DatasetLayoutError) -> None:
    """A task already in the catalog whose dataset.json became unusable keeps its rows and gets a
    task-level finding (export then refuses it until the file is fixed)."""
    name = os.path.basename(os.path.normpath(os.fspath(task_dir)))
    with session_scope(engine) as session:
        task = session.scalar(select(Task).where(Task.name == name))
        if task is None:
            return
        session.execute(delete(Finding).where(Finding.task_id == task.id, Finding.case_identifier.is_(None)))
        _insert_findings(session, task.id, None, [FindingData(exc.check, str(exc), None, exc.path)])


def _has_statistics(engine: Engine, task_id: int) -> bool:
    with session_scope(engine) as session:
        return session.scalar(select(ChannelStatistics.task_id).where(ChannelStatistics.task_id == task_id)
                              .limit(1)) is not None


# ---- task and case rows -----------------------------------------------------------------------

def _sync_task(engine: Engine, layout: TaskLayout, update_root: bool, workers: int,
               force: bool) -> tuple[int, int, bool]:
    """Upsert the task row and its channels/labels; open an ingest run. Returns
    (task id, run id, whether every case must be re-analysed because the labels changed)."""
    with session_scope(engine) as session:
        dialect.lock_task(session, layout.name)  # other workers may be starting on the same task
        task = session.execute(select(_tasks.c.id, _tasks.c.root_path, _tasks.c.dataset_json, _tasks.c.num_channels)
                               .where(_tasks.c.name == layout.name)).first()
        labels_changed = False
        if task is None:
            task_id = session.execute(insert(_tasks).values(
                name=layout.name, root_path=layout.root, dataset_json=layout.dataset_json_text,
                num_channels=len(layout.modalities))).inserted_primary_key[0]
        else:
            task_id = task.id
            old_channels = [(c, n) for c, n in session.execute(
                select(_task_channels.c.channel, _task_channels.c.name)
                .where(_task_channels.c.task_id == task_id).order_by(_task_channels.c.channel))]
            old_values = list(session.scalars(select(_task_labels.c.value).where(_task_labels.c.task_id == task_id)
                                              .order_by(_task_labels.c.position)))
            labels_changed = old_channels != list(layout.modalities.items()) or old_values != list(layout.labels)
            values = {"dataset_json": layout.dataset_json_text, "num_channels": len(layout.modalities)}
            if update_root:
                values["root_path"] = layout.root
            if any(getattr(task, k) != v for k, v in values.items()):  # updated_at moves only then
                session.execute(update(_tasks).where(_tasks.c.id == task_id).values(values))
            session.execute(delete(_task_channels).where(_task_channels.c.task_id == task_id))
            session.execute(delete(_task_labels).where(_task_labels.c.task_id == task_id))
        _insert(session, TaskChannel, [dict(task_id=task_id, channel=c, name=n) for c, n in layout.modalities.items()])
        _insert(session, TaskLabel, [dict(task_id=task_id, value=v, position=i, name=n)
                                     for i, (v, n) in enumerate(layout.labels.items())])
        running = session.execute(select(_runs.c.id, _runs.c.host, _runs.c.pid)
                                  .where(_runs.c.task_id == task_id, _runs.c.status == "running")).all()
        for stale_run in running:
            if _worker_is_dead(f"{stale_run.host}:{stale_run.pid}:"):
                # its finished cases are stored; the rest is redone
                session.execute(update(_runs).where(_runs.c.id == stale_run.id).values(status="killed"))
        run_id = session.execute(insert(_runs).values(
            task_id=task_id, catalog_version=__version__, analysis_version=ANALYSIS_VERSION,
            host=socket.gethostname(), pid=os.getpid(),
            parameters={"task_dir": layout.root, "workers": workers, "force": force})).inserted_primary_key[0]
        # Task-level findings describe the folder as it is now: replace them.
        session.execute(delete(_findings).where(_findings.c.task_id == task_id, _findings.c.case_identifier.is_(None)))
        return task_id, run_id, labels_changed


def _plan(engine: Engine, layout: TaskLayout, task_id: int, run_id: int, force: bool,
          summary: IngestSummary) -> list[_Planned]:
    """Create rows for new cases, mark unlisted ones removed, and pick the cases to analyse."""
    listing_errors: dict[str, list[FindingData]] = {}
    for finding in layout.findings:
        if finding.case is not None:
            listing_errors.setdefault(finding.case, []).append(finding)
    plan: list[_Planned] = []
    with session_scope(engine) as session:
        dialect.lock_task(session, layout.name)
        columns = (_cases.c.id, _cases.c.identifier, _cases.c.status, _cases.c.analysis_version,
                   _cases.c.ingest_run_id, _cases.c.listed_position, _cases.c.image_paths, _cases.c.label_path)
        cases = {c.identifier: c for c in session.execute(select(*columns).where(_cases.c.task_id == task_id))}
        stored_files: dict[int, dict] = {}
        for f in session.execute(select(_case_files.c.case_id, _case_files.c.path, _case_files.c.size_bytes,
                                        _case_files.c.mtime_ns, _case_files.c.sha256)
                                 .join(_cases, _cases.c.id == _case_files.c.case_id).where(_cases.c.task_id == task_id)):
            stored_files.setdefault(f.case_id, {})[f.path] = f
        # Listing findings describe dataset.json as it is now: replace those of the cases they name.
        if listing_errors:
            session.execute(delete(_findings).where(_findings.c.task_id == task_id,
                                                    _findings.c.case_identifier.in_(list(listing_errors))))
        _insert_findings(session, task_id, run_id, layout.findings)

        listed = sorted(layout.cases, key=lambda c: c.identifier)
        new_cases = [dict(task_id=task_id, identifier=files.identifier, status="pending",
                          listed_position=files.position, image_paths=list(files.images), label_path=files.label)
                     for files in listed if files.identifier not in cases]
        _insert(session, Case, new_cases)
        moved = []  # listed cases whose listing (or removed status) changed
        for files in listed:
            case = cases.get(files.identifier)
            if case is None:
                continue
            status = case.status
            if status == "removed":
                status = "pending" if case.analysis_version is None else "stale"
            if (case.listed_position, case.image_paths, case.label_path, case.status) != (
                    files.position, list(files.images), files.label, status):
                moved.append({"b_id": case.id, "b_position": files.position, "b_images": list(files.images),
                              "b_label": files.label, "b_status": status})
        if moved:
            session.execute(update(_cases).where(_cases.c.id == bindparam("b_id")).values(
                listed_position=bindparam("b_position"), image_paths=bindparam("b_images"),
                label_path=bindparam("b_label"), status=bindparam("b_status")), moved)
        if new_cases:  # read them back with their ids
            cases = {c.identifier: c for c in session.execute(select(*columns).where(_cases.c.task_id == task_id))}
        for files in listed:
            case = cases[files.identifier]
            errors = [f for f in listing_errors.get(files.identifier, []) if f.severity == ERROR]
            if errors:
                session.execute(update(_cases).where(_cases.c.id == case.id).values(
                    status=_failed_status(case.analysis_version), ingest_run_id=run_id))
                summary.failed += 1
                continue
            stats = _stat_all(layout, files)
            known = stored_files.get(case.id, {})
            current = case.status == "ok" and case.analysis_version == ANALYSIS_VERSION
            if not force and current and stats is not None and all(
                    rel in known and (known[rel].size_bytes, known[rel].mtime_ns) == st for rel, st in stats.items()):
                summary.unchanged += 1
                continue
            kind = "new" if case.analysis_version is None else "changed"
            known_sha = ({rel: f.sha256 for rel, f in known.items()} if current and not force and known else None)
            plan.append(_Planned(case.id, files, kind, stats or {}, known_sha, case.ingest_run_id))

        # Largest cases first: with several workers the run does not end on one big straggler.
        plan.sort(key=lambda item: -sum(size for size, _ in item.stats.values()))
        listed_identifiers = {files.identifier for files in listed}
        gone = [case.id for identifier, case in cases.items()
                if identifier not in listed_identifiers and case.status != "removed"]
        if gone:
            session.execute(update(_cases).where(_cases.c.id.in_(gone)).values(status="removed"))
            summary.removed += len(gone)
    return plan


def _stat_all(layout: TaskLayout, files: CaseFiles) -> dict[str, tuple[int, int]] | None:
    stats = {}
    for rel in (*files.images, files.label):
        try:
            stats[rel] = stat_file(layout.abspath(rel))
        except Exception:
            return None
    return stats


def _insert_findings(session, task_id: int, run_id: int | None, findings: list[FindingData]) -> None:
    _insert(session, Finding, [dict(task_id=task_id, case_identifier=f.case, ingest_run_id=run_id, check=f.check,
                                    severity=f.severity, path=f.path, message=f.message) for f in findings])


def _failed_status(analysis_version: int | None) -> str:
    """Errors now: keep rows from an earlier good analysis (stale), else failed."""
    return "stale" if analysis_version is not None else "failed"


# ---- running and storing ------------------------------------------------------------------------

class _Runner:
    """Claims planned cases, runs them in a process pool, stores results as they arrive."""

    def __init__(self, engine, layout, run_id, worker_name, workers, max_image_bytes, lease_seconds,
                 summary, progress):
        self.engine, self.layout, self.run_id = engine, layout, run_id
        self.worker, self.workers = worker_name, workers
        self.max_image_bytes, self.lease = max_image_bytes, lease_seconds
        self.summary, self.progress_cb = summary, progress
        self.class_values = tuple(layout.class_values)
        self.in_flight: dict[cf.Future, _Planned] = {}
        self.pool: cf.ProcessPoolExecutor | None = None
        self.wait_for_workers: Callable[[], None] = lambda: None  # until they are told to finish

    def run(self, plan: list[_Planned]) -> None:
        self.progress = Progress(total=len(plan))
        waiting = list(plan)  # not yet claimed by us
        # Worker processes are forked by the first _start, after the first claims: once forked,
        # every page this process writes is first copied, and the first claims then took 16 ms
        # (2,300 page faults) instead of 1-2 ms while the workers waited for their cases.
        self.pool_size = min(self.workers, len(plan)) if self.workers > 1 and len(plan) > 1 else 1
        # a second case queued per worker: one that finishes starts the next at once instead of
        # waiting for this process to store results and claim
        capacity = 2 * self.pool_size if self.pool_size > 1 else 1
        last_renewal = time.monotonic()
        ending = False
        try:
            while waiting or self.in_flight:
                skipped = self._fill(waiting, capacity)
                if self.in_flight:
                    finished = self._wait(timeout=min(5.0, self.lease / 4))
                    if self.pool_size > 1:  # feed idle workers before storing
                        skipped += self._fill(waiting, capacity)
                    for item, outcome in finished:
                        t0 = time.perf_counter()
                        self._store(item, outcome)
                        self.summary.db_seconds += time.perf_counter() - t0
                elif skipped:
                    time.sleep(min(2.0, self.lease / 10))  # other workers hold these: wait for them
                waiting[:0] = skipped
                if not waiting and self.pool is not None and not ending:
                    # every case submitted: workers exit after their last one, while we store it
                    self.wait_for_workers = let_workers_finish(self.pool)
                    ending = True
                if time.monotonic() - last_renewal >= self.lease / 4:
                    t0 = time.perf_counter()
                    self._renew()
                    self.summary.db_seconds += time.perf_counter() - t0
                    last_renewal = time.monotonic()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def _fill(self, waiting: list[_Planned], capacity: int) -> list[_Planned]:
        """Claim and start cases from `waiting` until `capacity` are in flight; returns the cases
        other live workers hold (to try again later)."""
        skipped = []
        while waiting and len(self.in_flight) < capacity:
            batch = waiting[:capacity - len(self.in_flight)]
            del waiting[:len(batch)]
            t0 = time.perf_counter()
            verdicts = self._claim(batch)
            self.summary.db_seconds += time.perf_counter() - t0
            for item, verdict in zip(batch, verdicts):
                if verdict == "claimed":
                    self._start(item)
                elif verdict == "busy":
                    skipped.append(item)
                else:  # done by another worker meanwhile
                    self._count_elsewhere(item)
        return skipped

    def _start(self, item: _Planned) -> None:
        job = CaseJob(self.layout.root, item.files, self.class_values, item.known_sha256, self.max_image_bytes)
        if self.pool_size == 1:
            future: cf.Future = cf.Future()
            try:
                future.set_result(run_case(job))
            except Exception as exc:  # noqa: BLE001 - reported as a finding below
                future.set_exception(exc)
        else:
            if self.pool is None:
                self.pool = process_pool(self.pool_size)
            try:
                future = self.pool.submit(run_case, job)
            except cf.BrokenExecutor:
                self._replace_pool()
                future = self.pool.submit(run_case, job)
        self.in_flight[future] = item

    def _replace_pool(self) -> None:
        """A worker process died (e.g. the OOM killer): its cases became analysis_failed
        findings; carry on with a new pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = process_pool(self.pool_size)

    def _wait(self, timeout: float) -> list[tuple[_Planned, CaseOutcome]]:
        """Wait for at least one case in flight to finish (or the timeout); return the finished."""
        done, _ = cf.wait(list(self.in_flight), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        finished = []
        for future in done:
            item = self.in_flight.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # a bug or a crashed worker: record it, keep going
                outcome = CaseOutcome(item.files.identifier)
                outcome.findings.append(FindingData("analysis_failed", f"analysis of case {item.files.identifier!r} "
                                                    f"failed: {exc.__class__.__name__}: {exc}", item.files.identifier))
            finished.append((item, outcome))
        return finished

    def _claim(self, items: list[_Planned]) -> list[str]:
        """Take the cases' leases in one transaction (the first cases of a run come as a batch):
        per case 'claimed', 'busy' (another live worker has it) or 'done'."""
        with session_scope(self.engine) as session:
            now = dialect.epoch_now(session.connection())
            return [self._claim_one(session, now, item) for item in items]

    def _claim_one(self, session, now: float, item: _Planned) -> str:
        case = session.execute(dialect.lock_for_claim(select(_cases.c.ingest_run_id)
                                                      .where(_cases.c.id == item.case_id))).first()
        if case is None:
            return "busy"  # row locked by a worker claiming it right now (PostgreSQL)
        claim = session.execute(select(_claims.c.worker, _claims.c.lease_expires_at)
                                .where(_claims.c.case_id == item.case_id)).first()
        if claim is not None and claim.worker != self.worker and claim.lease_expires_at > now \
                and not _worker_is_dead(claim.worker):
            return "busy"
        if case.ingest_run_id not in (item.seen_run_id, self.run_id):
            # another worker stored this case since we planned it (it read the same folder)
            if claim is not None and claim.worker == self.worker:
                session.execute(delete(_claims).where(_claims.c.case_id == item.case_id))
            return "done"
        lease = dict(worker=self.worker, ingest_run_id=self.run_id, claimed_at=now, lease_expires_at=now + self.lease)
        if claim is None:
            session.execute(insert(_claims).values(case_id=item.case_id, **lease))
        else:  # ours already, or an expired lease of a worker that died: take it over
            session.execute(update(_claims).where(_claims.c.case_id == item.case_id).values(lease))
        return "claimed"

    def _renew(self) -> None:
        if not self.in_flight:
            return
        ids = [item.case_id for item in self.in_flight.values()]
        with session_scope(self.engine) as session:
            now = dialect.epoch_now(session.connection())
            for claim in session.scalars(select(CaseClaim).where(CaseClaim.case_id.in_(ids),
                                                                 CaseClaim.worker == self.worker)):
                claim.lease_expires_at = now + self.lease

    def abandon(self) -> None:
        """Ctrl-C: drop unfinished work and our claims; finished cases stay committed."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        with session_scope(self.engine) as session:
            session.execute(delete(CaseClaim).where(CaseClaim.worker == self.worker))

    def _count_elsewhere(self, item: _Planned) -> None:
        self.summary.elsewhere += 1
        self._tick(item, failed=False)

    def _tick(self, item: _Planned, failed: bool) -> None:
        self.progress.done += 1
        self.progress.failed += int(failed)
        self.progress.last_case = item.files.identifier
        if self.progress_cb:
            self.progress_cb(self.progress)

    def _store(self, item: _Planned, outcome: CaseOutcome) -> None:
        summary = self.summary
        with session_scope(self.engine) as session:
            claim = session.get(CaseClaim, item.case_id)
            if claim is None or claim.worker != self.worker:
                # Our lease expired and another worker took the case over: its result wins.
                summary.elsewhere += 1
                self._tick(item, failed=False)
                return
            case = session.get(Case, item.case_id)
            session.execute(delete(Finding).where(Finding.task_id == case.task_id,
                                                  Finding.case_identifier == case.identifier))
            _insert_findings(session, case.task_id, self.run_id, outcome.findings)
            if outcome.failed:
                case.status, case.ingest_run_id = _failed_status(case.analysis_version), self.run_id
                summary.failed += 1
                counter = "n_failed"
            elif outcome.unchanged:
                _replace_files(session, case, outcome)  # same content, new mtimes
                summary.unchanged += 1
                counter = "n_unchanged"
            else:
                _store_analysis(session, case, outcome, self.run_id, self.class_values)
                summary.new += item.kind == "new"
                summary.changed += item.kind == "changed"
                counter = "n_new" if item.kind == "new" else "n_changed"
                summary.case_seconds.append(outcome.read_seconds + outcome.analysis_seconds)
                summary.read_seconds.append(outcome.read_seconds)
            session.delete(claim)
            # counted with the case, so a killed run's row still says what it stored
            column = getattr(IngestRun, counter)
            session.execute(update(IngestRun).where(IngestRun.id == self.run_id).values({column: column + 1}))
        summary.findings.extend(outcome.findings)
        self._tick(item, failed=outcome.failed)


def _worker_is_dead(worker: str) -> bool:
    """A claim of a process on this host that no longer runs (killed): no need to wait for its
    lease. Claims of other hosts can only expire."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _insert(session, model, rows: list[dict]) -> None:
    """Plain executemany INSERT of child rows: a fraction of the ORM unit of work's cost, and this
    process stores while the workers compute."""
    if rows:
        session.execute(insert(model.__table__), rows)


def _replace_files(session, case: Case, outcome: CaseOutcome, stored_before: bool = True) -> None:
    if stored_before:
        session.execute(delete(CaseFile).where(CaseFile.case_id == case.id))
    _insert(session, CaseFile, [dict(case_id=case.id, role=f.role, channel=f.channel, path=f.path,
                                     size_bytes=f.size_bytes, mtime_ns=f.mtime_ns, sha256=f.sha256)
                                for f in outcome.files])


def input_digest(files) -> str:
    """sha256 over the case's file hashes, in a fixed order (channels, then the label)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: (f.role != "image", f.channel)):
        h.update(f"{f.role}:{f.channel}:{f.sha256}\n".encode())
    return h.hexdigest()


def _store_analysis(session, case: Case, outcome: CaseOutcome, run_id: int, class_values) -> None:
    """Replace every analysis row of the case with the new outcome (one transaction)."""
    a = outcome.analysis
    g = outcome.geometry
    stored_before = case.analysis_version is not None  # else the case has no rows to replace yet
    if stored_before:
        for model in (CaseClass, CaseRegion, CaseChannel):
            session.execute(delete(model).where(model.case_id == case.id))
    _replace_files(session, case, outcome, stored_before)

    spacing_xyz = [float(v) for v in g["spacing"]]
    voxel_volume = float(np.prod(spacing_xyz))  # v1: np.prod(itk_spacing), (x*y)*z
    case.status = "ok"
    case.analysis_version = ANALYSIS_VERSION
    case.input_digest = input_digest(outcome.files)
    case.ingest_run_id = run_id
    case.analyzed_at = utcnow()
    case.analysis_seconds = outcome.analysis_seconds
    case.read_seconds = outcome.read_seconds
    case.original_size_x, case.original_size_y, case.original_size_z = (int(v) for v in g["size"])
    case.spacing_x, case.spacing_y, case.spacing_z = spacing_xyz
    case.itk_spacing = spacing_xyz
    case.itk_origin = [float(v) for v in g["origin"]]
    case.itk_direction = [float(v) for v in g["direction"]]
    case.voxel_volume_mm3 = voxel_volume
    (case.bbox_z0, case.bbox_z1), (case.bbox_y0, case.bbox_y1), (case.bbox_x0, case.bbox_x1) = a.bbox
    case.cropped_size_z, case.cropped_size_y, case.cropped_size_x = a.cropped_shape
    case.nonzero_voxels = a.nonzero_voxels
    case.foreground_voxels = a.regions.foreground_voxels
    case.seg_values = list(a.seg_values)
    case.all_classes_num_regions = a.regions.all_classes_num_regions
    case.all_classes_one_region = a.regions.all_classes_num_regions == 1

    _insert(session, CaseClass, [dict(case_id=case.id, class_value=c.value, voxel_count=c.voxel_count,
                                      volume_mm3=c.voxel_count * voxel_volume, num_regions=c.num_regions,
                                      one_region=c.num_regions == 1) for c in a.regions.classes])
    _insert(session, CaseRegion, [dict(case_id=case.id, class_value=c.value, region_index=i, voxel_count=n,
                                       volume_mm3=n * voxel_volume)
                                  for c in a.regions.classes for i, n in enumerate(c.region_voxel_counts)])
    _insert(session, CaseChannel, [dict(
        case_id=case.id, channel=index, sample_count=int(ch.samples.size), samples=ch.samples.astype("<f4").tobytes(),
        **stats_columns(ch.stats)) for index, ch in enumerate(a.channels)])


def _finish_run(engine: Engine, run_id: int, summary: IngestSummary) -> None:
    with session_scope(engine) as session:
        run = session.get(IngestRun, run_id)
        run.finished_at = utcnow()
        run.status = "interrupted" if summary.interrupted else "finished"
        run.n_new, run.n_changed, run.n_unchanged = summary.new, summary.changed, summary.unchanged
        run.n_failed, run.n_removed, run.n_elsewhere = summary.failed, summary.removed, summary.elsewhere
