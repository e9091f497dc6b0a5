"""Dataset properties (nnU-Net v1's dataset_properties) from SQL over the stored case rows.

Sizes, spacings, size reductions, classes, modalities and class statistics are SQL queries.
Intensity statistics need the pooled samples (median and percentiles are order statistics and
v1's float32 mean/sd depend on the summation order), so those are computed in Python from the
stored per-case sample arrays, in v1's case order, with numpy 1.x's formulas
(analysis.intensity). See README "How intensity samples are stored".
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Double, Engine, case as sql_case, cast, delete, func, select
from sqlalchemy.orm import Session

from . import dialect
from .analysis.intensity import STAT_KEYS, IntensityStats, pooled_stats
from .errors import CatalogError
from .models import Case, CaseChannel, CaseClass, ChannelStatistics, Finding, Task, TaskChannel, TaskLabel, utcnow


def v1_sort_key(identifier: str) -> str:
    """nnU-Net v1 orders cases by Python string order (code points): mr_1 < mr_10 < mr_2."""
    return identifier


@dataclass(frozen=True)
class CaseRow:
    """The stored facts of one analysed case (numpy (z, y, x) order unless named itk_*)."""

    id: int
    identifier: str
    status: str
    original_size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    itk_origin: tuple[float, ...]
    itk_spacing: tuple[float, ...]
    itk_direction: tuple[float, ...]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    cropped_size: tuple[int, int, int]
    seg_values: tuple[int, ...]
    size_reduction: float
    image_paths: tuple[str, ...]
    label_path: str
    input_digest: str | None


@dataclass(frozen=True)
class ChannelIntensity:
    global_stats: IntensityStats
    local: dict[str, IntensityStats]  # per case identifier, v1 order
    pooled_samples: int  # samples behind global_stats


def stats_columns(stats: IntensityStats) -> dict:
    """The seven statistics as the columns of models.V1IntensityStats (NaN stored as NULL)."""
    return {k: dialect.store_float(getattr(stats, k)) for k in STAT_KEYS}


def stats_from_columns(row) -> IntensityStats:
    """The seven statistics back from a row with models.V1IntensityStats columns."""
    return IntensityStats(*(dialect.load_float(getattr(row, k)) for k in STAT_KEYS))


@dataclass
class DatasetProperties:
    task: str
    root_path: str
    cases: list[CaseRow]  # v1 order
    all_classes: list[int]
    class_names: dict[int, str]
    modalities: dict[int, str]
    intensity: dict[int, ChannelIntensity] | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # identifier -> status, not in `cases`

    @property
    def identifiers(self) -> list[str]:
        return [c.identifier for c in self.cases]

    @property
    def all_sizes(self) -> list[tuple[int, int, int]]:
        return [c.cropped_size for c in self.cases]

    @property
    def all_spacings(self) -> list[tuple[float, float, float]]:
        return [c.spacing for c in self.cases]

    @property
    def size_reductions(self) -> dict[str, float]:
        return {c.identifier: c.size_reduction for c in self.cases}


def find_task(session, name: str) -> Task:
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        names = session.scalars(select(Task.name).order_by(Task.name)).all()
        raise CatalogError(f"no task {name!r} in the catalog" + (f" (tasks: {', '.join(names)})" if names
                                                                  else " (it is empty: run `catalog ingest` first)"))
    return task


def task_name_for(engine: Engine, spec: str) -> str:
    """A catalog task name from a name, a folder path or a task number (`4` -> Task004_*)."""
    with engine.connect() as conn:
        names = list(conn.scalars(select(Task.name)))
    if spec in names:
        return spec
    base = os.path.basename(os.path.normpath(spec))
    if base in names:
        return base
    number = re.fullmatch(r"(?:Task)?(\d+)", spec)
    if number:
        prefix = "Task%03.0d_" % int(number.group(1))
        matches = [n for n in names if n.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
    return spec  # find_task reports it


# The cases dataset properties are made of by default: analysed without errors.
ANALYSED_STATUSES = ("ok",)


def load_properties(engine: Engine, task_name: str, *, intensity: bool | Callable[[dict], bool] = True,
                    statuses: tuple[str, ...] = ANALYSED_STATUSES) -> DatasetProperties:
    """Everything nnU-Net v1's DatasetAnalyzer derives, for the task's cases with `statuses`.

    `intensity` may be a rule deciding from the modalities ({channel: name}) whether to compute
    the intensity statistics (as nnU-Net v1's command line does for CT)."""
    with Session(engine) as session:
        task = find_task(session, task_name)
        modalities = _modalities(session, task.id)
        labels = list(session.scalars(select(TaskLabel).where(TaskLabel.task_id == task.id)
                                      .order_by(TaskLabel.position)))
        original_voxels = cast(Case.original_size_z * Case.original_size_y * Case.original_size_x, Double)
        cropped_voxels = cast(Case.cropped_size_z * Case.cropped_size_y * Case.cropped_size_x, Double)
        rows = session.execute(select(Case, (cropped_voxels / original_voxels).label("size_reduction"))
                               .where(Case.task_id == task.id)).all()
        cases, excluded = [], {}
        for row in rows:
            c = row.Case
            if c.status not in statuses:
                if c.status != "removed":
                    excluded[c.identifier] = c.status
                continue
            cases.append(CaseRow(
                id=c.id, identifier=c.identifier, status=c.status,
                original_size=(c.original_size_z, c.original_size_y, c.original_size_x),
                spacing=(c.spacing_z, c.spacing_y, c.spacing_x),
                itk_origin=tuple(c.itk_origin), itk_spacing=tuple(c.itk_spacing),
                itk_direction=tuple(c.itk_direction),
                bbox=((c.bbox_z0, c.bbox_z1), (c.bbox_y0, c.bbox_y1), (c.bbox_x0, c.bbox_x1)),
                cropped_size=(c.cropped_size_z, c.cropped_size_y, c.cropped_size_x),
                seg_values=tuple(c.seg_values), size_reduction=float(row.size_reduction),
                image_paths=tuple(c.image_paths), label_path=c.label_path, input_digest=c.input_digest))
        cases.sort(key=lambda c: v1_sort_key(c.identifier))
        props = DatasetProperties(
            task=task.name, root_path=task.root_path, cases=cases,
            all_classes=[label.value for label in labels if label.value > 0],
            class_names={label.value: label.name for label in labels}, modalities=modalities,
            excluded=dict(sorted(excluded.items())))
        if intensity(props.modalities) if callable(intensity) else intensity:
            props.intensity = _intensity(session, props.task, [(c.id, c.identifier) for c in props.cases],
                                         props.modalities)
    return props


def _modalities(session, task_id: int) -> dict[int, str]:
    return {c.channel: c.name for c in session.scalars(
        select(TaskChannel).where(TaskChannel.task_id == task_id).order_by(TaskChannel.channel))}


def _channel_rows(session, task: str, cases: list[tuple[int, str]], modalities: dict[int, str],
                  *columns) -> dict[tuple[int, int], object]:
    """`columns` of the CaseChannel rows of `cases` ((id, identifier)) and `modalities`, in one
    query, by (case id, channel); every case must have a row for every channel."""
    rows = session.execute(select(CaseChannel.case_id, CaseChannel.channel, *columns)
                           .where(CaseChannel.case_id.in_([i for i, _ in cases]),
                                  CaseChannel.channel.in_(list(modalities)))).all()
    by_key = {(row.case_id, row.channel): row for row in rows}
    for channel in modalities:
        missing = [identifier for i, identifier in cases if (i, channel) not in by_key]
        if missing:
            raise CatalogError(f"{task}: no intensity samples stored for channel {channel} of "
                               f"{', '.join(missing[:5])}; run `catalog ingest --force` on the task")
    return by_key


def _pooled(rows: dict[tuple[int, int], object], cases: list[tuple[int, str]],
            channel: int) -> tuple[IntensityStats, int]:
    """The global statistics of `channel` over the stored samples of `cases` pooled, and how
    many samples that is."""
    samples = [np.frombuffer(rows[i, channel].samples, dtype="<f4") for i, _ in cases]
    return pooled_stats(samples), sum(s.size for s in samples)


def _intensity(session, task: str, cases: list[tuple[int, str]],
               modalities: dict[int, str]) -> dict[int, ChannelIntensity]:
    """Global stats over the samples of `cases` ((id, identifier) in v1 order) pooled; local stats
    straight from the stored columns."""
    rows = _channel_rows(session, task, cases, modalities, CaseChannel.samples,
                         *(getattr(CaseChannel, k) for k in STAT_KEYS))
    result = {}
    for channel in modalities:
        pooled, count = _pooled(rows, cases, channel)
        local = {identifier: stats_from_columns(rows[i, channel]) for i, identifier in cases}
        result[channel] = ChannelIntensity(pooled, local, count)
    return result


def class_statistics(engine: Engine, task_name: str) -> list[dict]:
    """Per declared class: cases where present, voxels, volume, regions (SQL aggregation)."""
    with Session(engine) as session:
        task = find_task(session, task_name)
        present = sql_case((CaseClass.voxel_count > 0, 1), else_=0)
        one_piece = sql_case((CaseClass.one_region, 1), else_=0)
        rows = session.execute(
            select(CaseClass.class_value, func.count().label("cases"), func.sum(present).label("cases_present"),
                   func.sum(CaseClass.voxel_count).label("voxels"), func.sum(CaseClass.volume_mm3).label("volume_mm3"),
                   func.sum(CaseClass.num_regions).label("regions"), func.sum(one_piece).label("cases_one_piece"))
            .join(Case, Case.id == CaseClass.case_id)
            .where(Case.task_id == task.id, Case.status == "ok")
            .group_by(CaseClass.class_value).order_by(CaseClass.class_value)).mappings().all()
        # PostgreSQL's SUM of integers is NUMERIC (Decimal): give plain numbers on both backends.
        return [{k: (float(v) if k == "volume_mm3" else int(v)) if v is not None else None
                 for k, v in r.items()} for r in rows]


def error_cases(engine: Engine, task_name: str) -> dict[str, list[str]]:
    """Cases (and task-level, key None) with error findings: identifier -> messages."""
    with Session(engine) as session:
        task = find_task(session, task_name)
        rows = session.execute(select(Finding.case_identifier, Finding.message)
                            .where(Finding.task_id == task.id, Finding.severity == "error")
                            .order_by(Finding.id)).all()
    result: dict = {}
    for identifier, message in rows:
        result.setdefault(identifier, []).append(message)
    return result


def refresh_channel_statistics(engine: Engine, task_name: str) -> None:
    """Store the task's pooled intensity statistics for the `channel_intensity` view.

    Reads only what the statistics need (the ids and sample arrays of the cases `load_properties`
    takes by default), not the whole dataset properties: it runs after every ingest that changed
    a case."""
    from .db import session_scope

    with session_scope(engine) as session:
        task = find_task(session, task_name)
        modalities = _modalities(session, task.id)
        cases = sorted(session.execute(select(Case.id, Case.identifier)
                                       .where(Case.task_id == task.id, Case.status.in_(ANALYSED_STATUSES))).all(),
                       key=lambda row: v1_sort_key(row[1]))
        # the sample columns only: the per-case statistics are not needed here
        stored = _channel_rows(session, task.name, cases, modalities, CaseChannel.samples)
        pooled = {channel: _pooled(stored, cases, channel) for channel in modalities}
        rows = [{"task_id": task.id, "channel": channel, "cases": len(cases), "samples": count,
                 "computed_at": utcnow(), **stats_columns(stats)}
                for channel, (stats, count) in pooled.items()]
        session.execute(delete(ChannelStatistics).where(ChannelStatistics.task_id == task.id,
                                                        ChannelStatistics.channel.not_in(list(modalities))))
        dialect.upsert(session, ChannelStatistics, rows, ["task_id", "channel"])
