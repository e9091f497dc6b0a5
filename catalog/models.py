"""The catalog's tables (SQLAlchemy 2 declarative models).

Axis conventions in column names: `*_z/_y/_x` columns are numpy order (z, y, x) as nnU-Net v1
stores sizes, spacings and bounding boxes; `itk_*` JSON columns keep SimpleITK's (x, y, z) order.
Floats that nnU-Net pickles as float64 are stored as double precision (Float(53)), and geometry
tuples as JSON text, which Python writes with repr() and so round-trips every double exactly.

One analysed case = one `cases` row plus its children (`case_files`, `case_classes`,
`case_regions`, `case_channels`); re-analysing a case replaces the children in one transaction.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints let Alembic's batch mode alter them on SQLite later.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Double = Float(precision=53)
# Identifiers and paths are compared in code-point order (nnU-Net sorts with Python's str order).
Name = String(512)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class V1IntensityStats:
    """nnU-Net v1's seven intensity statistics as columns; NULL where v1 has NaN (no samples)."""

    median: Mapped[float | None] = mapped_column(Double)
    mean: Mapped[float | None] = mapped_column(Double)
    sd: Mapped[float | None] = mapped_column(Double)
    mn: Mapped[float | None] = mapped_column(Double)
    mx: Mapped[float | None] = mapped_column(Double)
    percentile_99_5: Mapped[float | None] = mapped_column(Double)
    percentile_00_5: Mapped[float | None] = mapped_column(Double)


class Task(Base):
    """One raw task folder (nnU-Net v1 / MSD layout), keyed by its folder name."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    root_path: Mapped[str] = mapped_column(Text)
    dataset_json: Mapped[str] = mapped_column(Text)  # verbatim file content
    num_channels: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    channels: Mapped[list[TaskChannel]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="TaskChannel.channel")
    labels: Mapped[list[TaskLabel]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="TaskLabel.position")


class TaskChannel(Base):
    """dataset.json `modality` entries: channel index -> name (e.g. 0 -> "CT")."""

    __tablename__ = "task_channels"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Name)
    task: Mapped[Task] = relationship(back_populates="channels")


class TaskLabel(Base):
    """dataset.json `labels` entries in file order (v1's all_classes keeps that order)."""

    __tablename__ = "task_labels"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Name)
    task: Mapped[Task] = relationship(back_populates="labels")


class IngestRun(Base):
    """One `catalog ingest` (or `catalog check`) invocation by one process."""

    __tablename__ = "ingest_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="ingest")  # ingest | check
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished | interrupted | failed
    catalog_version: Mapped[str] = mapped_column(String(32))
    analysis_version: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(Name)
    pid: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)
    n_new: Mapped[int] = mapped_column(Integer, default=0)
    n_changed: Mapped[int] = mapped_column(Integer, default=0)
    n_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_removed: Mapped[int] = mapped_column(Integer, default=0)
    n_elsewhere: Mapped[int] = mapped_column(Integer, default=0)  # analysed by another worker meanwhile


class Case(Base):
    """One training case of a task and, once analysed, its per-case crop facts.

    status: pending (listed, never analysed) | ok | failed (errors, no good rows) |
    stale (errors now, rows from an earlier good analysis kept) | removed (no longer listed).
    """

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("task_id", "identifier"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    identifier: Mapped[str] = mapped_column(Name)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    listed_position: Mapped[int | None] = mapped_column(Integer)  # index in dataset.json "training"
    image_paths: Mapped[list] = mapped_column(JSON, default=list)  # relative to the task root
    label_path: Mapped[str | None] = mapped_column(Text)
    analysis_version: Mapped[int | None] = mapped_column(Integer)
    input_digest: Mapped[str | None] = mapped_column(String(64))  # sha256 over the files' sha256s
    ingest_run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id", ondelete="SET NULL"))
    analyzed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    analysis_seconds: Mapped[float | None] = mapped_column(Double)
    read_seconds: Mapped[float | None] = mapped_column(Double)

    # Geometry of the first channel (nnU-Net v1 takes it from modality 0 only).
    original_size_z: Mapped[int | None] = mapped_column(Integer)
    original_size_y: Mapped[int | None] = mapped_column(Integer)
    original_size_x: Mapped[int | None] = mapped_column(Integer)
    spacing_z: Mapped[float | None] = mapped_column(Double)
    spacing_y: Mapped[float | None] = mapped_column(Double)
    spacing_x: Mapped[float | None] = mapped_column(Double)
    itk_origin: Mapped[list | None] = mapped_column(JSON)  # (x, y, z)
    itk_spacing: Mapped[list | None] = mapped_column(JSON)  # (x, y, z)
    itk_direction: Mapped[list | None] = mapped_column(JSON)  # 9 values, row-major
    voxel_volume_mm3: Mapped[float | None] = mapped_column(Double)  # (sx*sy)*sz

    # Half-open bounding box of the filled nonzero mask, numpy (z, y, x).
    bbox_z0: Mapped[int | None] = mapped_column(Integer)
    bbox_z1: Mapped[int | None] = mapped_column(Integer)
    bbox_y0: Mapped[int | None] = mapped_column(Integer)
    bbox_y1: Mapped[int | None] = mapped_column(Integer)
    bbox_x0: Mapped[int | None] = mapped_column(Integer)
    bbox_x1: Mapped[int | None] = mapped_column(Integer)
    cropped_size_z: Mapped[int | None] = mapped_column(Integer)
    cropped_size_y: Mapped[int | None] = mapped_column(Integer)
    cropped_size_x: Mapped[int | None] = mapped_column(Integer)

    nonzero_voxels: Mapped[int | None] = mapped_column(BigInteger)  # filled mask, inside the bbox
    foreground_voxels: Mapped[int | None] = mapped_column(BigInteger)  # cropped seg > 0
    # Sorted unique values of the cropped seg (after -1 marking), as v1's `classes` (float32 there).
    seg_values: Mapped[list | None] = mapped_column(JSON)
    all_classes_one_region: Mapped[bool | None] = mapped_column(Boolean)
    all_classes_num_regions: Mapped[int | None] = mapped_column(Integer)

    files: Mapped[list[CaseFile]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class CaseFile(Base):
    """Every input file of a case, with what change detection needs (size, mtime, content hash)."""

    __tablename__ = "case_files"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), primary_key=True)  # image | label
    channel: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1 for the label
    path: Mapped[str] = mapped_column(Text)  # relative to the task root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class CaseClass(Base):
    """Per case and declared class: voxels in the cropped seg and 26-connected regions."""

    __tablename__ = "case_classes"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    class_value: Mapped[int] = mapped_column(Integer, primary_key=True)
    voxel_count: Mapped[int] = mapped_column(BigInteger)
    volume_mm3: Mapped[float] = mapped_column(Double)
    num_regions: Mapped[int] = mapped_column(Integer)
    one_region: Mapped[bool] = mapped_column(Boolean)


class CaseRegion(Base):
    """Per case, class and connected region (scikit-image `label` order, 26-connectivity)."""

    __tablename__ = "case_regions"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    class_value: Mapped[int] = mapped_column(Integer, primary_key=True)
    region_index: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based
    voxel_count: Mapped[int] = mapped_column(BigInteger)
    volume_mm3: Mapped[float] = mapped_column(Double)


class CaseChannel(V1IntensityStats, Base):
    """Per case and channel: v1's foreground samples (lossless) and its `local_props`.

    `samples` is little-endian float32, exactly v1's `data[c][seg > 0][::10]` in C order of the
    cropped array. Stats are NULL where v1 has NaN (a case without foreground).
    """

    __tablename__ = "case_channels"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_count: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[bytes] = mapped_column(LargeBinary)
    # after the mixin's statistics, where the migrations put them (sort_order)
    nonzero_min: Mapped[float | None] = mapped_column(Double, sort_order=1)  # over the whole nonzero mask
    nonzero_max: Mapped[float | None] = mapped_column(Double, sort_order=1)


class Finding(Base):
    """A data problem found by a check. Errors stop the case; warnings and hints do not."""

    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_task_case", "task_id", "case_identifier"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    case_identifier: Mapped[str | None] = mapped_column(Name)  # NULL for task-level findings
    ingest_run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id", ondelete="SET NULL"))
    check: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(8))  # error | warning | hint
    path: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CaseClaim(Base):
    """A worker's lease on a case while it analyses it (distributed ingest).

    A live worker renews `lease_expires_at`; a claim whose lease expired may be taken over.
    """

    __tablename__ = "case_claims"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True)
    worker: Mapped[str] = mapped_column(Name)
    ingest_run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id", ondelete="SET NULL"))
    # Seconds since the epoch on the DATABASE's clock (workers on other hosts may disagree).
    claimed_at: Mapped[float] = mapped_column(Double)
    lease_expires_at: Mapped[float] = mapped_column(Double)


class Export(Base):
    """One export folder written from the catalog (provenance)."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    content_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    catalog_version: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[dict] = mapped_column(JSON, default=dict)


class ChannelStatistics(V1IntensityStats, Base):
    """nnU-Net v1's global intensity statistics per task and channel, over the pooled samples of
    the task's analysed cases; refreshed at the end of every ingest (read by `channel_intensity`)."""

    __tablename__ = "channel_statistics"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[int] = mapped_column(Integer, primary_key=True)
    cases: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    computed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                     sort_order=1)  # last, as migration 0002 made it
