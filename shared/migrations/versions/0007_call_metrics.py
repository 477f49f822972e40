"""call analytics: jobs.redact, segments.loudness_lufs and rms_dbfs, the call_metrics and redactions tables

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("redact", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("segments") as batch:
        batch.add_column(sa.Column("loudness_lufs", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rms_dbfs", sa.Float(), nullable=True))
    op.create_table(
        "call_metrics",
        sa.Column("file_id", sa.String(32), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_call_metrics_job_id", "call_metrics", ["job_id"])
    op.create_table(
        "redactions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("file_id", sa.String(32), sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("segment_id", sa.String(32), sa.ForeignKey("segments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("channel_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("start_ms", sa.Integer(), nullable=False),
        sa.Column("end_ms", sa.Integer(), nullable=False),
        sa.Column("timing", sa.String(16), nullable=False),
    )
    op.create_index("ix_redactions_job_id", "redactions", ["job_id"])
    op.create_index("ix_redactions_file", "redactions", ["file_id"])


def downgrade() -> None:
    op.drop_table("redactions")
    op.drop_table("call_metrics")
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("rms_dbfs")
        batch.drop_column("loudness_lufs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("redact")
