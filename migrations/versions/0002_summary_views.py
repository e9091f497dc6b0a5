"""Summary views for questions across tasks (task_summary, case_summary, class_summary,
channel_intensity) and the channel_statistics table that channel_intensity reads.

The views use only SQL that SQLite and PostgreSQL share (window functions, CAST, CASE), so
they have the same names, columns and answers on both. Medians are numpy's (the mean of the
two middle values). Pooled intensity order statistics (median, percentiles) cannot be derived
from per-case rows, so ingest stores them, computed exactly, in channel_statistics.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa

# `op` is imported in upgrade() and downgrade(): catalog.db reads CREATE_VIEWS to create a new
# catalog's schema without importing Alembic (catalog.db.create_head_schema).

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DOUBLE = "DOUBLE PRECISION"


def median_by(alias: str, value: str, source: str, keys: str) -> str:
    """SELECT keys, median(value) AS alias FROM (source) GROUP BY keys, in portable SQL."""
    return f"""
    SELECT {keys}, AVG(v) AS {alias} FROM (
        SELECT {keys}, v, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY v) AS rn,
               COUNT(*) OVER (PARTITION BY {keys}) AS n
        FROM (SELECT {keys}, CAST({value} AS {DOUBLE}) AS v FROM {source}) AS vals
    ) AS ranked WHERE rn IN ((n + 1) / 2, (n + 2) / 2) GROUP BY {keys}"""


OK_CASES = "(SELECT * FROM cases WHERE status = 'ok') AS ok_cases"

CASE_SUMMARY = f"""
CREATE VIEW case_summary AS
SELECT t.name AS task, c.identifier AS case_identifier, c.status,
       c.spacing_z, c.spacing_y, c.spacing_x,
       c.original_size_z, c.original_size_y, c.original_size_x,
       c.cropped_size_z, c.cropped_size_y, c.cropped_size_x,
       c.bbox_z0, c.bbox_z1, c.bbox_y0, c.bbox_y1, c.bbox_x0, c.bbox_x1,
       CAST(c.cropped_size_z * c.cropped_size_y * c.cropped_size_x AS {DOUBLE})
         / CAST(c.original_size_z * c.original_size_y * c.original_size_x AS {DOUBLE}) AS size_reduction,
       CAST(c.foreground_voxels AS {DOUBLE})
         / CAST(c.cropped_size_z * c.cropped_size_y * c.cropped_size_x AS {DOUBLE}) AS foreground_fraction,
       c.voxel_volume_mm3,
       c.all_classes_num_regions,
       c.analysis_version, c.analyzed_at
FROM cases AS c JOIN tasks AS t ON t.id = c.task_id
"""

CLASS_SUMMARY = f"""
CREATE VIEW class_summary AS
WITH per_case AS (
    SELECT c.task_id, cc.class_value, cc.voxel_count, cc.volume_mm3, cc.num_regions,
           CASE WHEN cc.one_region THEN 1 ELSE 0 END AS one_piece
    FROM case_classes AS cc JOIN cases AS c ON c.id = cc.case_id WHERE c.status = 'ok'
),
present AS (SELECT * FROM per_case WHERE voxel_count > 0),
median_volume AS ({median_by("median_volume_mm3", "volume_mm3", "present", "task_id, class_value")}),
median_regions AS ({median_by("median_regions", "num_regions", "present", "task_id, class_value")})
SELECT t.name AS task, l.value AS class_value, l.name AS class_name,
       COUNT(p.class_value) AS cases,
       COALESCE(SUM(CASE WHEN p.voxel_count > 0 THEN 1 ELSE 0 END), 0) AS cases_present,
       COALESCE(SUM(p.volume_mm3), 0) AS total_volume_mm3,
       mv.median_volume_mm3,
       mr.median_regions,
       CAST(SUM(CASE WHEN p.voxel_count > 0 THEN p.one_piece ELSE 0 END) AS {DOUBLE})
         / NULLIF(SUM(CASE WHEN p.voxel_count > 0 THEN 1 ELSE 0 END), 0) AS one_piece_share
FROM task_labels AS l
JOIN tasks AS t ON t.id = l.task_id
LEFT JOIN per_case AS p ON p.task_id = l.task_id AND p.class_value = l.value
LEFT JOIN median_volume AS mv ON mv.task_id = l.task_id AND mv.class_value = l.value
LEFT JOIN median_regions AS mr ON mr.task_id = l.task_id AND mr.class_value = l.value
WHERE l.value > 0
GROUP BY t.name, l.value, l.name, mv.median_volume_mm3, mr.median_regions
"""

TASK_SUMMARY = f"""
CREATE VIEW task_summary AS
WITH med_sz AS ({median_by("v", "spacing_z", OK_CASES, "task_id")}),
     med_sy AS ({median_by("v", "spacing_y", OK_CASES, "task_id")}),
     med_sx AS ({median_by("v", "spacing_x", OK_CASES, "task_id")}),
     med_nz AS ({median_by("v", "cropped_size_z", OK_CASES, "task_id")}),
     med_ny AS ({median_by("v", "cropped_size_y", OK_CASES, "task_id")}),
     med_nx AS ({median_by("v", "cropped_size_x", OK_CASES, "task_id")}),
     counts AS (
        SELECT task_id,
               SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS cases,
               SUM(CASE WHEN status IN ('failed', 'stale') THEN 1 ELSE 0 END) AS failed_cases,
               SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending_cases,
               SUM(CASE WHEN status = 'removed' THEN 1 ELSE 0 END) AS removed_cases
        FROM cases GROUP BY task_id)
SELECT t.name AS task,
       COALESCE(counts.cases, 0) AS cases,
       COALESCE(counts.failed_cases, 0) AS failed_cases,
       COALESCE(counts.pending_cases, 0) AS pending_cases,
       COALESCE(counts.removed_cases, 0) AS removed_cases,
       t.num_channels AS channels,
       (SELECT COUNT(*) FROM task_labels AS l WHERE l.task_id = t.id AND l.value > 0) AS classes,
       med_sz.v AS median_spacing_z, med_sy.v AS median_spacing_y, med_sx.v AS median_spacing_x,
       med_nz.v AS median_size_z, med_ny.v AS median_size_y, med_nx.v AS median_size_x,
       CASE WHEN med_sz.v IS NULL THEN NULL ELSE
         (CASE WHEN med_sz.v >= med_sy.v AND med_sz.v >= med_sx.v THEN med_sz.v
               WHEN med_sy.v >= med_sx.v THEN med_sy.v ELSE med_sx.v END)
         / (CASE WHEN med_sz.v <= med_sy.v AND med_sz.v <= med_sx.v THEN med_sz.v
                 WHEN med_sy.v <= med_sx.v THEN med_sy.v ELSE med_sx.v END) END AS anisotropy
FROM tasks AS t
LEFT JOIN counts ON counts.task_id = t.id
LEFT JOIN med_sz ON med_sz.task_id = t.id LEFT JOIN med_sy ON med_sy.task_id = t.id
LEFT JOIN med_sx ON med_sx.task_id = t.id LEFT JOIN med_nz ON med_nz.task_id = t.id
LEFT JOIN med_ny ON med_ny.task_id = t.id LEFT JOIN med_nx ON med_nx.task_id = t.id
"""

CHANNEL_INTENSITY = """
CREATE VIEW channel_intensity AS
SELECT t.name AS task, ch.channel, ch.name AS modality,
       s.cases, s.samples, s.median, s.mean, s.sd, s.mn, s.mx, s.percentile_00_5, s.percentile_99_5,
       s.computed_at
FROM task_channels AS ch
JOIN tasks AS t ON t.id = ch.task_id
LEFT JOIN channel_statistics AS s ON s.task_id = ch.task_id AND s.channel = ch.channel
"""

VIEWS = ("task_summary", "case_summary", "class_summary", "channel_intensity")
CREATE_VIEWS = (CASE_SUMMARY, CLASS_SUMMARY, TASK_SUMMARY, CHANNEL_INTENSITY)  # in dependency order


def upgrade() -> None:
    from alembic import op

    op.create_table(
        "channel_statistics",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Integer(), nullable=False),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("median", sa.Float(precision=53), nullable=True),
        sa.Column("mean", sa.Float(precision=53), nullable=True),
        sa.Column("sd", sa.Float(precision=53), nullable=True),
        sa.Column("mn", sa.Float(precision=53), nullable=True),
        sa.Column("mx", sa.Float(precision=53), nullable=True),
        sa.Column("percentile_99_5", sa.Float(precision=53), nullable=True),
        sa.Column("percentile_00_5", sa.Float(precision=53), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_channel_statistics_task_id_tasks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "channel", name=op.f("pk_channel_statistics")),
    )
    for sql in CREATE_VIEWS:
        op.execute(sql)


def downgrade() -> None:
    from alembic import op

    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("channel_statistics")
